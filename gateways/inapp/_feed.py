"""The inbox's shared vocabulary: its SQL, its rows as JSON, and the Redis doorbell channel names.

The in_app gateway writes items and rings the recipient's doorbell; the edge reads the feed and listens
for doorbells. A doorbell only says "look again": the items are read from PostgreSQL, so a lost doorbell
delays an item until the socket's next look (on reconnect, or its periodic re-read), and loses nothing.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any
from uuid import UUID

from tidings.events import DeliveryCommand

INSERT = """
INSERT INTO inbox_items (delivery_id, notification_id, tenant_id, recipient_id, notification_type, category,
                         priority, title, body, data_json, locale, requested_at, expires_at, created_at)
SELECT %(delivery_id)s, %(notification_id)s, %(tenant_id)s, %(recipient_id)s, %(notification_type)s,
       %(category)s, %(priority)s, %(title)s, %(body)s, %(data_json)s, %(locale)s,
       %(requested_at)s::timestamptz, %(expires_at)s::timestamptz, clock_timestamp()
WHERE NOT EXISTS (SELECT 1 FROM erasures WHERE tenant_id = %(tenant_id)s AND recipient_id = %(recipient_id)s
                  AND erased_at > %(requested_at)s)
ON CONFLICT (tenant_id, delivery_id) DO NOTHING
RETURNING seq
"""
"""`created_at` is when the row is made, not when the statement started (`now()`, the column's
default): an insert that waited for the table lock an erasure holds took its `seq` after the wait, and
with a start time older than the feed's look-back, a socket whose cursor had passed that `seq` never
sent the item."""


def item_row(command: DeliveryCommand) -> dict[str, Any]:
    """The parameters of `INSERT` for an in-app command."""
    c = command.content
    return {
        "delivery_id": command.delivery_id,
        "notification_id": command.notification_id,
        "tenant_id": command.tenant_id,
        "recipient_id": command.recipient_id,
        "notification_type": command.notification_type,
        "category": command.category,
        "priority": command.priority,
        "title": c.title,
        "body": c.body,
        "data_json": c.data_json,
        "locale": command.locale,
        "requested_at": command.request_time,
        "expires_at": command.expires_at,
    }


EXISTING = "SELECT seq FROM inbox_items WHERE tenant_id = %(tenant_id)s AND delivery_id = %(delivery_id)s"
LAST_READ = "GREATEST(s.last_read_at, s.read_at)"
LAST_ARCHIVED = "GREATEST(s.last_archived_at, s.archived_at)"
READ_NOW = f"CASE WHEN {LAST_READ} > COALESCE(s.unread_at, '-infinity') THEN {LAST_READ} END"
ARCHIVED_NOW = f"CASE WHEN {LAST_ARCHIVED} > COALESCE(s.unarchived_at, '-infinity') THEN {LAST_ARCHIVED} END"
COLUMNS = f"""i.seq, i.notification_id, i.delivery_id, i.notification_type, i.category, i.priority,
i.title, i.body, i.data_json, i.created_at, s.seen_at, {READ_NOW}, {ARCHIVED_NOW}"""
FROM = """FROM inbox_items i LEFT JOIN inbox_states s
  ON s.notification_id = i.notification_id AND s.tenant_id = i.tenant_id AND s.recipient_id = i.recipient_id
WHERE i.tenant_id = %(tenant)s AND i.recipient_id = %(recipient)s AND s.withdrawn_at IS NULL
  AND (i.expires_at IS NULL OR i.expires_at > now())"""
PAGE = f"""SELECT {COLUMNS} {FROM}
  AND (%(archived)s OR ({ARCHIVED_NOW}) IS NULL) AND (%(before)s::bigint IS NULL OR i.seq < %(before)s)
ORDER BY i.seq DESC LIMIT %(limit)s"""
SINCE = f"""SELECT * FROM (
  (SELECT {COLUMNS} {FROM} AND i.seq > %(after)s ORDER BY i.seq LIMIT %(limit)s)
  UNION ALL
  (SELECT {COLUMNS} {FROM} AND i.seq <= %(after)s AND i.seq <> ALL(%(sent)s::bigint[])
     AND i.created_at > now() - make_interval(secs => %(lookback)s) ORDER BY i.seq LIMIT %(limit)s)
) page ORDER BY seq > %(after)s DESC, seq LIMIT %(limit)s"""
"""The items after the cursor first, then the look-back's that the socket has not sent (`sent`): items
it sent, re-read by the look-back, filled the page ahead of the ones after the cursor, and in a burst
of more than a page ahead of an item committed late, which was never sent. Two ranges, each read from
an index (`inbox_items_feed`, `inbox_items_recent`) up to the page's size, so a look costs a page,
not the recipient's whole history."""
MARK = """SELECT
  (SELECT max(seq) FROM inbox_items WHERE tenant_id = %(tenant)s AND recipient_id = %(recipient)s),
  ARRAY(SELECT seq FROM inbox_items WHERE tenant_id = %(tenant)s AND recipient_id = %(recipient)s
        AND seq <= COALESCE(%(cursor)s::bigint, seq)
        AND created_at > now() - make_interval(secs => %(lookback)s) ORDER BY seq DESC LIMIT %(limit)s)"""
UNREAD = f"""SELECT count(*) {FROM} AND ({READ_NOW}) IS NULL AND ({ARCHIVED_NOW}) IS NULL"""
WITHDRAWN = """SELECT i.seq, i.notification_id FROM inbox_items i JOIN inbox_states s
  ON s.notification_id = i.notification_id AND s.tenant_id = i.tenant_id AND s.recipient_id = i.recipient_id
WHERE i.tenant_id = %(tenant)s AND i.recipient_id = %(recipient)s AND i.seq = ANY(%(seqs)s)
  AND s.withdrawn_at IS NOT NULL"""
NOT_YET = {"seen": "s.seen_at IS NULL", "read": f"({READ_NOW}) IS NULL", "archived": "TRUE"}
BULK = {
    action: f"""SELECT i.notification_id, i.delivery_id, i.seq {FROM} AND ({ARCHIVED_NOW}) IS NULL
  AND {condition} AND (%(before)s::bigint IS NULL OR i.seq < %(before)s)
ORDER BY i.seq DESC LIMIT %(limit)s"""
    for action, condition in NOT_YET.items()
}
DELIVERY = f"""SELECT i.delivery_id {FROM} AND i.notification_id = %(nid)s ORDER BY i.seq LIMIT 1"""
"""The item a recipient marks: one the feed shows (not withdrawn, not expired), so marking one it hides
is a 404, not an engagement that statistics, escalations and destinations would count."""


def doorbell(prefix: str, tenant: str, recipient: str) -> str:
    return f"{prefix}tidings:inbox:{tenant}/{recipient}"


def doorbell_pattern(prefix: str) -> str:
    return f"{prefix}tidings:inbox:*"


def item(row: tuple[Any, ...]) -> dict[str, Any]:
    seq, nid, did, type_, category, priority, title, body, data_json, created, seen, read, archived = row

    def when(t: datetime | None) -> str | None:
        return t.isoformat() if t else None

    return {
        "cursor": seq,
        "id": str(nid),
        "delivery_id": str(did) if isinstance(did, UUID) else did,
        "type": type_,
        "category": category,
        "priority": priority,
        "title": title,
        "body": body,
        "data": json.loads(data_json) if data_json else None,
        "created_at": when(created),
        "seen_at": when(seen),
        "read_at": when(read),
        "archived_at": when(archived),
    }
