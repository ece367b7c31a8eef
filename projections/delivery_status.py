"""Consumes notifications.requested and notifications.outcomes; produces the notifications, deliveries and
delivery_events tables (status and timeline).

A delivery's status only moves forward by rank (QUEUED < RETRYING < SENT < terminal < DELIVERED), so
duplicate and out-of-order outcomes are harmless. A notification's summary is the furthest any of its
channels got (DELIVERED > SENT > RETRYING > QUEUED > DEFERRED), else its failure (FAILED, EXPIRED,
CANCELLED, REJECTED), else SKIPPED/SUPPRESSED when no channel was used; a request's fields are kept from its first record. Rows hold event
times only, so a rebuild reproduces them exactly.
"""

from __future__ import annotations

from projections.base import Cursor, Projection, grouped
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

REQUEST = """
INSERT INTO notifications (notification_id, tenant_id, recipient_id, notification_type, priority, requested_at)
VALUES (%s, %s, %s, %s, %s, %s)
ON CONFLICT (notification_id) DO UPDATE SET
    recipient_id = COALESCE(notifications.recipient_id, EXCLUDED.recipient_id),
    notification_type = COALESCE(notifications.notification_type, EXCLUDED.notification_type),
    priority = COALESCE(notifications.priority, EXCLUDED.priority),
    requested_at = COALESCE(notifications.requested_at, EXCLUDED.requested_at)
"""
EVENT = """
INSERT INTO delivery_events (event_id, notification_id, delivery_id, tenant_id, channel, status, reason, provider,
                             attempt, template_version, detail, occurred_at)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (event_id) DO NOTHING
"""
DELIVERY = """
INSERT INTO deliveries AS d (delivery_id, notification_id, tenant_id, recipient_id, channel, provider,
                             provider_message_id, attempts, status, status_rank, reason, first_at, last_at)
VALUES (%(delivery_id)s, %(notification_id)s, %(tenant_id)s, %(recipient_id)s, %(channel)s, %(provider)s,
        %(provider_message_id)s, %(attempt)s, %(status)s, %(rank)s, %(reason)s, %(at)s, %(at)s)
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
SUMMARY = """
INSERT INTO notifications AS n (notification_id, tenant_id, recipient_id, status, status_rank, terminal_at)
VALUES (%(notification_id)s, %(tenant_id)s, %(recipient_id)s, %(status)s, %(summary_rank)s, %(terminal_at)s)
ON CONFLICT (notification_id) DO UPDATE SET
    status = CASE WHEN EXCLUDED.status_rank > n.status_rank OR n.status IS NULL THEN EXCLUDED.status
                  ELSE n.status END,
    status_rank = GREATEST(n.status_rank, EXCLUDED.status_rank),
    recipient_id = COALESCE(n.recipient_id, EXCLUDED.recipient_id),
    terminal_at = GREATEST(n.terminal_at, EXCLUDED.terminal_at)
"""


class DeliveryStatus(Projection):
    name = "delivery_status"
    tables = ("notifications", "deliveries", "delivery_events")
    sources = ("requested", "outcomes")

    def apply(self, cur: Cursor, events: list[Event]) -> None:
        requests: list[NotificationRequested] = grouped(events, NotificationRequested)
        outcomes: list[DeliveryOutcome] = grouped(events, DeliveryOutcome)
        if requests:
            cur.executemany(
                REQUEST,
                [
                    (
                        r.notification_id,
                        r.tenant_id,
                        r.recipient_id,
                        r.notification_type,
                        r.priority,
                        r.occurred_at,
                    )
                    for r in requests
                ],
            )
        if not outcomes:
            return
        cur.executemany(
            EVENT,
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
        rows = [
            {
                "delivery_id": o.delivery_id,
                "notification_id": o.notification_id,
                "tenant_id": o.tenant_id,
                "recipient_id": o.recipient_id,
                "channel": o.channel,
                "provider": o.provider,
                "provider_message_id": o.provider_message_id,
                "attempt": o.attempt,
                "status": o.status,
                "rank": RANK[o.status],
                "summary_rank": SUMMARY_RANK[o.status],
                "reason": o.reason,
                "at": o.occurred_at,
                "terminal_at": o.occurred_at if RANK[o.status] >= TERMINAL_RANK else None,
            }
            for o in outcomes
        ]
        deliveries = [r for r in rows if r["delivery_id"] is not None]
        if deliveries:
            cur.executemany(DELIVERY, deliveries)
        cur.executemany(SUMMARY, rows)
