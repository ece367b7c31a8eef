"""Audit, replay and dead-letter tools read the topics of an isolated topology through the CLI."""

import json
import os
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tests.integration.conftest import read_all
from tests.integration.test_router import commands, publish_catalog, run_router
from tidings.catalog import parse_type
from tidings.client import Client
from tidings.codec import default_codec
from tidings.config import Settings
from tidings.kafka import EventProducer, Output
from tidings.kafka.records import log_time
from tidings.topics import names

TIDINGS = str(Path(sys.executable).with_name("tidings"))


def cli(s: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = os.environ | {
        "TIDINGS_TOPIC_PREFIX": s.topic_prefix,
        "TIDINGS_PARTITIONS": str(s.partitions),
        "COLUMNS": "250",
    }
    return subprocess.run([TIDINGS, *args], env=env, capture_output=True, text=True, timeout=120)


def test_audit_replay_and_dead_letter_round_trip(topology: Settings) -> None:
    s = topology
    publish_catalog(s)
    with Client(s) as client:
        client.update_recipient(tenant="acme", recipient="ada", email="ada@example.com")
        nid = client.send(
            tenant="acme", recipient="ada", type="order.shipped", data={"order": "A", "carrier": "B"}
        )
        late = client.send(tenant="acme", recipient="ada", type="late.type", data={"x": 1})
        client.send(tenant="acme", recipient="bob", type="order.shipped", data={"order": "C", "carrier": "D"})
    run_router(s)

    audit = cli(s, "audit", str(nid), "--json")
    assert audit.returncode == 0, audit.stderr
    lines = [json.loads(line) for line in audit.stdout.splitlines()]
    assert lines[0]["record"] == "NotificationRequested"
    assert {x["record"] for x in lines} == {"NotificationRequested", "DeliveryCommand", "DeliveryOutcome"}
    assert sorted(x["value"]["channel"] for x in lines if x["record"] == "DeliveryCommand") == [
        "email",
        "in_app",
    ]
    assert all(x["value"]["template_version"] == 1 for x in lines if x["record"] == "DeliveryCommand")

    [email] = [c for c in commands(s) if c.notification_id == nid and c.channel == "email"]
    with EventProducer(s) as producer:
        producer.produce(
            Output.event(names(s).retry("email", "10s"), email.model_copy(update={"attempt": 2}))
        )
    with Client(s) as client:
        client.cancel(tenant="globex", recipient="eve", notification_id=nid)
    mixed = cli(s, "audit", str(nid))
    assert mixed.returncode == 2 and "--tenant" in mixed.stderr and "acme, globex" in mixed.stderr
    acme = [
        json.loads(line)
        for line in cli(s, "audit", str(nid), "--tenant", "acme", "--json").stdout.splitlines()
    ]
    assert {x["value"]["tenant_id"] for x in acme} == {"acme"}
    retried = [x for x in acme if x["topic"] == names(s).retry("email", "10s")]
    assert [x["value"]["attempt"] for x in retried] == [2], "the retried command is part of the history"
    assert acme[-1] == retried[0], "listed when it was written, not at the time its command was planned"

    since = (datetime.now(UTC) - timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%S")
    replayed = cli(
        s,
        "replay",
        f"{s.topic_prefix}notifications.requested",
        "--from",
        since,
        "--filter",
        "recipient_id=ada",
    )
    assert replayed.returncode == 0, replayed.stderr
    assert {json.loads(x)["value"]["notification_id"] for x in replayed.stdout.splitlines()} == {
        str(nid),
        str(late),
    }
    future = cli(s, "replay", f"{s.topic_prefix}notifications.requested", "--from", "2999-01-01T00:00:00")
    assert future.returncode == 0 and future.stdout == ""

    listed = cli(s, "dlq", "list")
    assert listed.returncode == 0 and "InvalidEvent" in listed.stdout and "late.type" in listed.stdout
    letter = re.search(r"\b(\d+@\d+)\b", listed.stdout)
    assert letter is not None, listed.stdout
    shown, split = cli(s, "dlq", "show", letter[1]), cli(s, "dlq", "show", *letter[1].split("@"))
    assert shown.returncode == 0 and "late.type" in shown.stdout and shown.stdout == split.stdout
    with Client(s) as client:
        client.publish(
            parse_type(
                "*",
                {
                    "key": "late.type",
                    "category": "misc",
                    "channels": ["in_app"],
                    "templates": {"in_app": {"default": {"title": "x={{ x }}"}}},
                },
            )
        )
    [original] = list(read_all(s, names(s).dlq))
    with EventProducer(s) as producer:  # the same record dead-lettered by a second consumer group
        headers = [(k, b"other-group" if k == "tidings.consumer.group" else v) for k, v in original.headers]
        producer.produce(Output(names(s).dlq, original.key, original.value, headers))
    again = cli(s, "dlq", "replay", "--source", f"{s.topic_prefix}notifications.requested")
    assert again.returncode == 0
    assert "replayed 1 dead letters (1 more letters of the same records)" in " ".join(again.stderr.split())
    run_router(s)
    fixed = [c for c in commands(s) if c.notification_id == late]
    assert [(c.channel, c.content.title) for c in fixed] == [("in_app", "x=1")]
    originals = [r for r in read_all(s, names(s).requested) if r.header("tidings.replayed.from") is None]
    [first] = [
        r for r in originals if getattr(default_codec().decode(r.value or b""), "notification_id", 0) == late
    ]
    assert fixed[0].requested_at == log_time(first), "a replayed request counts as made when first written"
    with EventProducer(s) as producer:
        headers = [*original.headers, ("tidings.replayable", b"false")]
        producer.produce(Output(names(s).dlq, b"progress", b'{"next": 3}', headers))
    later = cli(s, "dlq", "replay")
    assert "replayed 0 dead letters (2 replayed before; 1 not replayable" in " ".join(later.stderr.split())
    assert len([r for r in read_all(s, names(s).requested) if r.header("tidings.replayed.from")]) == 1
    with EventProducer(s) as producer:  # a consumer rebuilt dead-letters the same record once more
        producer.produce(Output(names(s).dlq, original.key, original.value, original.headers))
    rebuilt = cli(s, "dlq", "replay")
    assert "replayed 0 dead letters (3 replayed before; 1 not replayable" in " ".join(rebuilt.stderr.split())
    assert len([r for r in read_all(s, names(s).requested) if r.header("tidings.replayed.from")]) == 1
