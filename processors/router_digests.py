"""Consumes the requests the router digests, cancellations of them and its punctuations; produces
digest requests and their items' outcomes. The digest half of `processors.router.Router`.

The open buckets are the `digests` store, their window ends the `digest_due` store (keys sorted by due
time, `due_digests` in memory); `processors.digest` holds the pure rules.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from uuid import UUID

from processors import digest
from processors.plan import Catalog, expiry
from processors.recipients import RecipientState
from tidings.codec import Codec
from tidings.errors import InvalidEvent, UnreadableState
from tidings.events import Channel, DeliveryOutcome, Event, NotificationCancelled, NotificationRequested
from tidings.kafka import Output, TransactionalLoop
from tidings.kafka.records import REQUESTED_AT
from tidings.state import DueKeys, Store
from tidings.topics import Names

log = logging.getLogger(__name__)
DEDUPE_TTL = timedelta(days=7)
MAX_DIGESTS_PER_TICK = 1_000
MARK_MARGIN = timedelta(days=1)
"""A digested or deferred request is remembered until a day after its digest or its latest deferred
command is due, however far ahead: a cancellation finds a digest item only through that mark, and one
that expired first (a 14-day window, a weekly one across a DST change, a lagging router) left the
cancelled item in the digest; a request scheduled a month ahead, delivered again after 7 days (an
outbox retry, a DLQ replay), was planned again and its new timer fired after all. A cancellation
keeps its request's mark's time left, for the same reason."""


class Digests:
    """Mixed into the Router, whose stores, catalog and loop these methods use."""

    names: Names
    codec: Codec
    clock: Callable[[], datetime]
    catalog: Catalog
    loop: TransactionalLoop
    seen: Store[str]
    digests: Store[digest.Bucket]
    digest_due: Store[str]
    due_digests: DueKeys
    more_due: bool
    digest_turn: int = 0

    def _event(self, topic: str, event: Event, trace: bytes) -> Output:
        raise NotImplementedError

    def _erased_item(self, bucket: digest.Bucket, notification_id: UUID, channel: Channel) -> DeliveryOutcome:
        return digest.item_outcome(
            bucket, notification_id, channel, "CANCELLED", "erased", "recipient erased", self.clock()
        )

    def _collect(
        self,
        partition: int,
        request: NotificationRequested,
        state: RecipientState | None,
        channels: list[Channel],
        now: datetime,
        requested_ms: int | None = None,
        deferred_until: datetime | None = None,
    ) -> list[Output]:
        """Put a request into its open digest, closing the digest first when it has no room left. Its
        seen mark lasts past the digest's close and past `deferred_until`, when its other channels'
        commands wait until then (an escalation): a replay after the mark went planned them again."""
        t = self.catalog.get(request.tenant_id, request.notification_type)
        rule = self.catalog.rules(t).digest if t else None
        assert t is not None and rule is not None, "plan() digests only types with a digest rule"
        state = state or RecipientState()
        due = digest.window_end(rule, state.digest.get(t.category), state.timezone, now)
        key = digest.bucket_key(request.tenant_id, request.recipient_id, request.notification_type)
        current = self.digests.get(partition, key)
        bucket, full = digest.join(current, request, channels, due, now, requested_ms, expiry(request, t))
        outputs = self._closed(partition, full, now) if full else []
        self.digests.put(partition, key, bucket)
        self.seen.put(
            partition,
            f"{request.tenant_id}/{request.notification_id}",
            f"digest {request.notification_type}",
            ttl=max(DEDUPE_TTL, max(bucket.due, deferred_until or now) - now + MARK_MARGIN),
        )
        if current is None or full is not None:
            self.digest_due.put(partition, bucket.due_key, key)
            self.due_digests.add(partition, bucket.due_key)
        outcomes = digest.deferred(bucket, request, channels, now)
        return outputs + [Output.event(self.names.outcomes, o, codec=self.codec) for o in outcomes]

    def _uncollect(
        self, partition: int, event: NotificationCancelled, notification_type: str, trace: bytes
    ) -> list[Output]:
        key, bucket = digest.found_bucket(
            self.digests.get, partition, event.tenant_id, event.recipient_id, notification_type
        )
        joined = digest.channels_of(bucket, event.notification_id) if bucket is not None else []
        if bucket is None or not joined:
            return []
        rest = digest.without(bucket, event.notification_id)
        if rest is None:
            self.digests.delete(partition, key)
            self.digest_due.delete(partition, bucket.due_key_under(key))
        else:
            self.digests.put(partition, key, rest)
        reason, now = event.reason or "cancelled", self.clock()
        return [
            self._event(
                self.names.outcomes,
                digest.item_outcome(
                    bucket, event.notification_id, c, "CANCELLED", reason, "left its digest", now
                ),
                trace,
            )
            for c in joined
        ]

    def close_due_digests(self) -> list[Output]:
        """At most MAX_DIGESTS_PER_TICK buckets per transaction; while more may be due the loop
        punctuates again after every poll (`eager`). Every daily digest of a zone falls due at 09:00:
        tens of thousands in one transaction outlasted the transaction timeout, and its retry, the same
        transaction, failed the same way, so no digest of the partition went out again. Each tick starts
        at the next partition, as the scheduler's do: starting at the lowest, a burst of due digests
        there (everyone's daily digest at 09:00) held back every other partition's until it was done."""
        now = self.clock()
        now_ms = int(now.timestamp() * 1000)
        outputs: list[Output] = []
        room, self.more_due = MAX_DIGESTS_PER_TICK, False
        partitions = self.digest_due.partitions()
        self.digest_turn = (self.digest_turn + 1) % max(1, len(partitions))
        for partition in partitions[self.digest_turn :] + partitions[: self.digest_turn]:
            inputs = (self.names.requested, self.names.recipients)
            if not all(self.loop.caught_up(t, partition) for t in inputs):
                continue
            if room == 0:
                self.more_due = True
                break
            taken = self.due_digests.take(partition, now_ms, limit=room)
            room -= len(taken)
            self.more_due = self.more_due or room == 0
            for due_key in taken:
                key = self.digest_due.get(partition, due_key)
                try:
                    bucket = self.digests.get(partition, key) if key else None
                except UnreadableState as exc:
                    log.error("a due digest cannot be read by this release, dropped: %s", exc)
                    self.digests.delete(partition, key or "")
                    bucket = None
                if key and bucket is not None and bucket.due_key_under(key) == due_key:
                    self.digests.delete(partition, key)
                    self.digest_due.delete(partition, due_key)
                    outputs += self._closed(partition, bucket, now)
                else:
                    self.digest_due.delete(partition, due_key)
        return outputs

    def _closed(self, partition: int, bucket: digest.Bucket, now: datetime) -> list[Output]:
        """The digest requests and item outcomes of a closed bucket; drops its due entry. A bucket no
        digest can be made of (data an earlier release let in) has its items REJECTED: raising here,
        in the punctuation, would stop the router on every restart."""
        self.digest_due.delete(partition, bucket.due_key)
        try:
            requests, outcomes = digest.close(bucket, now, self._digest_templates(bucket))
        except (ValueError, InvalidEvent) as exc:
            log.error("digest %s cannot be made, rejecting its items: %s", bucket.digest_id, exc)
            detail = f"digest {bucket.digest_id} cannot be made: {type(exc).__name__}: {exc}"[:500]
            rejected = [
                digest.item_outcome(bucket, i.notification_id, c, "REJECTED", "invalid", detail, now)
                for i in bucket.items
                for c in bucket.channels_of(i)
            ]
            return [Output.event(self.names.outcomes, o, codec=self.codec) for o in rejected]
        outputs = []
        for request, made in requests:
            digested = Output.event(self.names.requested, request, codec=self.codec)
            if made is not None:
                digested.headers.append((REQUESTED_AT, str(made).encode()))
            outputs.append(digested)
        return outputs + [Output.event(self.names.outcomes, o, codec=self.codec) for o in outcomes]

    def _digest_templates(self, bucket: digest.Bucket) -> frozenset[str]:
        """The channels the bucket's type has digest templates for now (none if it has no digest)."""
        t = self.catalog.get(bucket.tenant_id, bucket.notification_type)
        try:
            rule = self.catalog.rules(t).digest if t is not None else None
        except InvalidEvent:
            rule = None
        return frozenset(rule.templates) if rule is not None else frozenset()
