"""Consumes notifications.engagement and the cancellations on notifications.requested; produces the
inbox_states table (seen, read, archived and withdrawn per notification).

The first time of each wins, so duplicated and reordered events leave the same row. Reading implies
seeing; a push opened or a link clicked counts as read, so the inbox item of a notification the
recipient opened on their phone stops counting as unread.

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
    InboxItemRead,
    InboxItemSeen,
    NotificationCancelled,
    NotificationClicked,
    NotificationOpened,
)

UPSERT = """
INSERT INTO inbox_states AS s (notification_id, tenant_id, recipient_id, seen_at, read_at, archived_at,
                               withdrawn_at)
VALUES (%(nid)s, %(tenant)s, %(recipient)s, %(seen)s, %(read)s, %(archived)s, %(withdrawn)s)
ON CONFLICT (tenant_id, recipient_id, notification_id) DO UPDATE SET
    seen_at = LEAST(s.seen_at, EXCLUDED.seen_at),
    read_at = LEAST(s.read_at, EXCLUDED.read_at),
    archived_at = LEAST(s.archived_at, EXCLUDED.archived_at),
    withdrawn_at = LEAST(s.withdrawn_at, EXCLUDED.withdrawn_at)
"""
READ = (InboxItemRead, NotificationOpened, NotificationClicked)


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
                "seen": e.occurred_at if not isinstance(e, NotificationCancelled) else None,
                "read": e.occurred_at if isinstance(e, READ) else None,
                "archived": e.occurred_at if isinstance(e, InboxItemArchived) else None,
                "withdrawn": e.occurred_at if isinstance(e, NotificationCancelled) else None,
            }
            for e in events
            if isinstance(e, (InboxItemSeen, InboxItemArchived, NotificationCancelled, *READ))
        ]
        if rows:
            cur.executemany(UPSERT, rows)
