"""Consumes nothing; deletes from PostgreSQL the history older than a cutoff (`tidings db prune`).

The tables keep every notification, delivery, timeline event and in-app item for good unless pruned,
like the topics they come from; a deployment that must not (storage, GDPR's storage limitation) runs
this daily with `TIDINGS_HISTORY_DAYS` or `--older-than`. What goes:
- a notification, its deliveries and its timeline, once its request and every delivery's last event
  are older than the cutoff and nothing of it still waits: no delivery DEFERRED, QUEUED or RETRYING, no
  item in an open digest (its `DEFERRED digest` outcome names no delivery). A request scheduled months
  ahead keeps its row until it is sent. What waits longer than anything can (`WAITS_AT_MOST`) past the
  cutoff waits for nothing, and goes. A partial row (outcomes whose request is gone or never came) goes
  once it is terminal before the cutoff;
- an in-app item created before the cutoff, or past its `expires_at` (the feed never shows it again);
- a recipient's seen/read/archived state of a notification once all its times are older than the cutoff
  and no in-app item of it is left: it also holds push opens and email clicks, which statistics count;
- soft bounces older than the cutoff and two soft-bounce windows (they count only within one: a
  bounce the suppressions projection folds days late still finds the window's earlier bounces, as the
  router, which keeps its own, does).

Each batch is its own short transaction, so projections and the in-app gateway keep writing meanwhile.
Rows a rebuild replays from topics that still hold their events come back: prune after a rebuild."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import psycopg

from processors.recipients import SOFT_BOUNCE_WINDOW
from projections.db import connect
from tidings.catalog import MAX_WINDOW_SECONDS
from tidings.vocabulary import MAX_SCHEDULE_AHEAD

WAITING_RANK = 4
"""Deliveries ranked below SENT (DEFERRED, QUEUED, RETRYING) still wait (projections.delivery_status)."""
WAITS_AT_MOST = MAX_SCHEDULE_AHEAD + 2 * timedelta(seconds=MAX_WINDOW_SECONDS) + timedelta(days=2)
"""The longest a request can wait to be sent: `scheduled_at` 400 days ahead, then a digest window or an
escalation's `after` (31 days at most each), and quiet hours."""

TENANTS = """WITH RECURSIVE t AS (
  (SELECT tenant_id FROM notifications ORDER BY tenant_id LIMIT 1)
  UNION ALL
  SELECT (SELECT n.tenant_id FROM notifications n WHERE n.tenant_id > t.tenant_id ORDER BY n.tenant_id LIMIT 1)
  FROM t WHERE t.tenant_id IS NOT NULL
) SELECT tenant_id FROM t WHERE tenant_id IS NOT NULL"""
"""The tenants, one primary-key lookup each rather than a scan of every notification."""
OLD_NOTIFICATIONS = """SELECT requested_at, notification_id FROM notifications
WHERE tenant_id = %(tenant)s AND requested_at < %(cutoff)s
  AND (requested_at, notification_id) > (%(at)s, %(id)s)
ORDER BY requested_at, notification_id LIMIT %(batch)s"""
"""A page of the tenant's notifications requested before the cutoff (index `notifications_requested`);
the page moves on whether or not its rows go, so rows kept do not make every page read them again."""
PARTIAL_NOTIFICATIONS = """SELECT requested_at, notification_id FROM notifications
WHERE tenant_id = %(tenant)s AND requested_at IS NULL AND notification_id > %(id)s
ORDER BY notification_id LIMIT %(batch)s"""
"""A page of the tenant's rows made by outcomes alone (a late report about a pruned notification, a
cancellation of an unknown id): they have no request time to be found by."""
DELETE_NOTIFICATIONS = """WITH doomed AS (
  SELECT n.tenant_id, n.notification_id FROM notifications n
  WHERE n.tenant_id = %(tenant)s AND n.notification_id = ANY(%(ids)s)
    AND (n.terminal_at < %(cutoff)s OR (n.terminal_at IS NULL AND n.requested_at IS NOT NULL))
    AND NOT EXISTS (
      SELECT 1 FROM deliveries d WHERE d.tenant_id = n.tenant_id AND d.notification_id = n.notification_id
        AND (d.last_at >= %(cutoff)s OR (d.status_rank < %(waiting)s AND n.requested_at >= %(stale)s)))
    AND NOT EXISTS (
      SELECT 1 FROM delivery_events e WHERE e.tenant_id = n.tenant_id AND e.notification_id = n.notification_id
        AND e.occurred_at >= %(cutoff)s)
    AND NOT EXISTS (
      SELECT 1 FROM delivery_events e WHERE e.tenant_id = n.tenant_id AND e.notification_id = n.notification_id
        AND e.delivery_id IS NULL AND e.status = 'DEFERRED' AND n.requested_at >= %(stale)s
        AND NOT EXISTS (
          SELECT 1 FROM delivery_events x WHERE x.tenant_id = e.tenant_id AND x.notification_id = e.notification_id
            AND x.delivery_id IS NULL AND x.channel IS NOT DISTINCT FROM e.channel AND x.status <> 'DEFERRED'
            AND x.occurred_at >= e.occurred_at))
  FOR UPDATE SKIP LOCKED
), events AS (
  DELETE FROM delivery_events e USING doomed
  WHERE e.tenant_id = doomed.tenant_id AND e.notification_id = doomed.notification_id RETURNING 1
), gone AS (
  DELETE FROM deliveries d USING doomed
  WHERE d.tenant_id = doomed.tenant_id AND d.notification_id = doomed.notification_id RETURNING 1
), notes AS (
  DELETE FROM notifications n USING doomed
  WHERE n.tenant_id = doomed.tenant_id AND n.notification_id = doomed.notification_id RETURNING 1
)
SELECT (SELECT count(*) FROM notes), (SELECT count(*) FROM gone), (SELECT count(*) FROM events)"""
"""`FOR UPDATE SKIP LOCKED`: a row the delivery-status projection is folding right now is left for the
next run rather than waited for (and a late outcome folded after the delete makes a new, partial row).
A digested item waits while its channel's last outcome without a delivery is `DEFERRED digest`: its
`QUEUED digested` (or EXPIRED, CANCELLED) comes when the digest closes, up to 31 days later."""
DELETE_ITEMS = """WITH doomed AS (
  SELECT tenant_id, delivery_id FROM inbox_items WHERE created_at < %(cutoff)s
  ORDER BY created_at LIMIT %(batch)s FOR UPDATE SKIP LOCKED
), expired AS (
  SELECT tenant_id, delivery_id FROM inbox_items WHERE expires_at < now()
  ORDER BY expires_at LIMIT %(batch)s FOR UPDATE SKIP LOCKED
), items AS (
  DELETE FROM inbox_items i USING (SELECT * FROM doomed UNION SELECT * FROM expired) x
  WHERE i.tenant_id = x.tenant_id AND i.delivery_id = x.delivery_id
  RETURNING 1
)
SELECT count(*) FROM items"""
LATEST = (
    "GREATEST(seen_at, read_at, archived_at, withdrawn_at, last_read_at, unread_at, last_archived_at,"
    " unarchived_at)"
)
DELETE_STATES = f"""WITH gone AS (
  DELETE FROM inbox_states s USING (
    SELECT tenant_id, recipient_id, notification_id FROM inbox_states k WHERE {LATEST} < %(cutoff)s
      AND NOT EXISTS (
        SELECT 1 FROM inbox_items i WHERE i.tenant_id = k.tenant_id AND i.recipient_id = k.recipient_id
          AND i.notification_id = k.notification_id)
    ORDER BY {LATEST} LIMIT %(batch)s FOR UPDATE SKIP LOCKED
  ) x WHERE s.tenant_id = x.tenant_id AND s.recipient_id = x.recipient_id
    AND s.notification_id = x.notification_id
  RETURNING 1
) SELECT count(*) FROM gone"""
"""A recipient's state of a notification goes by its own times (index `inbox_states_latest`), not with
its in-app item: it holds the push opens and email clicks of notifications with no in-app item too, and
an item gone at its `expires_at` took yesterday's engagement out of the statistics with it. A state
kept for an item still there is read again by every batch (and does not count towards it, or enough of
them would end the run early): a recipient reads items after they come, so there are few."""
DELETE_BOUNCES = """WITH gone AS (
  DELETE FROM soft_bounces b USING (
    SELECT tenant_id, channel, address, event_id FROM soft_bounces WHERE at < %(cutoff)s
    ORDER BY at LIMIT %(batch)s FOR UPDATE SKIP LOCKED
  ) x WHERE b.tenant_id = x.tenant_id AND b.channel = x.channel AND b.address = x.address
    AND b.event_id = x.event_id
  RETURNING 1
) SELECT count(*) FROM gone"""
TABLES = ("notifications", "deliveries", "delivery_events", "inbox_items", "inbox_states", "soft_bounces")
ATTEMPTS = 5


def prune(dsn: str, cutoff: datetime, *, batch: int = 5_000) -> dict[str, int]:
    """Delete what is older than `cutoff` (see the module); returns the rows deleted per table."""
    if batch < 1:
        raise ValueError("batch must be at least 1")
    if cutoff.tzinfo is None:
        raise ValueError("cutoff must be timezone-aware")
    counts: Counter[str] = Counter()
    with connect(dsn) as conn:
        tenants = [str(t) for [t] in conn.execute(TENANTS).fetchall()]
        conn.commit()
        for tenant in tenants:
            _notifications(conn, tenant, cutoff, batch, counts)
        params = {"cutoff": cutoff, "batch": batch}
        while _deleted(conn, DELETE_ITEMS, params, ("inbox_items",), counts):
            pass
        while _deleted(conn, DELETE_STATES, params, ("inbox_states",), counts):
            pass
        bounces = params | {"cutoff": min(cutoff, datetime.now(UTC) - 2 * SOFT_BOUNCE_WINDOW)}
        while _deleted(conn, DELETE_BOUNCES, bounces, ("soft_bounces",), counts):
            pass
    return {table: counts[table] for table in TABLES}


def _notifications(
    conn: psycopg.Connection[Any], tenant: str, cutoff: datetime, batch: int, counts: Counter[str]
) -> None:
    for query in (OLD_NOTIFICATIONS, PARTIAL_NOTIFICATIONS):
        _pages(conn, query, tenant, cutoff, batch, counts)


def _pages(
    conn: psycopg.Connection[Any], query: str, tenant: str, cutoff: datetime, batch: int, counts: Counter[str]
) -> None:
    at, last = datetime.min.replace(tzinfo=cutoff.tzinfo), UUID(int=0)
    stale = cutoff - WAITS_AT_MOST
    while True:
        page = conn.execute(
            query, {"tenant": tenant, "cutoff": cutoff, "at": at, "id": last, "batch": batch}
        ).fetchall()
        conn.commit()
        if not page:
            return
        at, last = page[-1]
        params = {
            "tenant": tenant,
            "ids": [nid for _, nid in page],
            "cutoff": cutoff,
            "stale": stale,
            "waiting": WAITING_RANK,
        }
        _deleted(
            conn, DELETE_NOTIFICATIONS, params, ("notifications", "deliveries", "delivery_events"), counts
        )
        if len(page) < batch:
            return


def _deleted(
    conn: psycopg.Connection[Any],
    statement: str,
    params: dict[str, Any],
    names: tuple[str, ...],
    counts: Counter[str],
) -> int:
    """Run one batch in its own transaction, again after a deadlock with a projection or the gateway
    (which retry theirs too); the rows it deleted, first of `names`."""
    attempt = 1
    while True:
        try:
            row = conn.execute(statement, params).fetchone()
            conn.commit()
            break
        except psycopg.errors.DeadlockDetected:
            conn.rollback()
            if attempt == ATTEMPTS:
                raise
            attempt += 1
    assert row is not None
    counts.update(dict(zip(names, row, strict=True)))
    return int(row[0])
