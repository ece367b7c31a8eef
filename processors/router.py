"""Consumes notifications.requested, .recipients, .feedback and .catalog; produces delivery commands,
scheduled commands and outcomes, exactly once.

One Kafka transaction per batch holds the commands, the outcomes, the dead letters and the changelog
writes of the router's two state stores: `recipients` (each recipient's folded contacts, preferences,
devices and suppressions) and `seen` (notification ids, 7 days, for dedupe). The catalog is a global
table: every router process reads the whole compacted topic and follows it.

A type's `condition` is checked right after dedupe, then its throttle (`processors/throttle.py`): a
request failing either is SKIPPED (`condition`, `throttled`) as a whole, and only requests that meet the
condition count against the throttle; the times of the admitted ones are the `throttles` store.

Requests of a type with digest templates are collected per recipient and type in two more stores,
`digests` (the open buckets) and `digest_due` (their window ends, keys sorted by due time); a
punctuation every 200 ms closes the due ones into digest requests (`processors/digest.py`), in a
partition only while the router has read its requests and recipient events to the end, so a router
that lags meets a cancellation or an erasure of an item before it closes the item's digest.

Critical and high-priority commands go to the channel's `.urgent` lane. A cancellation of a request
already planned is forwarded to `notifications.scheduled`, where the scheduler drops its deferred
commands and removes the request from an open digest; one that arrives first makes the request
SKIPPED (`cancelled`). An erasure is forwarded there too, and to every channel's urgent lane for the
gateways. A record that cannot be decoded,
validated or planned is dead-lettered, with a `REJECTED` outcome when its notification id is readable.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from uuid import UUID

from pydantic import ValidationError

from processors import digest, throttle
from processors.plan import Catalog, gate, plan
from processors.recipients import RecipientState, fold, oversized
from processors.router_digests import DEDUPE_TTL, MARK_MARGIN, Digests
from tidings.codec import Codec, default_codec
from tidings.config import Settings
from tidings.errors import CodecError, InvalidEvent, UnreadableState
from tidings.events import (
    CHANNELS,
    DeliveryOutcome,
    Event,
    NotificationCancelled,
    NotificationRequested,
    OutcomeStatus,
    RecipientErased,
    utcnow,
)
from tidings.kafka import Incoming, Output, TopicFollower, TransactionalLoop, default_slot
from tidings.kafka.records import log_time, misplaced
from tidings.metrics import Sample
from tidings.state import DueKeys, Store
from tidings.topics import names
from tidings.tracing import TRACEPARENT, child_traceparent

log = logging.getLogger(__name__)
GROUP = "tidings.router"
URGENT = frozenset({"critical", "high"})
CANCELLED = "cancelled"
"""The dedupe mark of a cancelled request: alone, cancelled before it was seen; `cancelled after <mark>`,
after."""


class Router(Digests):
    def __init__(
        self,
        settings: Settings,
        *,
        instance: str | None = None,
        clock: Callable[[], datetime] = utcnow,
        codec: Codec | None = None,
        group_id: str | None = None,
    ) -> None:
        self.settings = settings
        self.names = names(settings)
        group_id = group_id or settings.topic_prefix + GROUP
        self.codec = codec or default_codec()
        self.clock = clock
        self.catalog = Catalog()

        def epoch() -> float:
            return self.clock().timestamp()

        self.recipients: Store[RecipientState] = Store(
            self.names.changelog("router", "recipients"),
            encode=lambda s: s.model_dump_json().encode(),
            decode=RecipientState.model_validate_json,
            clock=epoch,
        )
        self.seen: Store[str] = Store(
            self.names.changelog("router", "seen"),
            encode=str.encode,
            decode=bytes.decode,
            ttl=DEDUPE_TTL,
            clock=epoch,
        )
        self.digests: Store[digest.Bucket] = Store(
            self.names.changelog("router", "digests"),
            encode=lambda b: b.model_dump_json().encode(),
            decode=digest.Bucket.model_validate_json,
            clock=epoch,
        )
        self.digest_due: Store[str] = Store(
            self.names.changelog("router", "digest_due"), encode=str.encode, decode=bytes.decode, clock=epoch
        )
        self.due_digests = DueKeys(self.digest_due)
        self.throttles: Store[list[int]] = Store(
            self.names.changelog("router", "throttles"),
            encode=lambda t: json.dumps(t).encode(),
            decode=json.loads,
            clock=epoch,
        )
        self.throttled = 0
        self.more_due = False
        self.follower = TopicFollower(settings, self.names.catalog)
        self.inputs = [self.names.requested, self.names.recipients, self.names.feedback]
        slot = instance or default_slot()
        self.loop = TransactionalLoop(
            settings,
            group_id=group_id,
            topics=self.inputs,
            handle=self.handle,
            on_poison=self.on_poison,
            transactional_id=f"{group_id}-{slot}",
            static_membership=instance is not None,
            stores=[self.recipients, self.seen, self.digests, self.digest_due, self.throttles],
            align_max_idle=1.0,
            align_first=[self.names.recipients, self.names.feedback],
            before_batch=self.refresh_catalog,
            punctuate=self.close_due_digests,
            eager=lambda: self.more_due,
            pending=lambda: any(self.digest_due.size(p) for p in self.digest_due.partitions()),
        )

    def samples(self) -> list[Sample]:
        return [
            *self.loop.samples(),
            Sample("requests_throttled", self.throttled, help="requests skipped by their type's throttle"),
        ]

    def refresh_catalog(self) -> None:
        self.catalog.follow(self.follower.poll(), self.codec)

    def run(self, *, idle_exit_after: float | None = None) -> None:
        self.catalog.follow(self.follower.catch_up(), self.codec)
        log.info("router starting with %d notification types", len(self.catalog))
        try:
            self.loop.run(idle_exit_after=idle_exit_after)
        finally:
            self.follower.close()

    def stop(self) -> None:
        self.loop.stop()

    def handle(self, record: Incoming) -> list[Output]:
        event = record.decode(self.codec)
        key = f"{event.tenant_id}/{getattr(event, 'recipient_id', '')}"
        if getattr(event, "recipient_id", None) and (
            wrong := misplaced(record, key, self.loop.partition_counts.get(record.topic))
        ):
            raise InvalidEvent(wrong)
        if record.topic != self.names.requested:
            if not getattr(event, "recipient_id", None):
                return []
            if isinstance(event, RecipientErased):
                return self._erase(record, event, key)
            before = self.recipients.get(record.partition, key)
            folded = fold(before, event)
            if (sized := oversized(before, folded, event)) is not None:
                raise InvalidEvent(
                    f"{type(event).__name__} would make {key}'s state {sized[0]} bytes, over {sized[1]}: "
                    "remove devices, endpoints or properties first"
                )
            self.recipients.put(record.partition, key, folded)
            return []
        trace = child_traceparent(record.header(TRACEPARENT)).encode()
        if isinstance(event, NotificationCancelled):
            return self._cancel(record, event, trace)
        if not isinstance(event, NotificationRequested):
            raise InvalidEvent(f"{type(event).__name__} does not belong on {record.topic}")
        seen_key = f"{event.tenant_id}/{event.notification_id}"
        previous = self.seen.get(record.partition, seen_key)
        if previous is not None:
            again = "cancelled" if previous.startswith(CANCELLED) else "duplicate"
            return [self._skipped(event, again, trace)]
        now = self.clock()
        state = self.recipients.get(record.partition, key)
        if (why := gate(event, state, self.catalog)) is not None:
            self.seen.put(record.partition, seen_key, "skipped")
            return [self._skipped(event, "condition", trace, why)]
        if (limit := self._throttled(record.partition, event, now)) is not None:
            self.seen.put(record.partition, seen_key, "throttled")
            self.throttled += 1
            return [self._skipped(event, "throttled", trace, limit)]
        made = log_time(record)
        result = plan(event, state, self.catalog, now, gated=True, requested_at=made)
        outputs = []
        latest = max((c.not_before for c in result.deferred if c.not_before is not None), default=now)
        if result.digested:
            made_ms = int(made.timestamp() * 1000) if made else None
            outputs += self._collect(record.partition, event, state, result.digested, now, made_ms, latest)
        else:
            ttl = max(DEDUPE_TTL, latest - now + MARK_MARGIN)
            self.seen.put(record.partition, seen_key, "requested", ttl=ttl)
        outputs += [
            self._event(self.names.delivery(c.channel, urgent=c.priority in URGENT), c, trace)
            for c in result.commands
        ]
        outputs += [self._event(self.names.scheduled, c, trace) for c in result.deferred]
        outputs += [self._event(self.names.outcomes, o, trace) for o in result.outcomes]
        return outputs

    def _throttled(self, partition: int, request: NotificationRequested, now: datetime) -> str | None:
        """The rule a request is over, if its type's throttle refuses it; a request it admits is counted."""
        t = self.catalog.get(request.tenant_id, request.notification_type)
        rule = self.catalog.rules(t).throttle if t is not None and not request.digest_of else None
        if t is None or rule is None:
            return None
        key = rule.key(request.tenant_id, request.recipient_id, t)
        before = self.throttles.get(partition, key) or []
        at = throttle.due(request.occurred_at, request.scheduled_at, now)
        passed, times = throttle.admit(rule, before, at, now)
        if times != before:
            last = max(times, default=0) / 1000 - now.timestamp()
            ttl = timedelta(seconds=max(last, 0) + 2 * rule.window_seconds)
            self.throttles.put(partition, key, times, ttl=ttl)
        return None if passed else rule.describe(t)

    def _cancel(self, record: Incoming, event: NotificationCancelled, trace: bytes) -> list[Output]:
        """A cancellation of a request not seen (yet) is remembered, so the request is skipped when it
        comes, and forwarded to the scheduler all the same: the request may be one seen longer ago than
        the dedupe window, scheduled further ahead than that, whose timers only the scheduler holds.
        The mark keeps the request's mark's time left (a deferred request's lasts until a day after it
        is due), at least the dedupe window; kept 401 days for every cancellation, a broadcast withdrawn
        from a million members held a million marks for a year. A repeated cancellation (a client
        retrying its DELETE) changes nothing: the mark says whether the request had been seen, where a
        second cancellation of a request sent already reported it CANCELLED."""
        seen_key = f"{event.tenant_id}/{event.notification_id}"
        already = self.seen.get(record.partition, seen_key)
        if already in ("throttled", "skipped") or (already is not None and already.startswith(CANCELLED)):
            return []
        left = self.seen.left(record.partition, seen_key)
        mark = CANCELLED if already is None else f"{CANCELLED} after {already}"
        self.seen.put(record.partition, seen_key, mark, ttl=max(DEDUPE_TTL, left or DEDUPE_TTL))
        if already is not None:
            outputs = [self._event(self.names.scheduled, event, trace)]
            if already.startswith("digest "):
                outputs += self._uncollect(record.partition, event, already.removeprefix("digest "), trace)
            return outputs
        return [
            self._event(self.names.scheduled, event, trace),
            self._outcome(
                event.tenant_id,
                event.notification_id,
                event.recipient_id,
                "CANCELLED",
                event.reason or "cancelled",
                trace,
            ),
        ]

    def _erase(self, record: Incoming, event: RecipientErased, key: str) -> list[Output]:
        """Forget the recipient (its state becomes only the erasure's time), cancel its open digests and
        forward the erasure to the scheduler, which drops its deferred commands, and to every channel's
        urgent lane, whose gateway then cancels the commands it has not sent yet (a lane's backlog, retry
        tiers). The state's erasure time and the forwarded copies' `occurred_at` are the erasure record's
        timestamp, the clock of commands' `requested_at` and the time the recipients projection keeps (the
        producer's `occurred_at` let a bounce dated between it and a late produce, or a DLQ replay, bring
        the address back here while the projections ignored it). The digests are looked up by the
        catalog's types, not found by scanning the store, so an erasure costs the same however many
        digests are open. State this release cannot read (a newer release's) is replaced all the same:
        an erasure needs nothing of it, and dead-lettered it would leave the recipient's data and
        deferred commands in place."""
        trace = child_traceparent(record.header(TRACEPARENT)).encode()
        stamped = event.model_copy(update={"occurred_at": log_time(record) or event.occurred_at})
        try:
            before = self.recipients.get(record.partition, key)
        except UnreadableState:
            before = None
        self.recipients.put(record.partition, key, fold(before, stamped))
        outputs = [self._event(self.names.scheduled, stamped, trace)]
        outputs += [self._event(self.names.delivery(c, urgent=True), stamped, trace) for c in CHANNELS]
        for type_ in sorted(self.catalog.type_keys(event.tenant_id)):
            try:
                bucket_key, bucket = digest.found_bucket(
                    self.digests.get, record.partition, event.tenant_id, event.recipient_id, type_
                )
            except UnreadableState as exc:
                log.error("erasing %s: a digest this release cannot read is deleted unsent: %s", key, exc)
                for k in digest.bucket_keys(event.tenant_id, event.recipient_id, type_):
                    self.digests.delete(record.partition, k)
                continue
            if bucket is None:
                continue
            self.digests.delete(record.partition, bucket_key)
            self.digest_due.delete(record.partition, bucket.due_key_under(bucket_key))
            outputs += [
                self._event(self.names.outcomes, self._erased_item(bucket, i.notification_id, c), trace)
                for i in bucket.items
                for c in bucket.channels_of(i)
            ]
        return outputs

    def on_poison(self, record: Incoming, exc: BaseException) -> list[Output]:
        """A REJECTED outcome when the notification id can be read from the record."""
        if record.topic != self.names.requested or record.value is None:
            return []
        try:
            _, fields = self.codec.decode_record(record.value)
            tenant, nid = str(fields["tenant_id"]), UUID(str(fields["notification_id"]))
            recipient = str(fields.get("recipient_id") or "") or None
        except (CodecError, KeyError, ValueError, TypeError):
            return []
        reason = "invalid" if isinstance(exc, InvalidEvent | CodecError) else "error"
        detail = f"{type(exc).__name__}: {exc}"[:500]
        trace = child_traceparent(record.header(TRACEPARENT)).encode()
        for t, r in ((tenant or "-", recipient), (tenant or "-", None), ("-", None)):
            try:
                return [self._outcome(t, nid, r, "REJECTED", reason, trace, detail=detail)]
            except ValidationError:
                continue
        return []

    def _skipped(
        self, request: NotificationRequested, reason: str, trace: bytes, detail: str | None = None
    ) -> Output:
        return self._outcome(
            request.tenant_id, request.notification_id, request.recipient_id, "SKIPPED", reason, trace, detail
        )

    def _outcome(
        self,
        tenant: str,
        nid: UUID,
        recipient: str | None,
        status: OutcomeStatus,
        reason: str,
        trace: bytes,
        detail: str | None = None,
    ) -> Output:
        outcome = DeliveryOutcome.decided(
            nid,
            status,
            reason,
            tenant_id=tenant if "/" not in tenant else "-",
            recipient_id=recipient,
            detail=detail,
        )
        return self._event(self.names.outcomes, outcome, trace)

    def _event(self, topic: str, event: Event, trace: bytes) -> Output:
        return Output.event(topic, event, traceparent=trace, codec=self.codec)
