"""Consumes notifications.requested and notifications.outcomes; produces the notifications, deliveries and
delivery_events tables (status and timeline).

A delivery's status only moves forward by rank (QUEUED < RETRYING < SENT < terminal < DELIVERED), so
duplicate and out-of-order outcomes are harmless. A notification's summary is the furthest any of its
channels got (DELIVERED > SENT > RETRYING > QUEUED > DEFERRED), else its failure (FAILED, EXPIRED,
CANCELLED, REJECTED), else SKIPPED/SUPPRESSED when no channel was used; a request's fields are kept from
its first record. Rows hold event times only, so a rebuild reproduces them exactly.

Writes are set-based: a batch is folded per key in Python exactly as the upserts would fold it one by
one, COPYed into temporary tables, and merged with one INSERT ... ON CONFLICT per table.
"""

from __future__ import annotations

from typing import Any

from projections.base import Cursor, Projection
from tidings.events import DeliveryOutcome, Event, NotificationRequested

RANK = {
    "DEFERRED": 1,
    "QUEUED": 2,
    "RETRYING": 3,
    "SENT": 4,
    "FAILED": 5,
    "SUPPRESSED": 5,
    "EXPIRED": 5,
    "CANCELLED": 5,
    "SKIPPED": 5,
    "REJECTED": 5,
    "DELIVERED": 6,
}
TERMINAL_RANK = 4
SUMMARY_RANK = {
    "SKIPPED": 0,
    "SUPPRESSED": 0,
    "EXPIRED": 1,
    "FAILED": 1,
    "CANCELLED": 1,
    "REJECTED": 1,
    "DEFERRED": 2,
    "QUEUED": 3,
    "RETRYING": 4,
    "SENT": 5,
    "DELIVERED": 6,
}

STAGING = """
CREATE TEMP TABLE IF NOT EXISTS stage_requests (LIKE notifications INCLUDING DEFAULTS) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS stage_summaries (LIKE notifications INCLUDING DEFAULTS) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS stage_deliveries (LIKE deliveries INCLUDING DEFAULTS) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS stage_events (LIKE delivery_events) ON COMMIT DELETE ROWS;
"""
MERGE_REQUESTS = """
INSERT INTO notifications AS n (notification_id, tenant_id, recipient_id, notification_type, priority, requested_at)
SELECT notification_id, tenant_id, recipient_id, notification_type, priority, requested_at FROM stage_requests
ON CONFLICT (notification_id) DO UPDATE SET
    recipient_id = COALESCE(n.recipient_id, EXCLUDED.recipient_id),
    notification_type = COALESCE(n.notification_type, EXCLUDED.notification_type),
    priority = COALESCE(n.priority, EXCLUDED.priority),
    requested_at = COALESCE(n.requested_at, EXCLUDED.requested_at)
"""
MERGE_EVENTS = "INSERT INTO delivery_events SELECT * FROM stage_events ON CONFLICT (event_id) DO NOTHING"
MERGE_DELIVERIES = """
INSERT INTO deliveries AS d SELECT * FROM stage_deliveries
ON CONFLICT (delivery_id) DO UPDATE SET
    status = CASE WHEN EXCLUDED.status_rank > d.status_rank THEN EXCLUDED.status ELSE d.status END,
    reason = CASE WHEN EXCLUDED.status_rank > d.status_rank THEN EXCLUDED.reason ELSE d.reason END,
    status_rank = GREATEST(d.status_rank, EXCLUDED.status_rank),
    provider = COALESCE(EXCLUDED.provider, d.provider),
    provider_message_id = COALESCE(d.provider_message_id, EXCLUDED.provider_message_id),
    attempts = GREATEST(d.attempts, EXCLUDED.attempts),
    first_at = LEAST(d.first_at, EXCLUDED.first_at),
    last_at = GREATEST(d.last_at, EXCLUDED.last_at)
"""
MERGE_SUMMARIES = """
INSERT INTO notifications AS n (notification_id, tenant_id, recipient_id, status, status_rank, terminal_at)
SELECT notification_id, tenant_id, recipient_id, status, status_rank, terminal_at FROM stage_summaries
ON CONFLICT (notification_id) DO UPDATE SET
    status = CASE WHEN EXCLUDED.status_rank > n.status_rank OR n.status IS NULL THEN EXCLUDED.status
                  ELSE n.status END,
    status_rank = GREATEST(n.status_rank, EXCLUDED.status_rank),
    recipient_id = COALESCE(n.recipient_id, EXCLUDED.recipient_id),
    terminal_at = GREATEST(n.terminal_at, EXCLUDED.terminal_at)
"""
DELIVERY_COLUMNS = (
    "delivery_id",
    "notification_id",
    "tenant_id",
    "recipient_id",
    "channel",
    "provider",
    "provider_message_id",
    "attempts",
    "status",
    "status_rank",
    "reason",
    "first_at",
    "last_at",
)


def fold_deliveries(outcomes: list[DeliveryOutcome]) -> list[tuple[Any, ...]]:
    """Per delivery, what the row upsert applied outcome by outcome would leave (first of the top rank wins)."""
    rows: dict[Any, dict[str, Any]] = {}
    for o in outcomes:
        if o.delivery_id is None:
            continue
        rank = RANK[o.status]
        row = rows.get(o.delivery_id)
        if row is None:
            rows[o.delivery_id] = {
                "delivery_id": o.delivery_id,
                "notification_id": o.notification_id,
                "tenant_id": o.tenant_id,
                "recipient_id": o.recipient_id,
                "channel": o.channel,
                "provider": o.provider,
                "provider_message_id": o.provider_message_id,
                "attempts": o.attempt,
                "status": o.status,
                "status_rank": rank,
                "reason": o.reason,
                "first_at": o.occurred_at,
                "last_at": o.occurred_at,
            }
            continue
        if rank > row["status_rank"]:
            row.update(status=o.status, reason=o.reason, status_rank=rank)
        row["provider"] = o.provider or row["provider"]
        row["provider_message_id"] = row["provider_message_id"] or o.provider_message_id
        row["attempts"] = max(row["attempts"], o.attempt)
        row["first_at"] = min(row["first_at"], o.occurred_at)
        row["last_at"] = max(row["last_at"], o.occurred_at)
    return [tuple(r[c] for c in DELIVERY_COLUMNS) for r in rows.values()]


def fold_summaries(outcomes: list[DeliveryOutcome]) -> list[tuple[Any, ...]]:
    rows: dict[Any, list[Any]] = {}
    for o in outcomes:
        rank = SUMMARY_RANK[o.status]
        terminal = o.occurred_at if RANK[o.status] >= TERMINAL_RANK else None
        row = rows.get(o.notification_id)
        if row is None:
            rows[o.notification_id] = [
                o.notification_id,
                o.tenant_id,
                o.recipient_id,
                o.status,
                rank,
                terminal,
            ]
            continue
        if rank > row[4]:
            row[3], row[4] = o.status, rank
        row[2] = row[2] or o.recipient_id
        if terminal is not None and (row[5] is None or terminal > row[5]):
            row[5] = terminal
    return [tuple(r) for r in rows.values()]


class DeliveryStatus(Projection):
    name = "delivery_status"
    tables = ("notifications", "deliveries", "delivery_events")
    sources = ("requested", "outcomes")

    def apply(self, cur: Cursor, events: list[Event]) -> None:
        cur.execute(STAGING.encode())
        requests: dict[Any, tuple[Any, ...]] = {}
        outcomes: list[DeliveryOutcome] = []
        for e in events:
            if isinstance(e, NotificationRequested):
                requests.setdefault(
                    e.notification_id,
                    (
                        e.notification_id,
                        e.tenant_id,
                        e.recipient_id,
                        e.notification_type,
                        e.priority,
                        e.occurred_at,
                    ),
                )
            elif isinstance(e, DeliveryOutcome):
                outcomes.append(e)
        if requests:
            _copy(
                cur,
                "stage_requests (notification_id, tenant_id, recipient_id, notification_type, priority, "
                "requested_at)",
                requests.values(),
            )
            cur.execute(MERGE_REQUESTS.encode())
        if not outcomes:
            return
        _copy(
            cur,
            "stage_events",
            [
                (
                    o.event_id,
                    o.notification_id,
                    o.delivery_id,
                    o.tenant_id,
                    o.channel,
                    o.status,
                    o.reason,
                    o.provider,
                    o.attempt,
                    o.template_version,
                    o.detail,
                    o.occurred_at,
                )
                for o in outcomes
            ],
        )
        cur.execute(MERGE_EVENTS.encode())
        if deliveries := fold_deliveries(outcomes):
            _copy(cur, f"stage_deliveries ({', '.join(DELIVERY_COLUMNS)})", deliveries)
            cur.execute(MERGE_DELIVERIES.encode())
        _copy(
            cur,
            "stage_summaries (notification_id, tenant_id, recipient_id, status, status_rank, terminal_at)",
            fold_summaries(outcomes),
        )
        cur.execute(MERGE_SUMMARIES.encode())


def _copy(cur: Cursor, target: str, rows: Any) -> None:
    with cur.copy(f"COPY {target} FROM STDIN".encode()) as copy:
        for row in rows:
            copy.write_row(row)
