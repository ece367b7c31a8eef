"""Consumes notifications.broadcasts; produces the audience_members, audiences and broadcasts tables.

The membership fold of the audience processor, in SQL, for reads (`GET /v1/audiences/{id}`, its
members, `GET /v1/broadcasts/{id}`), in topic order per audience. A broadcast's row says what was
asked: `members` is the audience's size at the broadcast's place in its partition, the range the
processor expands (members who leave during the expansion are skipped there, so a few may get
nothing). It is not a receipt: a broadcast the processor refused (an unknown type, dead-lettered) has
its row too, and if that dead letter is replayed once the type exists, the processor expands the
audience as it is then while the row keeps the first count. The first request and the first
cancellation of a broadcast id in an audience count, like the processor's; a cancellation before its broadcast leaves a row the broadcast fills in with 0
members, as it never starts. Rows are per audience, because the processor's state is per partition:
the same id under two audiences is two broadcasts there, and must not depend here on which partition
a rebuild happens to read first. An audience's size is kept in `audiences` as members join and leave
(only rows really inserted or deleted count; an audience without members has no row, as after
migration 0008's seed), so neither a read nor a broadcast counts the members.
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
WITH joined AS (
    INSERT INTO audience_members (tenant_id, audience_id, recipient_id, joined_at)
    SELECT %(tenant)s, %(audience)s, r, %(at)s FROM unnest(%(recipients)s::text[]) AS r
    ON CONFLICT DO NOTHING RETURNING 1
)
INSERT INTO audiences AS a (tenant_id, audience_id, members)
SELECT %(tenant)s, %(audience)s, count(*) FROM joined HAVING count(*) > 0
ON CONFLICT (tenant_id, audience_id) DO UPDATE SET members = a.members + EXCLUDED.members
"""
LEAVE = """
WITH gone AS (
    DELETE FROM audience_members
    WHERE tenant_id = %(tenant)s AND audience_id = %(audience)s AND recipient_id = ANY(%(recipients)s)
    RETURNING 1
)
UPDATE audiences SET members = members - (SELECT count(*) FROM gone)
WHERE tenant_id = %(tenant)s AND audience_id = %(audience)s
"""
EMPTIED = """
DELETE FROM audiences WHERE tenant_id = %(tenant)s AND audience_id = %(audience)s AND members = 0
"""
REQUEST = """
INSERT INTO broadcasts AS b (tenant_id, broadcast_id, audience_id, notification_type, priority, requested_at,
                             members)
SELECT %(tenant)s, %(broadcast)s, %(audience)s, %(type)s, %(priority)s, %(at)s,
       coalesce((SELECT members FROM audiences WHERE tenant_id = %(tenant)s AND audience_id = %(audience)s), 0)
ON CONFLICT (tenant_id, audience_id, broadcast_id) DO UPDATE SET
    notification_type = EXCLUDED.notification_type, priority = EXCLUDED.priority,
    requested_at = EXCLUDED.requested_at, members = 0
WHERE b.requested_at IS NULL
"""
CANCEL = """
INSERT INTO broadcasts AS b (tenant_id, broadcast_id, audience_id, cancelled_at, cancel_reason)
VALUES (%(tenant)s, %(broadcast)s, %(audience)s, %(at)s, %(reason)s)
ON CONFLICT (tenant_id, audience_id, broadcast_id) DO UPDATE SET
    cancelled_at = EXCLUDED.cancelled_at, cancel_reason = EXCLUDED.cancel_reason
WHERE b.cancelled_at IS NULL
"""


class Audiences(Projection):
    name = "audiences"
    tables = ("audience_members", "audiences", "broadcasts")
    sources = ("broadcasts",)

    def apply(self, cur: Cursor, events: list[Event]) -> None:
        for e in events:
            if isinstance(e, AudienceMembersAdded | AudienceMembersRemoved):
                change = {"tenant": e.tenant_id, "audience": e.audience_id, "at": e.occurred_at}
                change["recipients"] = list(dict.fromkeys(e.recipient_ids))
                if isinstance(e, AudienceMembersAdded):
                    cur.execute(JOIN, change)
                else:
                    cur.execute(LEAVE, change)
                    cur.execute(EMPTIED, change)
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
