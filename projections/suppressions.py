"""Consumes notifications.feedback; produces the suppressions table (per tenant, channel and address).

Hard bounce, complaint, SMS STOP, dead token, disabled endpoint and an address-wide unsubscribe suppress;
`SOFT_BOUNCE_LIMIT` soft bounces within `SOFT_BOUNCE_WINDOW` suppress; START and resubscribe lift. Each
row's state changes only for feedback newer (by provider time) than the last it took, and `since` is the
earliest time of the current state, so duplicated and reordered feedback converge to the same row; a
soft bounce counts once per address and provider time, however often the provider delivered it.
"""

from __future__ import annotations

from processors.recipients import LIFTING, PERMANENT, SOFT_BOUNCE_LIMIT, SOFT_BOUNCE_WINDOW
from projections.base import Cursor, Projection, grouped
from tidings.events import Event, ProviderFeedback

UPSERT = """
INSERT INTO suppressions AS s (tenant_id, channel, address, active, reason, source, since, last_event_at)
VALUES (%(tenant)s, %(channel)s, %(address)s, %(active)s, %(reason)s, %(source)s, %(at)s, %(at)s)
ON CONFLICT (tenant_id, channel, address) DO UPDATE SET
    active = CASE WHEN {newer} THEN EXCLUDED.active ELSE s.active END,
    reason = CASE WHEN {newer} THEN EXCLUDED.reason ELSE s.reason END,
    source = CASE WHEN {newer} THEN EXCLUDED.source ELSE s.source END,
    since = CASE WHEN EXCLUDED.active = s.active THEN LEAST(s.since, EXCLUDED.since)
                 WHEN {newer} THEN EXCLUDED.since ELSE s.since END,
    last_event_at = GREATEST(s.last_event_at, EXCLUDED.last_event_at)
""".format(
    newer="(EXCLUDED.last_event_at > s.last_event_at OR "
    "(EXCLUDED.last_event_at = s.last_event_at AND EXCLUDED.active AND NOT s.active))"
)
BOUNCE = """
INSERT INTO soft_bounces (tenant_id, channel, address, event_id, at)
SELECT %(tenant)s, %(channel)s, %(address)s, %(event_id)s, %(at)s
WHERE NOT EXISTS (SELECT 1 FROM soft_bounces WHERE tenant_id = %(tenant)s AND channel = %(channel)s
                  AND address = %(address)s AND at = %(at)s)
ON CONFLICT DO NOTHING
"""
"""One soft bounce per address and instant: a provider retrying its webhook (SendGrid for a day, SNS
by its delivery policy) sends the same bounce again, parsed into a new event id, and it counted
towards the limit once more."""
WINDOW_FULL = """
SELECT max(w.last) FROM (
    SELECT b.at, (SELECT count(*) FROM soft_bounces c WHERE c.tenant_id = b.tenant_id AND c.channel = b.channel
                    AND c.address = b.address AND c.at >= b.at AND c.at < b.at + %(window)s) AS n,
           (SELECT max(c.at) FROM soft_bounces c WHERE c.tenant_id = b.tenant_id AND c.channel = b.channel
                    AND c.address = b.address AND c.at >= b.at AND c.at < b.at + %(window)s) AS last
    FROM soft_bounces b WHERE b.tenant_id = %(tenant)s AND b.channel = %(channel)s AND b.address = %(address)s
                          AND b.at > %(at)s - %(window)s AND b.at <= %(at)s
) w WHERE w.n >= %(limit)s
"""
"""The full windows that hold the new bounce (at `at`): only those can have become full with it, and
looking at no others keeps a bounce's cost independent of the address's history (it grew with its
square: 1.5 s per bounce at 2,000 bounces)."""


def normalized(channel: str, address: str) -> str:
    return address.lower() if channel == "email" else address


class Suppressions(Projection):
    name = "suppressions"
    tables = ("suppressions", "soft_bounces")
    sources = ("feedback",)

    def apply(self, cur: Cursor, events: list[Event]) -> None:
        rows = []
        for f in grouped(events, ProviderFeedback):
            at = f.provider_timestamp or f.occurred_at
            key = {
                "tenant": f.tenant_id,
                "channel": f.channel,
                "address": normalized(f.channel, f.address),
                "source": f.provider,
                "at": at,
            }
            if f.kind in PERMANENT or (f.kind == "unsubscribe" and not f.category):
                rows.append(key | {"active": True, "reason": f.kind})
            elif f.kind in LIFTING and not f.category:
                rows.append(key | {"active": False, "reason": f.kind})
            elif f.kind == "soft_bounce":
                if rows:
                    cur.executemany(UPSERT, rows)
                    rows = []
                cur.execute(BOUNCE, key | {"event_id": f.event_id})
                full = cur.execute(
                    WINDOW_FULL, key | {"window": SOFT_BOUNCE_WINDOW, "limit": SOFT_BOUNCE_LIMIT}
                ).fetchone()
                if full and full[0] is not None:
                    cur.execute(UPSERT, key | {"active": True, "reason": "soft_bounce_limit", "at": full[0]})
        if rows:
            cur.executemany(UPSERT, rows)
