"""Consumes notifications.delivery.<channel> (urgent lane first) and its retry tiers; produces outcomes,
retries, feedback and dead letters. The urgent lane also carries the router's `RecipientErased`, noted
in Redis for the claims. The one consume loop of every channel gateway; what happens to each command
(claims, the provider chain, retries) is `gateways.handling`.

Each partition is a lane: its fetched commands start in offset order as the process's `concurrency`
slots free up (the urgent lane's first), and the handled prefix is handed on as it grows. A slow send
holds back only its own partition's commit, never the fetching or sending of others: the loop keeps
fetching while sends are in flight. A partition stops where a command cannot proceed yet (a retry not
yet due, every circuit open, a delivery in flight elsewhere) and is paused until then, so a throttled
provider pauses consumption instead of spinning retries. Offsets are committed only after their
outputs are acknowledged; `stop()` finishes the sends in flight, emits and commits before returning.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import uuid
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import redis.asyncio as aioredis

from gateways.base import Provider
from gateways.handling import Blocked, CommandHandling, Handled
from gateways.handling import dead_key as dead_key
from gateways.handling import failing_key as failing_key
from gateways.limits import Circuits, Slots, TokenBucket
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
BACKLOG = 500
"""Fetched commands a partition may have waiting for a slot before it is paused."""
WINDOW = 1_000
"""Commands a partition may have started and not handed on (behind one slow send) before it waits."""


@dataclass(eq=False)
class Started:
    record: Incoming
    task: asyncio.Task[Handled | Blocked]
    dropped: bool = False
    """Its partition was held at or before it: it is read again, and this result is not handed on."""


@dataclass(eq=False)
class Lane:
    """One partition's commands: fetched and waiting for a slot, and started, both in offset order."""

    tp: TP
    rank: int
    waiting: deque[Incoming] = field(default_factory=deque)
    running: deque[Started] = field(default_factory=deque)
    room: asyncio.Event = field(default_factory=asyncio.Event)
    launcher: asyncio.Task[None] | None = None
    full: bool = False
    held_at: int | None = None


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
        self.ranks = {self.urgent: 0, **{t: 1 for t in self.retries}, self.standard: 2}
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
        self.slots = Slots(c.concurrency)
        self.sending = set()
        self.active = Counter()
        self.stopping = asyncio.Event()
        self.closing = self.drained = False
        self.failure: BaseException | None = None
        self.partitions: dict[TP, Lane] = {}
        self.paused_until: dict[TP, float] = {}
        self.counts: dict[str, int] = {}
        self.handed: list[tuple[list[Output], dict[str, dict[str, Any]], dict[TP, int]]] = []
        self.unemitted: set[str] = set()
        self.wake = asyncio.Event()
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
            self.ranks |= {t: 1 for t in retired}
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
        hand_on = asyncio.create_task(self._hand_on())
        hand_on.add_done_callback(self._watch)
        last_input = time.monotonic()
        try:
            async with aiohttp.ClientSession() as session:
                self.session = session
                try:
                    while not self.stopping.is_set():
                        self._resume_due()
                        fetched = await self.consumer.batch()
                        for tp in sorted(fetched, key=lambda tp: self.ranks.get(tp[0], 3)):
                            self._queue(tp, fetched[tp])
                        if time.monotonic() - self._lag_at >= 1.0:
                            self.lag, self._lag_at = await self.consumer.lag(), time.monotonic()
                        if fetched or self._busy(idle_exit_after) or not self.consumer.assignment():
                            last_input = time.monotonic()
                        elif idle_exit_after is not None and time.monotonic() - last_input > idle_exit_after:
                            break
                finally:
                    await self._close()
            if self.failure is not None:
                raise self.failure
        finally:
            keeper.cancel()
            if not hand_on.done():
                self.drained = True
                self.wake.set()
                await hand_on
            for provider in self.providers:
                await provider.close()
            await self.producer.stop()
            await self.consumer.stop()
            await self.redis.aclose()

    async def _close(self) -> None:
        """Stops starting commands, lets the sends in flight finish and hands them on."""
        self.closing = True
        for lane in self.partitions.values():
            lane.waiting.clear()
            lane.room.set()
        launchers = [lane.launcher for lane in self.partitions.values() if lane.launcher is not None]
        await asyncio.gather(*launchers, return_exceptions=True)
        in_flight = [started.task for lane in self.partitions.values() for started in lane.running]
        await asyncio.gather(*in_flight, return_exceptions=True)

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

    def _busy(self, within: float | None) -> bool:
        """Commands waiting or in flight, or a paused partition resuming before the idle exit would."""
        if any(lane.waiting or lane.running for lane in self.partitions.values()):
            return True
        horizon = time.time() + (within or 0.0)
        return any(at <= horizon for at in self.paused_until.values())

    def _resume_due(self) -> None:
        now, assigned = time.time(), set(self.consumer.assignment())
        due = [tp for tp, at in self.paused_until.items() if at <= now or tp not in assigned]
        for tp in due:
            del self.paused_until[tp]
        full = {tp for tp, lane in self.partitions.items() if lane.full}
        if resumable := [tp for tp in due if tp in assigned and tp not in full]:
            self.consumer.resume(resumable)

    def _queue(self, tp: TP, records: list[Incoming]) -> None:
        """Adds fetched records to their partition's lane and starts its launcher. A partition held
        since the fetch drops them: it is read again from where it stopped when its hold ends."""
        if tp in self.paused_until:
            return
        self.first_batch_at = self.first_batch_at or time.monotonic()
        lane = self.partitions.get(tp)
        if lane is None:
            lane = self.partitions[tp] = Lane(tp, self.ranks.get(tp[0], 3))
        lane.waiting.extend(records)
        if len(lane.waiting) >= BACKLOG and not lane.full:
            lane.full = True
            self.consumer.pause([tp])
        if lane.launcher is None or lane.launcher.done():
            lane.launcher = asyncio.create_task(self._launch(lane))
            lane.launcher.add_done_callback(self._watch)

    async def _launch(self, lane: Lane) -> None:
        """Starts the lane's waiting commands in offset order as slots free up, at most `WINDOW` of
        them not yet handed on; stops at a retry not yet due (`_hold`)."""
        while lane.waiting and not self.closing:
            if not self.consumer.holds(lane.tp):
                lane.waiting.clear()
                lane.full = False
                break
            while len(lane.running) >= WINDOW and not self.closing:
                lane.room.clear()
                await lane.room.wait()
            record = lane.waiting[0]
            due = self._due(record)
            if due is not None and due > time.time():
                self._hold(lane, record.offset, due)
                break
            await self.slots.acquire(lane.rank)
            if self.closing or not lane.waiting or lane.waiting[0] is not record:
                self.slots.release()
                continue
            lane.waiting.popleft()
            started = Started(record, asyncio.create_task(self._guarded(record)))
            lane.running.append(started)
            started.task.add_done_callback(functools.partial(self._settled, lane, started))
            if lane.full and len(lane.waiting) <= BACKLOG // 2:
                lane.full = False
                if lane.tp not in self.paused_until:
                    self.consumer.resume([lane.tp])

    def _settled(self, lane: Lane, started: Started, _: object) -> None:
        """A command's handling ended: a Blocked one holds its partition at once; then the lane's
        handled prefix (commands done, in offset order) is handed on with its outputs and offset."""
        try:
            task = started.task
            done_ok = not task.cancelled() and task.exception() is None and not started.dropped
            if done_ok and isinstance(blocked := task.result(), Blocked):
                self._hold(lane, started.record.offset, blocked.until)
            outputs: list[Output] = []
            marks: dict[str, dict[str, Any]] = {}
            next_offset: int | None = None
            failed: BaseException | None = None
            while lane.running and lane.running[0].task.done():
                done = lane.running[0]
                if not done.dropped and (done.task.cancelled() or done.task.exception() is not None):
                    failed = None if done.task.cancelled() else done.task.exception()
                    break
                lane.running.popleft()
                if done.dropped or isinstance(result := done.task.result(), Blocked):
                    continue
                next_offset = done.record.offset + 1
                if (
                    result.replayed
                    and result.mark
                    and (result.mark[0] in marks or result.mark[0] in self.unemitted)
                ):
                    self._count("duplicates")
                    continue
                if result.replayed:
                    self._count("re_emitted")
                outputs += result.outputs
                if result.mark:
                    marks[result.mark[0]] = result.mark[1]
            lane.room.set()
            if next_offset is not None:
                self.unemitted.update(marks)
                self.handed.append((outputs, marks, {lane.tp: next_offset}))
                self.wake.set()
            if failed is not None:
                self._fail(failed)
        except Exception as exc:
            self._fail(exc)

    def _hold(self, lane: Lane, offset: int, until: float) -> None:
        """Stops the partition at `offset` until `until` (a retry not yet due, every circuit open, a
        delivery in flight elsewhere): what it started from there on is not handed on, what it fetched
        is dropped, and it is read again from `offset` when the hold ends. Commands before `offset`
        still finish and are handed on."""
        if lane.tp in self.paused_until and lane.held_at is not None and offset >= lane.held_at:
            return
        for started in lane.running:
            if started.record.offset >= offset:
                started.dropped = True
        lane.waiting.clear()
        lane.full, lane.held_at = False, offset
        self.consumer.pause([lane.tp])
        self.consumer.seek(lane.tp, offset)
        self.paused_until[lane.tp] = until

    async def _hand_on(self) -> None:
        """Produces what the lanes handed on, then sets the emitted flags and commits the offsets, in
        rounds: everything handed on while a round ran goes in the next. A commit never precedes its
        outputs' acknowledgement, and a partition's offsets are committed in order."""
        while not (self.drained and not self.handed):
            await self.wake.wait()
            self.wake.clear()
            handed, self.handed = self.handed, []
            if not handed:
                continue
            acks = [await self.producer.send(out) for outputs, _, _ in handed for out in outputs]
            await asyncio.gather(*acks)
            marks = {key: mark for _, handed_marks, _ in handed for key, mark in handed_marks.items()}
            try:
                await self.marks.emitted(marks)
            except REDIS_DOWN as exc:
                log.warning("redis unavailable, emitted flags not set (a re-read re-emits): %s", exc)
            self.unemitted.difference_update(marks)
            offsets = {tp: offset for _, _, handed_offsets in handed for tp, offset in handed_offsets.items()}
            await self.consumer.commit(offsets)
            self.last_commit_at = time.monotonic()

    def _watch(self, task: asyncio.Task[Any]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self._fail(task.exception())  # type: ignore[arg-type]

    def _fail(self, exc: BaseException) -> None:
        """An unexpected error in a lane or the hand-on stops the process, as it would in the loop."""
        if self.failure is None:
            self.failure = exc
        self.stopping.set()

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
            self.slots.release()
