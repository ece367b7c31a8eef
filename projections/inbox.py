"""Consumes notifications.engagement and the cancellations on notifications.requested; produces the
inbox_states table (seen, read, archived and withdrawn per notification).

The first time of each wins, so duplicated and reordered events leave the same row. Reading implies
seeing; a push opened or a link clicked counts as read, so the inbox item of a notification the
recipient opened on their phone stops counting as unread.

A recipient can undo a read (InboxItemMarkedUnread) or an archive (InboxItemUnarchived). The row keeps
the last time of each of the four as well, and whichever of a read and an unread (an archive and an
unarchive) happened later is the item's state now (`gateways.inapp._feed`; an unread in the same
millisecond as a read wins). Both folds take the latest time, so they too ignore duplicates and order.
`read_at` and `archived_at` stay the first times: statistics count what was ever read. An undo is not
a sighting: it leaves `seen_at` alone. The feed also reads `read_at` and `archived_at` where the last
times are older or missing (folded by a projection of the previous release after the migration).

A cancellation withdraws the notification's inbox item: the feed and the unread count leave it out.
In-app is the one channel where a cancel can still take back what was already delivered (an email or
a push cannot be recalled), and a sender cancelling "your order shipped" wants it gone wherever it can
be. Requests on the same topic are skipped by their schema name, without decoding them.
"""

from __future__ import annotations

from projections.base import Cursor, Projection
from tidings.codec import default_codec
from tidings.events import (
    Event,
    InboxItemArchived,
    InboxItemMarkedUnread,
    InboxItemRead,
    InboxItemSeen,
    InboxItemUnarchived,
    NotificationCancelled,
    NotificationClicked,
    NotificationOpened,
)

UPSERT = """
INSERT INTO inbox_states AS s (notification_id, tenant_id, recipient_id, seen_at, read_at, archived_at,
                               withdrawn_at, last_read_at, unread_at, last_archived_at, unarchived_at)
VALUES (%(nid)s, %(tenant)s, %(recipient)s, %(seen)s, %(read)s, %(archived)s, %(withdrawn)s,
        %(read)s, %(unread)s, %(archived)s, %(unarchived)s)
ON CONFLICT (tenant_id, recipient_id, notification_id) DO UPDATE SET
    seen_at = LEAST(s.seen_at, EXCLUDED.seen_at),
    read_at = LEAST(s.read_at, EXCLUDED.read_at),
    archived_at = LEAST(s.archived_at, EXCLUDED.archived_at),
    withdrawn_at = LEAST(s.withdrawn_at, EXCLUDED.withdrawn_at),
    last_read_at = GREATEST(s.last_read_at, EXCLUDED.last_read_at),
    unread_at = GREATEST(s.unread_at, EXCLUDED.unread_at),
    last_archived_at = GREATEST(s.last_archived_at, EXCLUDED.last_archived_at),
    unarchived_at = GREATEST(s.unarchived_at, EXCLUDED.unarchived_at)
"""
READ = (InboxItemRead, NotificationOpened, NotificationClicked)
NOT_SEEING = (NotificationCancelled, InboxItemMarkedUnread, InboxItemUnarchived)
FOLDED = (
    InboxItemSeen,
    InboxItemArchived,
    InboxItemMarkedUnread,
    InboxItemUnarchived,
    NotificationCancelled,
    *READ,
)


class Inbox(Projection):
    name = "inbox"
    tables = ("inbox_states",)
    sources = ("engagement", "requested")

    def decode(self, value: bytes | None) -> Event | None:
        if value is not None and default_codec().writer_of(value).name == "NotificationRequested":
            return None
        event: Event = super().decode(value)
        return event

    def apply(self, cur: Cursor, events: list[Event | None]) -> None:
        rows = [
            {
                "nid": e.notification_id,
                "tenant": e.tenant_id,
                "recipient": e.recipient_id,
                "seen": e.occurred_at if not isinstance(e, NOT_SEEING) else None,
                "read": e.occurred_at if isinstance(e, READ) else None,
                "archived": e.occurred_at if isinstance(e, InboxItemArchived) else None,
                "withdrawn": e.occurred_at if isinstance(e, NotificationCancelled) else None,
                "unread": e.occurred_at if isinstance(e, InboxItemMarkedUnread) else None,
                "unarchived": e.occurred_at if isinstance(e, InboxItemUnarchived) else None,
            }
            for e in events
            if isinstance(e, FOLDED)
        ]
        if rows:
            cur.executemany(UPSERT, rows)
