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
from projections.outcome_rows import OutcomeDecoder, Row
from tidings.events import Event, NotificationRequested

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


EVENT_ID, NOTIFICATION_ID, DELIVERY_ID, TENANT_ID, CHANNEL, STATUS, REASON, PROVIDER, ATTEMPT = range(9)
OCCURRED_AT, RECIPIENT_ID, PROVIDER_MESSAGE_ID = 11, 12, 13


def fold_deliveries(outcomes: list[Row]) -> list[tuple[Any, ...]]:
    """Per delivery, what the row upsert applied outcome by outcome would leave (first of the top rank wins)."""
    rows: dict[Any, list[Any]] = {}
    for o in outcomes:
        key = o[DELIVERY_ID]
        if key is None:
            continue
        rank = RANK[o[STATUS]]
        row = rows.get(key)
        if row is None:
            rows[key] = [
                key,
                o[NOTIFICATION_ID],
                o[TENANT_ID],
                o[RECIPIENT_ID],
                o[CHANNEL],
                o[PROVIDER],
                o[PROVIDER_MESSAGE_ID],
                o[ATTEMPT],
                o[STATUS],
                rank,
                o[REASON],
                o[OCCURRED_AT],
                o[OCCURRED_AT],
            ]
            continue
        if rank > row[9]:
            row[8], row[9], row[10] = o[STATUS], rank, o[REASON]
        row[5] = o[PROVIDER] or row[5]
        row[6] = row[6] or o[PROVIDER_MESSAGE_ID]
        if o[ATTEMPT] > row[7]:
            row[7] = o[ATTEMPT]
        at = o[OCCURRED_AT]
        if at < row[11]:
            row[11] = at
        if at > row[12]:
            row[12] = at
    return [tuple(r) for r in rows.values()]


def fold_summaries(outcomes: list[Row]) -> list[tuple[Any, ...]]:
    rows: dict[Any, list[Any]] = {}
    for o in outcomes:
        status = o[STATUS]
        rank = SUMMARY_RANK[status]
        terminal = o[OCCURRED_AT] if RANK[status] >= TERMINAL_RANK else None
        row = rows.get(o[NOTIFICATION_ID])
        if row is None:
            rows[o[NOTIFICATION_ID]] = [
                o[NOTIFICATION_ID],
                o[TENANT_ID],
                o[RECIPIENT_ID],
                status,
                rank,
                terminal,
            ]
            continue
        if rank > row[4]:
            row[3], row[4] = status, rank
        row[2] = row[2] or o[RECIPIENT_ID]
        if terminal is not None and (row[5] is None or terminal > row[5]):
            row[5] = terminal
    return [tuple(r) for r in rows.values()]


class DeliveryStatus(Projection):
    name = "delivery_status"
    tables = ("notifications", "deliveries", "delivery_events")
    sources = ("requested", "outcomes")

    def __init__(self) -> None:
        self.decoder = OutcomeDecoder()

    def decode(self, value: bytes | None) -> Row | Event:
        return self.decoder.decode(value)

    def apply(self, cur: Cursor, events: list[Row | Event]) -> None:
        cur.execute(STAGING.encode())
        requests: dict[Any, tuple[Any, ...]] = {}
        outcomes: list[Row] = []
        for e in events:
            if type(e) is tuple:
                outcomes.append(e)
            elif isinstance(e, NotificationRequested):
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
        _copy(cur, "stage_events", [o[:12] for o in outcomes])
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
