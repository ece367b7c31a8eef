"""A Java service produces NotificationRequested with Avro's BinaryMessageEncoder; Python decodes it."""

import shutil
import subprocess
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.integration.conftest import read_all
from tidings.codec import default_codec
from tidings.config import Settings
from tidings.events import NotificationRequested
from tidings.schemas import default_schemas

PROJECT = Path(__file__).resolve().parents[1] / "interop" / "java"
pytestmark = [pytest.mark.interop, pytest.mark.timeout(900)]


@pytest.fixture(scope="session")
def java_classpath() -> str:
    if not shutil.which("mvn") or not shutil.which("java"):
        pytest.fail("the Java interop test needs java and mvn (Java 17 + Maven)")
    subprocess.run(
        [
            "mvn",
            "-q",
            "-B",
            "-f",
            str(PROJECT / "pom.xml"),
            "package",
            "dependency:copy-dependencies",
            "-DoutputDirectory=target/deps",
        ],
        check=True,
        timeout=800,
        cwd=PROJECT,
    )
    return f"{PROJECT / 'target' / 'classes'}:{PROJECT / 'target' / 'deps'}/*"


def test_java_generic_record_is_decoded_field_for_field(
    stack: Settings, topic_factory: Callable[..., str], java_classpath: str
) -> None:
    topic = topic_factory("interop", partitions=1)
    nid, eid = uuid.uuid4(), uuid.uuid4()
    occurred = 1_790_000_000_123
    current = default_schemas().current("NotificationRequested")
    run = subprocess.run(
        [
            "java",
            "-cp",
            java_classpath,
            "io.tidings.interop.ProduceNotification",
            stack.kafka_bootstrap,
            topic,
            str(current.path),
            "acme",
            "jane",
            str(nid),
            str(eid),
            str(occurred),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"fingerprint={current.fingerprint.hex()}" in run.stdout

    [record] = read_all(stack, topic)
    assert record.key == b"acme/jane"
    assert record.header("traceparent") == b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    event = default_codec().decode(record.value or b"")
    assert event == NotificationRequested(
        event_id=eid,
        tenant_id="acme",
        occurred_at=datetime.fromtimestamp(occurred / 1000, UTC),
        correlation_id=str(nid),
        notification_id=nid,
        recipient_id="jane",
        notification_type="order.shipped",
        data_json='{"order":"J-1","total":42.5,"gift":true}',
        priority="high",
        channels=["email", "push"],
        locale="de-AT",
        recipient_overrides={"email": "jane@example.com"},
        source="java-interop",
    )
    assert event.data == {"order": "J-1", "total": 42.5, "gift": True}
