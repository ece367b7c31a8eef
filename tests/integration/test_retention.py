"""`tidings db prune` on real PostgreSQL: what history goes, what stays (a notification still waiting,
anything touched since the cutoff, another tenant's row with the same id), and paging past kept rows."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from projections.retention import prune
from tests.integration.test_cli import run
from tidings.config import Settings

NOW = datetime.now(UTC)


def ago(days: float) -> datetime:
    return NOW - timedelta(days=days)


def notification(
    conn: psycopg.Connection[Any],
    *,
    tenant: str = "acme",
    requested: datetime,
    deliveries: list[tuple[str, int, datetime]],
    nid: uuid.UUID | None = None,
) -> uuid.UUID:
    """A notification with deliveries (status, rank, last event) and a timeline event for each."""
    nid = nid or uuid.uuid4()
    done = [last for status, rank, last in deliveries if rank >= 4]
    conn.execute(
        "INSERT INTO notifications (notification_id, tenant_id, recipient_id, notification_type, priority,"
        " requested_at, status, status_rank, terminal_at) VALUES (%s, %s, 'ada', 'order.shipped', 'normal',"
        " %s, 'SENT', 5, %s)",
        (nid, tenant, requested, max(done) if done else None),
    )
    for status, rank, last in deliveries:
        did = uuid.uuid4()
        conn.execute(
            "INSERT INTO deliveries (delivery_id, notification_id, tenant_id, recipient_id, channel, status,"
            " status_rank, first_at, last_at) VALUES (%s, %s, %s, 'ada', 'email', %s, %s, %s, %s)",
            (did, nid, tenant, status, rank, requested, last),
        )
        conn.execute(
            "INSERT INTO delivery_events (event_id, notification_id, delivery_id, tenant_id, channel, status,"
            " attempt, occurred_at) VALUES (%s, %s, %s, %s, 'email', %s, 1, %s)",
            (uuid.uuid4(), nid, did, tenant, status, last),
        )
    return nid


def item(
    conn: psycopg.Connection[Any],
    *,
    created: datetime,
    nid: uuid.UUID | None = None,
    expires: datetime | None = None,
    read: bool = True,
) -> uuid.UUID:
    nid = nid or uuid.uuid4()
    conn.execute(
        "INSERT INTO inbox_items (delivery_id, notification_id, tenant_id, recipient_id, notification_type,"
        " priority, title, requested_at, created_at, expires_at)"
        " VALUES (%s, %s, 'acme', 'ada', 'comment.mention', 'normal', 't', %s, %s, %s)",
        (uuid.uuid4(), nid, created, created, expires),
    )
    if read:
        conn.execute(
            "INSERT INTO inbox_states (notification_id, tenant_id, recipient_id, seen_at, read_at)"
            " VALUES (%s, 'acme', 'ada', %s, %s) ON CONFLICT DO NOTHING",
            (nid, created, created),
        )
    return nid


def outcome(conn: psycopg.Connection[Any], nid: uuid.UUID, status: str, at: datetime) -> None:
    """An outcome about no delivery (a digested item's), on the email channel."""
    conn.execute(
        "INSERT INTO delivery_events (event_id, notification_id, tenant_id, channel, status, attempt,"
        " occurred_at) VALUES (%s, %s, 'acme', 'email', %s, 0, %s)",
        (uuid.uuid4(), nid, status, at),
    )


def state(conn: psycopg.Connection[Any], read: datetime) -> uuid.UUID:
    """A recipient's state of a notification with no in-app item: an email clicked, a push opened."""
    nid = uuid.uuid4()
    conn.execute(
        "INSERT INTO inbox_states (notification_id, tenant_id, recipient_id, seen_at, read_at, last_read_at)"
        " VALUES (%s, 'acme', 'ada', %s, %s, %s)",
        (nid, read, read, read),
    )
    return nid


def left(conn: psycopg.Connection[Any], table: str, column: str = "notification_id") -> set[Any]:
    return {r[0] for r in conn.execute(f"SELECT {column} FROM {table}".encode())}


def test_prune_deletes_finished_history_before_the_cutoff_and_keeps_what_still_waits(
    database: Settings,
) -> None:
    s = database
    with psycopg.connect(s.postgres_dsn, autocommit=True) as conn:
        kept_waiting = [
            notification(conn, requested=ago(100 + i / 10), deliveries=[("DEFERRED", 1, ago(100))])
            for i in range(3)
        ]
        done = notification(
            conn, requested=ago(95), deliveries=[("SENT", 4, ago(95)), ("FAILED", 5, ago(94))]
        )
        touched = notification(
            conn, requested=ago(95), deliveries=[("SENT", 4, ago(95)), ("DELIVERED", 6, ago(2))]
        )
        stuck = notification(conn, requested=ago(500), deliveries=[("RETRYING", 3, ago(500))])
        recent = notification(conn, requested=ago(3), deliveries=[("SENT", 4, ago(3))])
        rejected = notification(conn, requested=ago(120), deliveries=[])
        other = notification(conn, tenant="globex", requested=ago(200), deliveries=[("SENT", 4, ago(200))])
        same_id_recent = notification(
            conn, tenant="globex", nid=done, requested=ago(1), deliveries=[("SENT", 4, ago(1))]
        )
        in_digest = notification(conn, requested=ago(100), deliveries=[])
        outcome(conn, in_digest, "DEFERRED", ago(100))
        digest_sent = notification(conn, requested=ago(100), deliveries=[])
        outcome(conn, digest_sent, "DEFERRED", ago(100))
        outcome(conn, digest_sent, "QUEUED", ago(99))
        late, late_recent = (
            notification(conn, requested=ago(d), deliveries=[("DELIVERED", 6, ago(d))]) for d in (60, 5)
        )
        conn.execute(
            "UPDATE notifications SET requested_at = NULL WHERE notification_id IN (%s, %s)",
            (late, late_recent),
        )
        clicked_long_ago, clicked_recently = state(conn, ago(60)), state(conn, ago(2))
        old_item = item(conn, created=ago(60))
        new_item = item(conn, created=ago(1))
        expired_item = item(conn, created=ago(1), expires=ago(0.5))
        shared = item(conn, created=ago(60))
        item(conn, created=ago(1), nid=shared)
        for at in (ago(40), ago(2)):
            conn.execute(
                "INSERT INTO soft_bounces (tenant_id, channel, address, event_id, at)"
                " VALUES ('acme', 'email', 'ada@example.com', %s, %s)",
                (uuid.uuid4(), at),
            )

    counts = prune(s.postgres_dsn, ago(30), batch=2)

    with psycopg.connect(s.postgres_dsn) as conn:
        notifications = {
            (t, n) for t, n in conn.execute("SELECT tenant_id, notification_id FROM notifications")
        }
        assert notifications == {
            *(("acme", n) for n in kept_waiting),
            ("acme", in_digest),
            ("acme", late_recent),
            ("acme", touched),
            ("acme", recent),
            ("globex", same_id_recent),
        }
        assert stuck not in left(conn, "deliveries") and rejected not in left(conn, "notifications")
        assert other not in left(conn, "delivery_events")
        kept = {*kept_waiting, touched, recent, same_id_recent, late_recent}
        assert left(conn, "deliveries") == kept and left(conn, "delivery_events") == {*kept, in_digest}
        assert left(conn, "inbox_items") == {new_item, shared}
        assert left(conn, "inbox_states") == {new_item, shared, expired_item, clicked_recently}
        assert clicked_long_ago not in left(conn, "inbox_states")
        assert expired_item not in left(conn, "inbox_items") and old_item not in left(conn, "inbox_states")
        [(bounce_at,)] = conn.execute("SELECT at FROM soft_bounces").fetchall()
        assert bounce_at == ago(2)
    assert counts == {
        "notifications": 6,
        "deliveries": 5,
        "delivery_events": 7,
        "inbox_items": 3,
        "inbox_states": 2,
        "soft_bounces": 1,
    }
    assert prune(s.postgres_dsn, ago(30), batch=2) == dict.fromkeys(counts, 0)


def test_the_command_prunes_by_the_days_kept_and_refuses_without_them(database: Settings) -> None:
    s = database
    with psycopg.connect(s.postgres_dsn, autocommit=True) as conn:
        old = notification(conn, requested=ago(40), deliveries=[("SENT", 4, ago(40))])
        young = notification(conn, requested=ago(20), deliveries=[("SENT", 4, ago(20))])

    refused = run("db", "prune", s=s)
    assert refused.returncode == 2 and "TIDINGS_HISTORY_DAYS" in refused.stderr
    assert run("db", "prune", "--older-than", "3", s=s).returncode == 2

    pruned = run("db", "prune", "--older-than", "30", s=s)
    assert pruned.returncode == 0, pruned.stderr
    assert json.loads(pruned.stdout)["deleted"]["notifications"] == 1
    with psycopg.connect(s.postgres_dsn) as conn:
        assert left(conn, "notifications") == {young} != {old}


def test_soft_bounces_stay_two_windows_whatever_the_cutoff(database: Settings) -> None:
    """A bounce folded a day late counts the window before it: with 7 days kept, the first of three
    bounces 6 days apart was gone, and the projection missed the limit the router saw."""
    with psycopg.connect(database.postgres_dsn, autocommit=True) as conn:
        for days in (9, 13, 15):
            conn.execute(
                "INSERT INTO soft_bounces (tenant_id, channel, address, event_id, at)"
                " VALUES ('acme', 'email', 'bo@example.com', %s, %s)",
                (uuid.uuid4(), ago(days)),
            )
    assert prune(database.postgres_dsn, ago(7))["soft_bounces"] == 1
    with psycopg.connect(database.postgres_dsn) as conn:
        assert sorted(at for [at] in conn.execute("SELECT at FROM soft_bounces")) == [ago(13), ago(9)]
