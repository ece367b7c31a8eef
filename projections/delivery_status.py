"""Consumes notifications.requested and notifications.outcomes; produces the notifications, deliveries and
delivery_events tables (status and timeline).

A delivery's status only moves forward by rank (QUEUED < RETRYING < SENT < terminal < DELIVERED), so
duplicate and out-of-order outcomes are harmless. A notification's summary is taken from where its
deliveries are now (and its outcomes about no delivery: a rejection, a skip): the furthest any got
(DELIVERED > SENT > RETRYING > QUEUED), else its failure (FAILED > REJECTED > EXPIRED > CANCELLED), else
DEFERRED while a channel waits, else SUPPRESSED/SKIPPED when no channel was used; a request's fields are
kept from its first record, and its recipient replaces the one an earlier outcome named (a cancel naming
another recipient is CANCELLED on that recipient's partition, and read first it took the row over). Taken from every outcome ever received instead, a delivery QUEUED and then
FAILED left its notification QUEUED for good (until session 18). DEFERRED ranks below the failures
because a deferred delivery ends as one of them or as QUEUED. Rows hold event times only, and the
summary depends on the deliveries' final states alone, so a rebuild reproduces them exactly.
Rows are keyed by tenant and id: ids come from callers (a cancellation, a provider's report), and one
tenant's event about another tenant's id makes a row of its own instead of touching the other's.

Writes are set-based: a batch's outcomes are COPYed once into a temporary table, in batch order, and each
table is merged with one INSERT ... ON CONFLICT whose SELECT folds the batch per key exactly as the
upserts would fold it one by one (window functions pick the first row, the first of the top rank, the
last non-null provider, the first non-null message id; an empty string is a value, as in the upserts), so
the result does not depend on where batches split. Folding in SQL moves that work from the Python
process, one core under the GIL, to the database, where it overlaps the decoding of the next batch. An
upsert that would leave a row as it is skips the update, sparing a dead tuple and its WAL.
"""

from __future__ import annotations

from typing import Any, get_args

from projections.base import Cursor, Projection
from projections.outcome_rows import COLUMNS, OutcomeDecoder, Row
from tidings.events import Event, NotificationRequested, OutcomeStatus

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
    "DEFERRED": 1,
    "EXPIRED": 2,
    "FAILED": 2,
    "CANCELLED": 2,
    "REJECTED": 2,
    "QUEUED": 3,
    "RETRYING": 4,
    "SENT": 5,
    "DELIVERED": 6,
}

TIE = dict.fromkeys(RANK, 0) | {"FAILED": 4, "REJECTED": 3, "EXPIRED": 2, "CANCELLED": 1, "SUPPRESSED": 1}
"""Between statuses of one summary rank: the one the summary shows."""

TERMINAL = tuple(status for status, rank in RANK.items() if rank >= TERMINAL_RANK)
if set(RANK) != set(get_args(OutcomeStatus)) or set(SUMMARY_RANK) != set(RANK):
    raise ImportError("RANK and SUMMARY_RANK must rank every OutcomeStatus")


def _rank_sql(ranks: dict[str, int]) -> str:
    return "CASE status " + " ".join(f"WHEN '{s}' THEN {r}" for s, r in ranks.items()) + " END"


STAGING = """
CREATE TEMP TABLE IF NOT EXISTS stage_requests (LIKE notifications INCLUDING DEFAULTS) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS stage_outcomes (
    seq bigint GENERATED ALWAYS AS IDENTITY,
    event_id uuid NOT NULL,
    notification_id uuid NOT NULL,
    delivery_id uuid,
    tenant_id text NOT NULL,
    channel text,
    status text NOT NULL,
    reason text,
    provider text,
    attempt integer NOT NULL,
    template_version integer,
    detail text,
    occurred_at timestamptz NOT NULL,
    recipient_id text,
    provider_message_id text
) ON COMMIT DELETE ROWS;
"""
REQUEST_COLUMNS = (
    "notification_id, tenant_id, recipient_id, notification_type, priority, requested_at, broadcast_id"
)
MERGE_REQUESTS = f"""
INSERT INTO notifications AS n ({REQUEST_COLUMNS})
SELECT {REQUEST_COLUMNS} FROM stage_requests
ON CONFLICT (tenant_id, notification_id) DO UPDATE SET
    recipient_id = CASE WHEN n.requested_at IS NULL THEN COALESCE(EXCLUDED.recipient_id, n.recipient_id)
                        ELSE n.recipient_id END,
    notification_type = COALESCE(n.notification_type, EXCLUDED.notification_type),
    priority = COALESCE(n.priority, EXCLUDED.priority),
    requested_at = COALESCE(n.requested_at, EXCLUDED.requested_at),
    broadcast_id = COALESCE(n.broadcast_id, EXCLUDED.broadcast_id)
"""
EVENT_COLUMNS = ", ".join(COLUMNS[:12])
MERGE_EVENTS = f"""
INSERT INTO delivery_events ({EVENT_COLUMNS})
SELECT {EVENT_COLUMNS} FROM stage_outcomes ORDER BY seq
ON CONFLICT (tenant_id, event_id) DO NOTHING
"""
MERGE_DELIVERIES = f"""
WITH o AS (
    SELECT delivery_id, seq, notification_id, tenant_id, recipient_id, channel, provider, provider_message_id,
           attempt, status, reason, occurred_at, {_rank_sql(RANK)} AS status_rank,
           min(seq) OVER d AS first_seq,
           max(seq) FILTER (WHERE provider IS NOT NULL) OVER d AS provider_seq,
           min(seq) FILTER (WHERE provider_message_id IS NOT NULL) OVER d AS message_seq,
           first_value(seq) OVER (PARTITION BY tenant_id, delivery_id ORDER BY {_rank_sql(RANK)} DESC, seq)
               AS top_seq
    FROM stage_outcomes WHERE delivery_id IS NOT NULL
    WINDOW d AS (PARTITION BY tenant_id, delivery_id)
)
INSERT INTO deliveries AS d (delivery_id, notification_id, tenant_id, recipient_id, channel, provider,
                             provider_message_id, attempts, status, status_rank, reason, first_at, last_at)
SELECT delivery_id,
       (max(notification_id::text) FILTER (WHERE seq = first_seq))::uuid,
       tenant_id,
       max(recipient_id) FILTER (WHERE seq = first_seq),
       max(channel) FILTER (WHERE seq = first_seq),
       max(provider) FILTER (WHERE seq = provider_seq),
       max(provider_message_id) FILTER (WHERE seq = message_seq),
       max(attempt),
       max(status) FILTER (WHERE seq = top_seq),
       max(status_rank),
       max(reason) FILTER (WHERE seq = top_seq),
       min(occurred_at),
       max(occurred_at)
FROM o GROUP BY tenant_id, delivery_id
ON CONFLICT (tenant_id, delivery_id) DO UPDATE SET
    status = CASE WHEN EXCLUDED.status_rank > d.status_rank THEN EXCLUDED.status ELSE d.status END,
    reason = CASE WHEN EXCLUDED.status_rank > d.status_rank THEN EXCLUDED.reason ELSE d.reason END,
    status_rank = GREATEST(d.status_rank, EXCLUDED.status_rank),
    provider = COALESCE(EXCLUDED.provider, d.provider),
    provider_message_id = COALESCE(d.provider_message_id, EXCLUDED.provider_message_id),
    attempts = GREATEST(d.attempts, EXCLUDED.attempts),
    first_at = LEAST(d.first_at, EXCLUDED.first_at),
    last_at = GREATEST(d.last_at, EXCLUDED.last_at)
WHERE EXCLUDED.status_rank > d.status_rank
   OR COALESCE(EXCLUDED.provider, d.provider) IS DISTINCT FROM d.provider
   OR (d.provider_message_id IS NULL AND EXCLUDED.provider_message_id IS NOT NULL)
   OR EXCLUDED.attempts > d.attempts OR EXCLUDED.first_at < d.first_at OR EXCLUDED.last_at > d.last_at
"""
MERGE_SUMMARIES = f"""
WITH o AS (
    SELECT notification_id, seq, tenant_id, recipient_id, status, occurred_at,
           {_rank_sql(SUMMARY_RANK)} AS summary_rank,
           min(seq) FILTER (WHERE recipient_id IS NOT NULL) OVER n AS recipient_seq,
           first_value(seq) OVER (
               PARTITION BY tenant_id, notification_id ORDER BY {_rank_sql(SUMMARY_RANK)} DESC, seq
           ) AS top_seq
    FROM stage_outcomes
    WINDOW n AS (PARTITION BY tenant_id, notification_id)
)
INSERT INTO notifications AS n (notification_id, tenant_id, recipient_id, status, status_rank, terminal_at)
SELECT notification_id,
       tenant_id,
       max(recipient_id) FILTER (WHERE seq = recipient_seq),
       max(status) FILTER (WHERE seq = top_seq),
       max(summary_rank),
       max(occurred_at) FILTER (WHERE status IN ({", ".join(f"'{s}'" for s in TERMINAL)}))
FROM o GROUP BY tenant_id, notification_id
ON CONFLICT (tenant_id, notification_id) DO UPDATE SET
    recipient_id = COALESCE(n.recipient_id, EXCLUDED.recipient_id),
    terminal_at = GREATEST(n.terminal_at, EXCLUDED.terminal_at)
WHERE (n.recipient_id IS NULL AND EXCLUDED.recipient_id IS NOT NULL)
   OR EXCLUDED.terminal_at > n.terminal_at OR (n.terminal_at IS NULL AND EXCLUDED.terminal_at IS NOT NULL)
"""
SETTLE_SUMMARIES = f"""
WITH k AS (SELECT DISTINCT tenant_id, notification_id FROM stage_outcomes),
c AS (
    SELECT d.tenant_id, d.notification_id, d.status FROM deliveries d JOIN k USING (tenant_id, notification_id)
    UNION ALL
    SELECT e.tenant_id, e.notification_id, e.status FROM delivery_events e JOIN k USING (tenant_id, notification_id)
    WHERE e.delivery_id IS NULL
),
s AS (
    SELECT DISTINCT ON (tenant_id, notification_id) tenant_id, notification_id, status,
           {_rank_sql(SUMMARY_RANK)} AS status_rank
    FROM c ORDER BY tenant_id, notification_id, {_rank_sql(SUMMARY_RANK)} DESC, {_rank_sql(TIE)} DESC
)
UPDATE notifications n SET status = s.status, status_rank = s.status_rank
FROM s WHERE n.tenant_id = s.tenant_id AND n.notification_id = s.notification_id
  AND (n.status IS DISTINCT FROM s.status OR n.status_rank <> s.status_rank)
"""
MERGE_OUTCOMES = ";".join((MERGE_EVENTS, MERGE_DELIVERIES, MERGE_SUMMARIES, SETTLE_SUMMARIES)).encode()


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
                    (e.tenant_id, e.notification_id),
                    (
                        e.notification_id,
                        e.tenant_id,
                        e.recipient_id,
                        e.notification_type,
                        e.priority,
                        e.occurred_at,
                        e.broadcast_id,
                    ),
                )
        if requests:
            _copy(cur, f"stage_requests ({REQUEST_COLUMNS})", requests.values())
            cur.execute(MERGE_REQUESTS.encode())
        if not outcomes:
            return
        _copy(cur, f"stage_outcomes ({', '.join(COLUMNS)})", outcomes)
        cur.execute(MERGE_OUTCOMES)


def _copy(cur: Cursor, target: str, rows: Any) -> None:
    with cur.copy(f"COPY {target} FROM STDIN".encode()) as copy:
        for row in rows:
            copy.write_row(row)
