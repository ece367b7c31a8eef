"""Consumes notifications.delivery.<channel> (urgent lane first) and its retry tiers; produces outcomes,
retries, feedback and dead letters. The urgent lane also carries the router's `RecipientErased`, noted
in Redis for the claims. The one consume loop of every channel gateway; what happens to each command
(claims, the provider chain, retries) is `gateways.handling`.

Within a partition up to `concurrency` commands are in flight at once; the committed offset is the end
of the contiguous handled prefix. A partition stops where a command cannot proceed yet (a retry not yet
due, every circuit open, a delivery in flight elsewhere) and is paused until then, so a throttled
provider pauses consumption instead of spinning retries. Offsets are committed only after the batch's
outputs are acknowledged; `stop()` finishes the sends in flight, emits and commits before returning.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Sequence
from typing import Any

import aiohttp
import redis.asyncio as aioredis

from gateways.base import Provider
from gateways.handling import Blocked, CommandHandling, Handled
from gateways.handling import dead_key as dead_key
from gateways.handling import failing_key as failing_key
from gateways.limits import Circuits, TokenBucket
from gateways.marks import REDIS_DOWN, Marks
from gateways.outputs import DUE
from gateways.settings import GatewaySettings as GatewaySettings
from tidings.config import Settings
from tidings.kafka import Incoming, Output
from tidings.kafka.admin import topics_starting
from tidings.kafka.aio import TP, AsyncConsumer, AsyncProducer
from tidings.metrics import Sample, lag_samples
from tidings.topics import names, parse_tiers, tier_seconds

log = logging.getLogger(__name__)


class GatewayRunner(CommandHandling):
    def __init__(
        self,
        settings: Settings,
        channel: str,
        providers: Sequence[Provider],
        gateway: GatewaySettings | None = None,
        *,
        rates: dict[str, tuple[float, int]] | None = None,
    ) -> None:
        n = names(settings)
        self.channel, self.providers, self.names = channel, list(providers), n
        self.config = c = gateway or GatewaySettings()
        by_label = {p.label: p for p in self.providers}
        unknown = {lb for labels in c.tenant_chains().values() for lb in labels if lb not in by_label}
        if unknown:
            raise ValueError(f"tenant chains name providers not in the chain: {', '.join(sorted(unknown))}")
        self.chains = {t: [by_label[lb] for lb in labels] for t, labels in c.tenant_chains().items()}
        self.settings = settings
        self.tiers = parse_tiers(settings.retry_tiers)
        if self.tiers and c.erased_ttl < 2 * tier_seconds(self.tiers[-1]):
            raise ValueError("TIDINGS_GATEWAY_ERASED_TTL must be at least twice the longest retry tier")
        self.urgent, self.standard = n.delivery(channel, urgent=True), n.delivery(channel)
        self.retries = [n.retry(channel, t) for t in self.tiers]
        self.lanes = {self.urgent: 0, **{t: 1 for t in self.retries}, self.standard: 2}
        self.prefix = settings.topic_prefix
        self.group = f"{settings.topic_prefix}tidings.gateway.{channel}"
        self.consumer = AsyncConsumer(
            settings, group_id=self.group, topics=[self.urgent, self.standard, *self.retries], max_records=100
        )
        self.producer = AsyncProducer(settings)
        self.redis = aioredis.Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=2)
        owner = f"{channel}/{uuid.uuid4()}"
        self.marks = Marks(self.redis, self.prefix, owner, c.inflight_ttl, c.done_ttl)
        self.circuits = Circuits(c.circuit_failures, c.circuit_cooloff)
        self.buckets = {
            label: TokenBucket(self.redis, f"{self.prefix}tidings:rate:{channel}:{label}", rate, burst)
            for label, (rate, burst) in (c.rate_limits() if rates is None else rates).items()
        }
        self.limit = asyncio.Semaphore(c.concurrency)
        self.sending = set()
        self.stopping = asyncio.Event()
        self.paused_until: dict[TP, float] = {}
        self.counts: dict[str, int] = {}
        self.finalizing: asyncio.Task[None] | None = None
        self.first_batch_at: float | None = None
        self.last_commit_at: float | None = None
        self.lag: dict[TP, int] = {}
        self._lag_at = 0.0

    async def _read_retired_tiers(self) -> None:
        """Also read the retry topics of tiers no longer configured: records in them would otherwise
        stay RETRYING for good after TIDINGS_RETRY_TIERS changed. Each is read as a retry tier; a
        command failing again whose attempt is past the new tiers fails as exhausted."""
        prefix = self.retries[0].rsplit(".", 1)[0] + "." if self.retries else None
        if prefix is None:
            return
        found = await asyncio.to_thread(topics_starting, self.settings, prefix)
        retired = [t for t in found if t not in self.retries]
        if retired:
            log.warning("reading retry topics of tiers no longer configured: %s", ", ".join(retired))
            self.lanes |= {t: 1 for t in retired}
            self.consumer.subscribe([self.urgent, self.standard, *self.retries, *retired])

    async def _keep_claims(self) -> None:
        """Every third of a claim's lifetime, extend the claims of the sends in progress. A chain walk
        can outlast a claim (a rate-limit wait, then an SMTP server taking its 30 s per step, then
        the backup's): the claim expired mid-send, and the partition's new owner after a rebalance
        sent the command a second time, with no process killed."""
        ttl = self.config.inflight_ttl
        while True:
            await asyncio.sleep(ttl / 3)
            held = [self.marks.hold(d, ttl) for d in list(self.sending)]
            for result in await asyncio.gather(*held, return_exceptions=True):
                if isinstance(result, Exception) and not isinstance(result, REDIS_DOWN):
                    log.warning("could not hold a claim: %r", result)

    async def run(self, *, idle_exit_after: float | None = None) -> None:
        await self._read_retired_tiers()
        await self.consumer.start()
        await self.producer.start()
        keeper = asyncio.create_task(self._keep_claims())
        last_input = time.monotonic()
        try:
            async with aiohttp.ClientSession() as session:
                self.session = session
                while not self.stopping.is_set():
                    self._resume_due()
                    fetched = await self.consumer.batch()
                    if time.monotonic() - self._lag_at >= 1.0:
                        self.lag, self._lag_at = await self.consumer.lag(), time.monotonic()
                    if fetched or self._resuming_soon(idle_exit_after) or not self.consumer.assignment():
                        last_input = time.monotonic()
                    if fetched:
                        await self._process(fetched)
                    elif idle_exit_after is not None and time.monotonic() - last_input > idle_exit_after:
                        return
        finally:
            keeper.cancel()
            if self.finalizing is not None:
                await self.finalizing
            for provider in self.providers:
                await provider.close()
            await self.producer.stop()
            await self.consumer.stop()
            await self.redis.aclose()

    def stop(self) -> None:
        self.stopping.set()

    def samples(self) -> list[Sample]:
        """Commands handled by result (sent, retries, exhausted, duplicates, ...) and paused partitions."""
        events = [
            Sample("gateway_events", n, labels={"channel": self.channel, "event": what})
            for what, n in sorted(dict(self.counts).items())
        ]
        paused = Sample("paused_partitions", len(self.paused_until), "gauge", {"channel": self.channel})
        return [*events, paused, *lag_samples(self.lag)]

    def _resuming_soon(self, within: float | None) -> bool:
        """A paused partition counts as pending work only if it resumes before the idle exit would."""
        horizon = time.time() + (within or 0.0)
        return any(at <= horizon for at in self.paused_until.values())

    def _resume_due(self) -> None:
        now, assigned = time.time(), set(self.consumer.assignment())
        due = [tp for tp, at in self.paused_until.items() if at <= now or tp not in assigned]
        for tp in due:
            del self.paused_until[tp]
        if resumable := [tp for tp in due if tp in assigned]:
            self.consumer.resume(resumable)

    async def _process(self, fetched: dict[TP, list[Incoming]]) -> None:
        """Handles one batch and queues its records, then acknowledges it in the background while the
        next batch is handled: emitted flags and the offset commit wait for the batch's records and
        for the previous batch's commit, so commits stay in order and never precede their outputs."""
        if self.finalizing is not None and self.finalizing.done():
            self.finalizing.result()
        self.first_batch_at = self.first_batch_at or time.monotonic()
        ordered = sorted(fetched.items(), key=lambda item: self.lanes.get(item[0][0], 3))
        results = await asyncio.gather(*(self._partition(tp, records) for tp, records in ordered))
        marks: dict[str, dict[str, Any]] = {}
        acks: list[asyncio.Future[Any]] = []
        for outputs, _, handled_marks in results:
            for out in outputs:
                acks.append(await self.producer.send(out))
            marks.update(handled_marks)
        offsets = {tp: offset for (tp, _), (_, offset, _) in zip(ordered, results, strict=True) if offset}
        self.finalizing = asyncio.create_task(self._acknowledge(self.finalizing, acks, marks, offsets))

    async def _acknowledge(
        self,
        previous: asyncio.Task[None] | None,
        acks: list[asyncio.Future[Any]],
        marks: dict[str, dict[str, Any]],
        offsets: dict[TP, int],
    ) -> None:
        if previous is not None:
            await previous
        await asyncio.gather(*acks)
        try:
            await self.marks.emitted(marks)
        except REDIS_DOWN as exc:
            log.warning("redis unavailable, emitted flags not set (a re-read re-emits): %s", exc)
        await self.consumer.commit(offsets)
        self.last_commit_at = time.monotonic()

    async def _partition(
        self, tp: TP, records: list[Incoming]
    ) -> tuple[list[Output], int | None, dict[str, dict[str, Any]]]:
        tasks: list[tuple[Incoming, asyncio.Task[Handled | Blocked]]] = []
        hold: float | None = None
        for record in records:
            due = self._due(record)
            if due is not None and due > time.time():
                hold = due
                break
            if tasks and tasks[-1][1].done() and isinstance(tasks[-1][1].result(), Blocked):
                break
            await self.limit.acquire()
            tasks.append((record, asyncio.create_task(self._guarded(record))))
        outputs: list[Output] = []
        marks: dict[str, dict[str, Any]] = {}
        next_offset: int | None = None
        blocked = False
        for record, task in tasks:
            result = await task
            if isinstance(result, Blocked):
                hold = hold if blocked else result.until
                blocked = True
                continue
            if not blocked:
                next_offset = record.offset + 1
            if result.replayed and result.mark and result.mark[0] in marks:
                self._count("duplicates")
                continue
            if result.replayed:
                self._count("re_emitted")
            outputs += result.outputs
            if result.mark:
                marks[result.mark[0]] = result.mark[1]
        if hold is not None:
            self.consumer.pause([tp])
            self.consumer.seek(tp, records[0].offset if next_offset is None else next_offset)
            self.paused_until[tp] = hold
        return outputs, next_offset, marks

    def _due(self, record: Incoming) -> float | None:
        """When a retry comes due (epoch seconds), at most the longest tier after the record was written:
        a header no number can be read from is due now, and one far ahead (a writer's clock years off)
        would otherwise hold its partition for good. The command is good either way; only the wait is
        not."""
        due = record.header(DUE)
        if due is None:
            return None
        try:
            at = int(due) / 1000
        except ValueError:
            log.warning("%s[%d]@%d: unreadable due %r", record.topic, record.partition, record.offset, due)
            return None
        if not record.timestamp_ms or not self.tiers:
            return at
        return min(at, record.timestamp_ms / 1000 + tier_seconds(self.tiers[-1]))

    async def _guarded(self, record: Incoming) -> Handled | Blocked:
        """Redis unreachable is not the command's fault: its partition waits and tries again, rather
        than the process crash-looping while Redis restarts."""
        try:
            return await self.handle(record)
        except REDIS_DOWN as exc:
            self._count("redis_unavailable")
            log.warning("redis unavailable, pausing %s[%d]: %s", record.topic, record.partition, exc)
            return Blocked(time.time() + self.config.busy_backoff)
        finally:
            self.limit.release()

    def _count(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1
