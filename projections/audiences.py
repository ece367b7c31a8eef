"""Consumes notifications.broadcasts; produces the audience_members and broadcasts tables.

The same fold as the audience processor, in SQL, for reads (`GET /v1/audiences/{id}`, its members,
`GET /v1/broadcasts/{id}`): membership in topic order, and for each broadcast the number of members
it covered, counted when it is applied, which is the audience at the broadcast's place in its
partition, as the processor sees it. The first request and the first cancellation of a broadcast id
count; a repeat or a record naming the id under another audience changes nothing (the processor
ignores or dead-letters those). A cancellation before its broadcast leaves a row that the broadcast
later fills in with 0 members: it never starts.
"""

from __future__ import annotations

from projections.base import Cursor, Projection
from tidings.events import (
    AudienceMembersAdded,
    AudienceMembersRemoved,
    BroadcastCancelled,
    BroadcastRequested,
    Event,
)

JOIN = """
INSERT INTO audience_members (tenant_id, audience_id, recipient_id, joined_at) VALUES (%s, %s, %s, %s)
ON CONFLICT DO NOTHING
"""
LEAVE = """
DELETE FROM audience_members WHERE tenant_id = %s AND audience_id = %s AND recipient_id = ANY(%s)
"""
REQUEST = """
INSERT INTO broadcasts AS b (tenant_id, broadcast_id, audience_id, notification_type, priority, requested_at,
                             members)
SELECT %(tenant)s, %(broadcast)s, %(audience)s, %(type)s, %(priority)s, %(at)s, count(*)
FROM audience_members WHERE tenant_id = %(tenant)s AND audience_id = %(audience)s
ON CONFLICT (tenant_id, broadcast_id) DO UPDATE SET
    notification_type = EXCLUDED.notification_type, priority = EXCLUDED.priority,
    requested_at = EXCLUDED.requested_at, members = 0
WHERE b.requested_at IS NULL AND b.audience_id = EXCLUDED.audience_id
"""
CANCEL = """
INSERT INTO broadcasts AS b (tenant_id, broadcast_id, audience_id, cancelled_at, cancel_reason)
VALUES (%(tenant)s, %(broadcast)s, %(audience)s, %(at)s, %(reason)s)
ON CONFLICT (tenant_id, broadcast_id) DO UPDATE SET
    cancelled_at = EXCLUDED.cancelled_at, cancel_reason = EXCLUDED.cancel_reason
WHERE b.cancelled_at IS NULL AND b.audience_id = EXCLUDED.audience_id
"""


class Audiences(Projection):
    name = "audiences"
    tables = ("audience_members", "broadcasts")
    sources = ("broadcasts",)

    def apply(self, cur: Cursor, events: list[Event]) -> None:
        for e in events:
            if isinstance(e, AudienceMembersAdded):
                cur.executemany(
                    JOIN,
                    [(e.tenant_id, e.audience_id, r, e.occurred_at) for r in dict.fromkeys(e.recipient_ids)],
                )
            elif isinstance(e, AudienceMembersRemoved):
                cur.execute(LEAVE, (e.tenant_id, e.audience_id, list(e.recipient_ids)))
            elif isinstance(e, BroadcastRequested):
                fields = {"priority": e.priority, "type": e.notification_type}
                cur.execute(REQUEST, self._keys(e) | fields)
            elif isinstance(e, BroadcastCancelled):
                cur.execute(CANCEL, self._keys(e) | {"reason": e.reason})

    @staticmethod
    def _keys(e: BroadcastRequested | BroadcastCancelled) -> dict[str, object]:
        return {
            "tenant": e.tenant_id,
            "broadcast": e.broadcast_id,
            "audience": e.audience_id,
            "at": e.occurred_at,
        }
