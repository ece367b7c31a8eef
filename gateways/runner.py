"""Consumes notifications.delivery.<channel> (urgent lane first) and its retry tiers; produces outcomes,
retries, feedback and dead letters. The one consume loop of every channel gateway.

Per command: dedupe on `delivery_id` in Redis (a delivery marked done is never sent again), drop it as
EXPIRED past `expires_at`, else try the channel's provider chain in order (a retriable error moves to the
next provider). Success is SENT; a permanent refusal is FAILED (with feedback when the address is dead);
when every provider failed retriably the command goes to the next retry tier, due after the tier's delay
(or the provider's Retry-After if longer), with a RETRYING outcome; after the last tier it is FAILED and
dead-lettered. A retry partition whose head is not due yet is paused until it is. Offsets are committed
only after a batch's outputs are acknowledged, so a crash re-sends at most the commands in flight, and
the Redis mark makes even those rare.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

import aiohttp
import redis.asyncio as aioredis

from gateways.base import DeliveryRejected, Provider, ProviderError, ProviderThrottled
from tidings.codec import default_codec
from tidings.config import Settings
from tidings.errors import CodecError, InvalidEvent
from tidings.events import DeliveryCommand, DeliveryOutcome, FeedbackKind, OutcomeStatus, ProviderFeedback
from tidings.ids import outcome_id
from tidings.kafka import Incoming, Output
from tidings.kafka.aio import AsyncConsumer, AsyncProducer
from tidings.kafka.records import dead_letter
from tidings.topics import names, parse_tiers, tier_seconds

log = logging.getLogger(__name__)
DUE = "tidings.due"
DONE_TTL_S = 7 * 24 * 3600
DEAD_ADDRESS: dict[str, FeedbackKind] = {
    "webhook": "endpoint_disabled",
    "push": "token_invalid",
    "email": "hard_bounce",
    "sms": "sms_stop",
}


class GatewayRunner:
    def __init__(
        self, settings: Settings, channel: str, providers: Sequence[Provider], *, concurrency: int = 32
    ) -> None:
        n = names(settings)
        self.channel, self.providers, self.names = channel, list(providers), n
        self.tiers = parse_tiers(settings.retry_tiers)
        self.urgent, self.standard = n.delivery(channel, urgent=True), n.delivery(channel)
        self.retries = [n.retry(channel, t) for t in self.tiers]
        self.group = f"{settings.topic_prefix}tidings.gateway.{channel}"
        self.consumer = AsyncConsumer(
            settings, group_id=self.group, topics=[self.urgent, self.standard, *self.retries]
        )
        self.producer = AsyncProducer(settings)
        self.redis = aioredis.Redis.from_url(settings.redis_url)
        self.limit = asyncio.Semaphore(concurrency)
        self.stopping = asyncio.Event()
        self.paused_until: dict[tuple[str, int], float] = {}
        self.counts: dict[str, int] = {}

    async def run(self, *, idle_exit_after: float | None = None) -> None:
        await self.consumer.start()
        await self.producer.start()
        last_input = time.monotonic()
        try:
            async with aiohttp.ClientSession() as session:
                self.session = session
                while not self.stopping.is_set():
                    self._resume_due()
                    fetched = await self.consumer.batch()
                    if fetched or self.paused_until or not self.consumer.assignment():
                        last_input = time.monotonic()
                    if fetched:
                        await self._process(fetched)
                    elif idle_exit_after is not None and time.monotonic() - last_input > idle_exit_after:
                        return
        finally:
            await self.producer.stop()
            await self.consumer.stop()
            await self.redis.aclose()

    def stop(self) -> None:
        self.stopping.set()

    def _resume_due(self) -> None:
        now = time.time()
        due = [tp for tp, at in self.paused_until.items() if at <= now]
        for tp in due:
            del self.paused_until[tp]
        if due:
            self.consumer.resume(due)

    async def _process(self, fetched: dict[tuple[str, int], list[Incoming]]) -> None:
        lanes = {self.urgent: 0, **{t: 1 for t in self.retries}, self.standard: 2}
        ordered = sorted(fetched.items(), key=lambda item: lanes.get(item[0][0], 3))
        results = await asyncio.gather(*(self._partition(tp, records) for tp, records in ordered))
        outputs = [out for outs, _ in results for out in outs]
        for out in outputs:
            await self.producer.send(out)
        await self.producer.flush()
        await self.consumer.commit(
            {tp: offset for (_, offset), (tp, _) in zip(results, ordered, strict=True) if offset is not None}
        )

    async def _partition(
        self, tp: tuple[str, int], records: list[Incoming]
    ) -> tuple[list[Output], int | None]:
        outputs: list[Output] = []
        next_offset = None
        for record in records:
            due = record.header(DUE)
            if due is not None and int(due) / 1000 > time.time():
                self.consumer.pause([tp])
                self.consumer.seek(tp, record.offset)
                self.paused_until[tp] = int(due) / 1000
                break
            async with self.limit:
                outputs += await self.handle(record)
            next_offset = record.offset + 1
        return outputs, next_offset

    def _count(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1

    async def handle(self, record: Incoming) -> list[Output]:
        try:
            command = record.decode(default_codec())
            if not isinstance(command, DeliveryCommand):
                raise InvalidEvent(f"{type(command).__name__} is not a DeliveryCommand")
        except (CodecError, InvalidEvent) as exc:
            self._count("dead_letters")
            return [dead_letter(record, exc, self.group, self.names.dlq)]
        done_key = f"tidings:delivery:{command.delivery_id}"
        if await self.redis.get(done_key) is not None:
            self._count("duplicates")
            return []
        if command.expires_at is not None and command.expires_at.timestamp() <= time.time():
            await self.redis.set(done_key, b"expired", ex=DONE_TTL_S)
            return [self._outcome(command, "EXPIRED", "expired")]
        failure: ProviderError | None = None
        for provider in self.providers:
            try:
                sent = await provider.send(self.session, command)
            except DeliveryRejected as exc:
                if not exc.permanent:
                    failure = exc
                    continue
                await self.redis.set(done_key, b"failed", ex=DONE_TTL_S)
                outputs = [self._outcome(command, "FAILED", exc.reason, provider=provider.label)]
                if exc.address_dead:
                    outputs.append(self._feedback(command, provider.label, exc.reason))
                return outputs
            except ProviderError as exc:
                failure = exc
                continue
            await self.redis.set(done_key, b"sent", ex=DONE_TTL_S)
            self._count("sent")
            return [
                self._outcome(
                    command,
                    "SENT",
                    None,
                    provider=provider.label,
                    provider_message_id=sent.provider_message_id,
                )
            ]
        return self._retry(record, command, failure)

    def _retry(
        self, record: Incoming, command: DeliveryCommand, failure: ProviderError | None
    ) -> list[Output]:
        detail = str(failure) if failure else "no provider"
        if command.attempt >= len(self.tiers):
            self._count("exhausted")
            return [
                self._outcome(command, "FAILED", "retries_exhausted", detail=detail),
                dead_letter(record, failure or ProviderError(detail), self.group, self.names.dlq),
            ]
        tier = self.tiers[command.attempt]
        delay = float(tier_seconds(tier))
        if isinstance(failure, ProviderThrottled) and failure.retry_after:
            delay = max(delay, failure.retry_after)
        retry = command.model_copy(update={"attempt": command.attempt + 1})
        out = Output.event(self.names.retry(self.channel, tier), retry)
        due = str(int((time.time() + delay) * 1000)).encode()
        self._count("retries")
        return [
            Output(out.topic, out.key, out.value, [*out.headers, (DUE, due)]),
            self._outcome(command, "RETRYING", tier, detail=detail),
        ]

    def _outcome(
        self, command: DeliveryCommand, status: OutcomeStatus, reason: str | None, **fields: Any
    ) -> Output:
        outcome = DeliveryOutcome(
            event_id=outcome_id(
                command.notification_id,
                status,
                command.channel,
                command.delivery_id,
                f"{reason}/{command.attempt}",
            ),
            tenant_id=command.tenant_id,
            correlation_id=str(command.notification_id),
            notification_id=command.notification_id,
            delivery_id=command.delivery_id,
            recipient_id=command.recipient_id,
            channel=command.channel,
            status=status,
            reason=reason,
            attempt=command.attempt + 1,
            template_version=command.template_version,
            **fields,
        )
        return Output.event(self.names.outcomes, outcome)

    def _feedback(self, command: DeliveryCommand, provider: str, detail: str) -> Output:
        feedback = ProviderFeedback(
            tenant_id=command.tenant_id,
            kind=DEAD_ADDRESS[command.channel],
            channel=command.channel,
            address=command.address,
            recipient_id=command.recipient_id,
            notification_id=command.notification_id,
            delivery_id=command.delivery_id,
            provider=provider,
            detail=detail,
        )
        return Output.event(self.names.feedback, feedback)
