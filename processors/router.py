"""Consumes notifications.requested, .recipients, .feedback and .catalog; produces delivery commands,
scheduled commands and outcomes, exactly once.

One Kafka transaction per batch holds the commands, the outcomes, the dead letters and the changelog
writes of the router's two state stores: `recipients` (each recipient's folded contacts, preferences,
devices and suppressions) and `seen` (notification ids, 7 days, for dedupe). The catalog is a global
table: every router process reads the whole compacted topic and follows it.

Critical and high-priority commands go to the channel's `.urgent` lane. A cancellation of a request
already planned is forwarded to `notifications.scheduled`, where the scheduler drops its deferred
commands; one that arrives first makes the request SKIPPED (`cancelled`). A record that cannot be decoded,
validated or planned is dead-lettered, with a `REJECTED` outcome when its notification id is readable.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from datetime import datetime, timedelta
from uuid import UUID

from processors.plan import Catalog, plan
from processors.recipients import RecipientState, fold
from tidings.codec import Codec, default_codec
from tidings.config import Settings
from tidings.errors import CodecError, InvalidEvent
from tidings.events import (
    DeliveryOutcome,
    Event,
    NotificationCancelled,
    NotificationRequested,
    NotificationTypePublished,
    OutcomeStatus,
    utcnow,
)
from tidings.ids import outcome_id
from tidings.kafka import Incoming, Output, TopicFollower, TransactionalLoop
from tidings.state import Store
from tidings.topics import names
from tidings.tracing import TRACEPARENT, child_traceparent

log = logging.getLogger(__name__)
GROUP = "tidings.router"
DEDUPE_TTL = timedelta(days=7)
URGENT = frozenset({"critical", "high"})


class Router:
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
        self.recipients: Store[RecipientState] = Store(
            self.names.changelog("router", "recipients"),
            encode=lambda s: s.model_dump_json().encode(),
            decode=RecipientState.model_validate_json,
        )
        self.seen: Store[str] = Store(
            self.names.changelog("router", "seen"), encode=str.encode, decode=bytes.decode, ttl=DEDUPE_TTL
        )
        self.follower = TopicFollower(settings, self.names.catalog)
        self.inputs = [self.names.requested, self.names.recipients, self.names.feedback]
        slot = instance or f"{socket.gethostname()}-0"
        self.loop = TransactionalLoop(
            settings,
            group_id=group_id,
            topics=self.inputs,
            handle=self.handle,
            on_poison=self.on_poison,
            transactional_id=f"{group_id}-{slot}",
            static_membership=instance is not None,
            stores=[self.recipients, self.seen],
            align_max_idle=1.0,
            align_first=[self.names.recipients, self.names.feedback],
            before_batch=self.refresh_catalog,
        )

    def refresh_catalog(self) -> None:
        for record in self.follower.poll():
            self._apply_catalog(record)

    def _apply_catalog(self, record: Incoming) -> None:
        try:
            event = record.decode(self.codec)
        except (CodecError, InvalidEvent) as exc:
            log.warning("ignoring undecodable catalog record at offset %d: %s", record.offset, exc)
            return
        if isinstance(event, NotificationTypePublished):
            self.catalog.apply(event)

    def run(self, *, idle_exit_after: float | None = None) -> None:
        for record in self.follower.catch_up():
            self._apply_catalog(record)
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
        if record.topic != self.names.requested:
            if not getattr(event, "recipient_id", None):
                return []
            self.recipients.put(
                record.partition, key, fold(self.recipients.get(record.partition, key), event)
            )
            return []
        trace = child_traceparent(record.header(TRACEPARENT)).encode()
        if isinstance(event, NotificationCancelled):
            return self._cancel(record, event, trace)
        if not isinstance(event, NotificationRequested):
            raise InvalidEvent(f"{type(event).__name__} does not belong on {record.topic}")
        seen_key = f"{event.tenant_id}/{event.notification_id}"
        previous = self.seen.get(record.partition, seen_key)
        if previous is not None:
            return [
                self._outcome(
                    event.tenant_id,
                    event.notification_id,
                    event.recipient_id,
                    "SKIPPED",
                    "duplicate" if previous == "requested" else "cancelled",
                    trace,
                )
            ]
        result = plan(event, self.recipients.get(record.partition, key), self.catalog, self.clock())
        self.seen.put(record.partition, seen_key, "requested")
        outputs = [
            self._event(self.names.delivery(c.channel, urgent=c.priority in URGENT), c, trace)
            for c in result.commands
        ]
        outputs += [self._event(self.names.scheduled, c, trace) for c in result.deferred]
        outputs += [self._event(self.names.outcomes, o, trace) for o in result.outcomes]
        return outputs

    def _cancel(self, record: Incoming, event: NotificationCancelled, trace: bytes) -> list[Output]:
        seen_key = f"{event.tenant_id}/{event.notification_id}"
        already = self.seen.get(record.partition, seen_key)
        self.seen.put(record.partition, seen_key, "cancelled")
        if already == "requested":
            return [self._event(self.names.scheduled, event, trace)]
        return [
            self._outcome(
                event.tenant_id,
                event.notification_id,
                event.recipient_id,
                "CANCELLED",
                event.reason or "cancelled",
                trace,
            )
        ]

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
        return [self._outcome(tenant or "-", nid, recipient, "REJECTED", reason, trace, detail=detail)]

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
        outcome = DeliveryOutcome(
            event_id=outcome_id(nid, status, None, None, reason),
            tenant_id=tenant if "/" not in tenant else "-",
            correlation_id=str(nid),
            notification_id=nid,
            recipient_id=recipient,
            status=status,
            reason=reason,
            detail=detail,
        )
        return self._event(self.names.outcomes, outcome, trace)

    def _event(self, topic: str, event: Event, trace: bytes) -> Output:
        return Output.event(topic, event, traceparent=trace, codec=self.codec)
