"""Consumes the requests the router chose to digest; produces one digest request per window and the
items' outcomes. Pure: the router keeps the buckets in a state store and closes them on its timer.

A bucket collects one recipient's requests of one type for the channels that have a digest template.
The first request opens it; the window ends after the type's `digest.window`, or on the recipient's
choice for the category: `hourly` (an hour after the first request), `daily` (the next 09:00 in the
recipient's time zone), `weekly` (the next Monday 09:00); `off` sends every request at once. A bucket
also closes early, when the next request arrives, once it holds `MAX_ITEMS` requests or has no room
for that request's data in `MAX_BYTES`, so a digest stays one bounded record; a full bucket nothing
joins goes out at its window's end. Sizes are counted as the digest writes the data (compact JSON,
ASCII with escapes), not as the requests' text: a character outside ASCII takes up to 12 bytes there.
A bucket a previous release filled past the request limit digests what fits; each item left over is
REJECTED.

Closing produces a `NotificationRequested` with `digest_of` (the items' ids) and the data
`{"items": [...each request's data], "count": n}` on `notifications.requested`, keyed like its items:
the router plans it like any request (preferences, suppressions and quiet hours as they are then)
with the digest templates. Each item gets a QUEUED `digested` outcome naming the digest; an item that
expired while it waited is EXPIRED instead.
"""

from __future__ import annotations

import json
from datetime import datetime, time, timedelta
from typing import Any
from uuid import UUID, uuid5

from pydantic import BaseModel, ConfigDict

from processors.preferences import zone
from tidings.catalog import DigestRule
from tidings.events import MAX_DATA_BYTES, Channel, DeliveryOutcome, NotificationRequested, OutcomeStatus

MAX_ITEMS = 100
MAX_BYTES = 128 * 1024
SEND_AT = time(9, 0)
DIGEST_NAMESPACE = UUID("6f1c9a52-3a57-5d4e-9a0e-2b7c5d1e8f40")


class Item(BaseModel):
    model_config = ConfigDict(frozen=True)
    notification_id: UUID
    data: dict[str, Any]
    size: int
    expires_at: datetime | None = None
    requested_ms: int | None = None
    """The request's log time (epoch ms)."""
    channels: list[Channel] | None = None
    """The channels the request joined the digest on; None (written by an earlier release): all of
    its bucket's."""


class Bucket(BaseModel):
    model_config = ConfigDict(frozen=True)
    tenant_id: str
    recipient_id: str
    notification_type: str
    channels: list[Channel]
    opened_at: datetime
    due: datetime
    items: list[Item] = []
    size: int = 0

    @property
    def key(self) -> str:
        return bucket_key(self.tenant_id, self.recipient_id, self.notification_type)

    @property
    def due_key(self) -> str:
        return self.due_key_under(self.key)

    def due_key_under(self, key: str) -> str:
        """The due entry of this bucket stored under `key` (an earlier release's form of its key)."""
        return f"{int(self.due.timestamp() * 1000):013d}/{key}"

    @property
    def digest_id(self) -> UUID:
        """Named by the first item too: a full bucket closes and the next opens at the same `now`, and
        two large requests in one millisecond gave both the same id; the router dropped the second
        digest as a duplicate after its items had been told QUEUED."""
        opened = int(self.opened_at.timestamp() * 1000)
        first = self.items[0].notification_id if self.items else ""
        return uuid5(DIGEST_NAMESPACE, f"{self.key}/{opened}/{first}")

    def channels_of(self, item: Item) -> list[Channel]:
        """The channels an item joined on (all of the bucket's for an item an earlier release wrote)."""
        return item.channels or self.channels


def bucket_key(tenant: str, recipient: str, notification_type: str) -> str:
    """`tenant/recipient/type`, or NUL-separated when the recipient or type holds a `/` (ids hold no
    control characters): recipient `team/2` with type `x` and recipient `team` with type `2/x` shared
    one bucket, and one recipient's digest carried the other's items. Ids without a `/` keep the key
    they had, so the buckets open at an upgrade still close."""
    if "/" in recipient or "/" in notification_type:
        return f"{tenant}\0{recipient}\0{notification_type}"
    return f"{tenant}/{recipient}/{notification_type}"


def found_bucket(
    get: Any, partition: int, tenant: str, recipient: str, notification_type: str
) -> tuple[str, Bucket | None]:
    """The key and bucket `get(partition, key)` finds: under the key, or under the one an earlier release
    gave a bucket of ids holding a `/`, open at an upgrade (a cancellation or an erasure missed it)."""
    keys = bucket_keys(tenant, recipient, notification_type)
    for k in keys:
        if (bucket := get(partition, k)) is not None:
            return k, bucket
    return keys[0], None


def bucket_keys(tenant: str, recipient: str, notification_type: str) -> list[str]:
    """The keys a bucket may be under: its own, then the one an earlier release used."""
    legacy = f"{tenant}/{recipient}/{notification_type}"
    return list(dict.fromkeys((bucket_key(tenant, recipient, notification_type), legacy)))


def window_end(rule: DigestRule, choice: str | None, timezone: str | None, opened: datetime) -> datetime:
    """When a window opened at `opened` closes, by the recipient's choice or else the type's window."""
    if choice == "hourly":
        return opened + timedelta(hours=1)
    if choice in ("daily", "weekly"):
        tz = zone(timezone)
        local = opened.astimezone(tz)
        day = local.date() if local.time() < SEND_AT else local.date() + timedelta(days=1)
        if choice == "weekly":
            day += timedelta(days=(7 - day.weekday()) % 7)
        return datetime.combine(day, SEND_AT, tzinfo=tz).astimezone(opened.tzinfo)
    return opened + timedelta(seconds=rule.window_seconds)


def join(
    bucket: Bucket | None,
    request: NotificationRequested,
    channels: list[Channel],
    due: datetime,
    now: datetime,
    requested_ms: int | None = None,
    expires_at: datetime | None = None,
) -> tuple[Bucket, Bucket | None]:
    """Add a request to its open bucket, or open one; returns the open bucket and, when the old one
    had no room left, that one to close now. `expires_at` is the request's expiry as planning saw it
    (its type's `expires_after` included); the request's own field when not given. A request already
    in the bucket is not added again: its dedupe mark lasts a day past the bucket's due time, and a
    router that lagged longer took a retried request twice."""
    if bucket is not None and any(i.notification_id == request.notification_id for i in bucket.items):
        return bucket, None
    size = len(_json(request.data))
    closed = None
    if bucket is not None and (len(bucket.items) >= MAX_ITEMS or bucket.size + size > MAX_BYTES):
        closed, bucket = bucket, None
    if bucket is None:
        bucket = Bucket(
            tenant_id=request.tenant_id,
            recipient_id=request.recipient_id,
            notification_type=request.notification_type,
            channels=channels,
            opened_at=now,
            due=due,
        )
    item = Item(
        notification_id=request.notification_id,
        data=request.data,
        size=size,
        expires_at=expires_at or request.expires_at,
        requested_ms=requested_ms,
        channels=channels,
    )
    merged = bucket.channels + [c for c in channels if c not in bucket.channels]
    updated = bucket.model_copy(
        update={"items": [*bucket.items, item], "size": bucket.size + size, "channels": merged}
    )
    return updated, closed


def deferred(
    bucket: Bucket, request: NotificationRequested, channels: list[Channel], now: datetime
) -> list[DeliveryOutcome]:
    """The DEFERRED outcomes of a request that joined a bucket."""
    detail = f"in the {request.notification_type} digest due {bucket.due.isoformat()}"
    return [
        item_outcome(bucket, request.notification_id, c, "DEFERRED", "digest", detail, now) for c in channels
    ]


def without(bucket: Bucket, notification_id: UUID) -> Bucket | None:
    """The bucket minus a cancelled request (None if it held nothing else)."""
    items = [i for i in bucket.items if i.notification_id != notification_id]
    if not items:
        return None
    return bucket.model_copy(update={"items": items, "size": sum(i.size for i in items)})


def channels_of(bucket: Bucket, notification_id: UUID) -> list[Channel]:
    """The channels a request in the bucket joined on (none if it is not in the bucket)."""
    for i in bucket.items:
        if i.notification_id == notification_id:
            return bucket.channels_of(i)
    return []


def requested_ms(items: list[Item]) -> int | None:
    """When a digest counts as requested: its latest item's log time. The digest record is written when
    the bucket closes, maybe after the recipient's erasure, but its content is older."""
    return max((i.requested_ms for i in items if i.requested_ms is not None), default=None)


def expiry(items: list[Item]) -> datetime | None:
    """A digest is worth sending until its last item expires, and for ever if one never does: a digest
    that quiet hours held past every item's expiry was sent hours late (a code kept 30 minutes, sent in
    the morning)."""
    times = [i.expires_at for i in items]
    return None if any(t is None for t in times) else max(t for t in times if t is not None)


def close(
    bucket: Bucket, now: datetime, templated: frozenset[str] | None = None
) -> tuple[list[tuple[NotificationRequested, int | None]], list[DeliveryOutcome]]:
    """The digest requests of a bucket, each with when it counts as requested, and its items' outcomes.

    One digest, with the bucket's id, when every item joined on the same channels. Items that joined
    on different channels (a channel's condition skipped one, a request named its channels) make one
    digest per group of channels sharing the same items, so a channel's digest holds only what was
    meant for it; each has an id derived from the bucket's and its channels.

    `templated`: the channels the type's digest has templates for now (None: all). A version published
    while the bucket was open without the digest, or without a channel's digest template, leaves those
    items SKIPPED `no_template` on the channel: the digest request was planned with the new version and
    refused, after its items had been told QUEUED."""
    live = [i for i in bucket.items if i.expires_at is None or i.expires_at > now]
    outcomes = [
        item_outcome(bucket, i.notification_id, c, "EXPIRED", "expired", "expired while in a digest", now)
        for i in bucket.items
        if i not in live
        for c in bucket.channels_of(i)
    ]
    dropped = "the type's digest has no template for this channel any more"
    outcomes += [
        item_outcome(bucket, i.notification_id, c, "SKIPPED", "no_template", dropped, now)
        for i in live
        for c in bucket.channels_of(i)
        if templated is not None and c not in templated
    ]
    groups: dict[tuple[UUID, ...], list[Channel]] = {}
    for c in bucket.channels if templated is None else [c for c in bucket.channels if c in templated]:
        members = tuple(i.notification_id for i in live if c in bucket.channels_of(i))
        if members:
            groups.setdefault(members, []).append(c)
    requests = []
    for members, channels in groups.items():
        digest_id = bucket.digest_id if len(groups) == 1 else uuid5(bucket.digest_id, "/".join(channels))
        items = [i for i in live if i.notification_id in members]
        fits, room = [], MAX_DATA_BYTES - len(_json({"items": [], "count": len(items)}))
        for i in items:
            room -= len(_json(i.data)) + 1
            if room < 0:
                break
            fits.append(i)
        detail = f"no room left in digest {digest_id}"
        outcomes += [
            item_outcome(bucket, i.notification_id, c, "REJECTED", "invalid", detail, now)
            for i in items[len(fits) :]
            for c in channels
        ]
        if not fits:
            continue
        request = NotificationRequested(
            event_id=uuid5(digest_id, "request"),
            occurred_at=now,
            tenant_id=bucket.tenant_id,
            correlation_id=str(digest_id),
            notification_id=digest_id,
            recipient_id=bucket.recipient_id,
            notification_type=bucket.notification_type,
            data_json=_json({"items": [i.data for i in fits], "count": len(fits)}),
            channels=channels,
            digest_of=[i.notification_id for i in fits],
            expires_at=expiry(fits),
            source="tidings.digest",
        )
        requests.append((request, requested_ms(fits)))
        detail = f"in digest {digest_id}"
        outcomes += [
            item_outcome(bucket, i.notification_id, c, "QUEUED", "digested", detail, now)
            for i in fits
            for c in channels
        ]
    return requests, outcomes


def _json(data: Any) -> str:
    return json.dumps(data, separators=(",", ":"), allow_nan=False)


def item_outcome(
    bucket: Bucket,
    notification_id: UUID,
    channel: Channel,
    status: OutcomeStatus,
    reason: str,
    detail: str,
    now: datetime,
) -> DeliveryOutcome:
    return DeliveryOutcome.decided(
        notification_id,
        status,
        reason,
        channel=channel,
        occurred_at=now,
        tenant_id=bucket.tenant_id,
        recipient_id=bucket.recipient_id,
        detail=detail,
    )
