"""20,000 notifications through the router; the delivery-status projection is SIGKILLed 3 times mid-batch.

Its tables must equal those of an uninterrupted run (a rebuild from offset 0), and every projection must
rebuild row for row (checksums of ordered dumps).
"""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from projections import Projection, Runner
from tests.chaos.test_router_kill import TYPES
from tests.integration.conftest import table_checksums
from tests.integration.test_router import publish_catalog, run_router
from tidings.client import Client
from tidings.config import Settings
from tidings.events import InboxItemArchived, InboxItemRead, InboxItemSeen, ProviderFeedback
from tidings.ids import delivery_id

ROOT = Path(__file__).resolve().parents[2]
TIDINGS = str(Path(sys.executable).with_name("tidings"))
pytestmark = pytest.mark.timeout(900)


def progress(s: Settings) -> int:
    with psycopg.connect(s.postgres_dsn) as conn:
        row = conn.execute("SELECT coalesce(sum(next_offset), 0) FROM projection_offsets").fetchone()
    return int(row[0]) if row else 0


def run_all(s: Settings, name: str) -> None:
    runner = Runner(s, Projection.registry[name]())
    try:
        runner.run(idle_exit_after=3)
    finally:
        runner.close()


def test_kill_9_three_times_then_rebuilds_are_identical(database: Settings) -> None:
    s, rng = database, random.Random(3)
    env = os.environ | {
        "TIDINGS_TOPIC_PREFIX": s.topic_prefix,
        "TIDINGS_PARTITIONS": str(s.partitions),
        "TIDINGS_POSTGRES_DSN": s.postgres_dsn,
    }
    publish_catalog(s)
    with Client(s) as client:
        for i in range(200):
            client.update_recipient(
                tenant="acme",
                recipient=f"u{i}",
                email=f"u{i}@example.com",
                wait=False,
                phone=f"+49151{1000000 + i}" if i % 2 else None,
            )
            if i % 3 == 0:
                client.register_device(
                    tenant="acme", recipient=f"u{i}", device_id="d", platform="fcm", token=f"t{i}", wait=False
                )
        for i in range(0, 200, 4):
            kind, channel, address = [
                ("hard_bounce", "email", f"u{i}@example.com"),
                ("token_invalid", "push", f"t{i}"),
                ("soft_bounce", "email", f"u{i}@example.com"),
                ("complaint", "email", f"u{i}@example.com"),
            ][i % 16 // 4]
            client.publish(
                ProviderFeedback(
                    tenant_id="acme",
                    recipient_id=f"u{i}",
                    kind=kind,
                    channel=channel,
                    address=address,
                    provider="test",
                ),
                wait=False,
            )
        sent = []
        for _ in range(20_000):
            type_, recipient = rng.choice(list(TYPES)), f"u{rng.randrange(200)}"
            nid = client.send(tenant="acme", recipient=recipient, type=type_, data=TYPES[type_], wait=False)
            sent.append((nid, recipient))
        for nid, recipient in rng.sample(sent, 300):
            engaged = rng.choice([InboxItemSeen, InboxItemRead, InboxItemArchived])
            did = delivery_id(nid, "in_app", recipient)
            client.publish(
                engaged(tenant_id="acme", recipient_id=recipient, notification_id=nid, delivery_id=did),
                wait=False,
            )
        client.add_members(
            tenant="acme", audience="all", recipients=[f"u{i}" for i in range(200)], wait=False
        )
        client.remove_members(tenant="acme", audience="all", recipients=["u0", "u1"], wait=False)
        client.broadcast(tenant="acme", audience="all", type="order.shipped", wait=False)
        client.flush()
    run_router(s, idle=5)

    kills = 0
    for _ in range(3):
        before = progress(s)
        with subprocess.Popen(
            [TIDINGS, "run", "projection", "delivery_status"],
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ) as proc:
            deadline = time.monotonic() + 120
            while (done := progress(s)) < before + 4000 and time.monotonic() < deadline:
                time.sleep(0.05)
            proc.send_signal(signal.SIGKILL)
            kills += proc.wait() == -signal.SIGKILL
            assert done >= before + 4000, f"the projection stored {done - before} offsets before the kill"
    assert kills == 3
    final = subprocess.run(
        [TIDINGS, "run", "projection", "delivery_status", "--idle-exit", "4"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert final.returncode == 0, final.stderr[-3000:]
    for name in ("suppressions", "devices", "recipients", "inbox", "audiences"):
        run_all(s, name)

    with psycopg.connect(s.postgres_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM notifications").fetchone() == (20_000,)
        assert conn.execute("SELECT count(*) FROM devices").fetchone() == (67,)
        assert conn.execute("SELECT count(*) FROM inbox_states").fetchone() == (300,)
        assert conn.execute("SELECT members FROM broadcasts").fetchall() == [(198,)]
    for name, cls in Projection.registry.items():
        tables = list(cls.tables)
        live = table_checksums(s, tables)
        runner = Runner(s, cls())
        records, _ = runner.rebuild()
        runner.close()
        assert records > 0
        assert table_checksums(s, tables) == live, name
