"""Consumes notifications.engagement; produces the inbox_states table (seen, read, archived per notification).

The first time of each wins, so duplicated and reordered events leave the same row. Reading implies
seeing; a push opened or a link clicked counts as read, so the inbox item of a notification the
recipient opened on their phone stops counting as unread.
"""

from __future__ import annotations

from projections.base import Cursor, Projection
from tidings.events import (
    Event,
    InboxItemArchived,
    InboxItemRead,
    InboxItemSeen,
    NotificationClicked,
    NotificationOpened,
)

UPSERT = """
INSERT INTO inbox_states AS s (notification_id, tenant_id, recipient_id, seen_at, read_at, archived_at)
VALUES (%(nid)s, %(tenant)s, %(recipient)s, %(seen)s, %(read)s, %(archived)s)
ON CONFLICT (notification_id) DO UPDATE SET
    seen_at = LEAST(s.seen_at, EXCLUDED.seen_at),
    read_at = LEAST(s.read_at, EXCLUDED.read_at),
    archived_at = LEAST(s.archived_at, EXCLUDED.archived_at)
"""
READ = (InboxItemRead, NotificationOpened, NotificationClicked)


class Inbox(Projection):
    name = "inbox"
    tables = ("inbox_states",)
    sources = ("engagement",)

    def apply(self, cur: Cursor, events: list[Event]) -> None:
        rows = [
            {
                "nid": e.notification_id,
                "tenant": e.tenant_id,
                "recipient": e.recipient_id,
                "seen": e.occurred_at,
                "read": e.occurred_at if isinstance(e, READ) else None,
                "archived": e.occurred_at if isinstance(e, InboxItemArchived) else None,
            }
            for e in events
            if isinstance(e, (InboxItemSeen, InboxItemArchived, *READ))
        ]
        if rows:
            cur.executemany(UPSERT, rows)
