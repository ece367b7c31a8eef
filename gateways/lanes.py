"""Consumes the delivery commands a gateway's consumer fetched, partition by partition; produces their
outputs and commits their offsets. The lanes of `gateways.runner`, which owns the consume loop.

Each partition is a lane: its fetched commands start in offset order as the process's slots free up
(`Slots`: the urgent lane's first), at most `WINDOW` of them started and not handed on, and the lane's
handled prefix (commands done, in offset order) is handed on as it grows; `_hand_on` produces the
outputs, sets the emitted flags and commits the offsets in rounds. A slow send holds back only its own
partition's commit. A lane stops where a command cannot proceed yet (`_hold`): its partition is paused
and sought back to that command, and read again when the hold ends. A rebalance retires the lanes of
the partitions it revokes (aiokafka revokes them all): a partition given back starts afresh from its
committed offset, and what the old lane still had in flight is handed on without an offset.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from gateways.handling import Blocked, CommandHandling, Handled
from gateways.limits import Slots
from gateways.marks import REDIS_DOWN
from gateways.outputs import DUE
from tidings.kafka import Incoming, Output
from tidings.kafka.aio import TP, AsyncConsumer, AsyncProducer
from tidings.topics import tier_seconds

log = logging.getLogger(__name__)
BACKLOG = 500
"""Fetched commands a partition may have waiting for a slot before it is paused."""
WINDOW = 1_000
"""Commands a partition may have started and not handed on (behind one slow send) before it waits."""
UNACKNOWLEDGED = 10_000
"""Outputs handed on and not yet acknowledged by Kafka before the lanes start no more commands."""
UNTIERED_WAIT_S = 6 * 3600.0
"""The longest a retry waits when no tiers are configured: the default tiers' longest."""
Handover = tuple[list[Output], dict[str, dict[str, Any]], dict[TP, int]]


@dataclass(eq=False)
class Started:
    record: Incoming
    task: asyncio.Task[Handled | Blocked]
    at: float = field(default_factory=time.monotonic)
    dropped: bool = False
    """Its partition was held at or before it, or taken away: it is read again, so its result moves
    no offset (its outputs, if any, are still handed on)."""


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


class Lanes(CommandHandling):
    consumer: AsyncConsumer
    producer: AsyncProducer
    slots: Slots
    ranks: dict[str, int]
    stopping: asyncio.Event
    first_batch_at: float | None
    last_commit_at: float | None

    def _start_lanes(self) -> None:
        self.closing = self.drained = False
        self.failure: BaseException | None = None
        self.partitions: dict[TP, Lane] = {}
        self.retired: list[Lane] = []
        self.paused_until: dict[TP, float] = {}
        """Held partitions and when they resume, on the monotonic clock (a wall clock step would
        stretch or cut the hold); a hold's `until` arrives in epoch seconds (a retry's due time)."""
        self.handed: list[Handover] = []
        self.uncommitted: dict[TP, int] = {}
        """Offsets whose commit failed (the coordinator away): committed with the next round's."""
        self.unacknowledged = 0
        self.unemitted: set[str] = set()
        self.emitted_at: dict[str, float] = {}
        """Marks flagged emitted, by when (monotonic), kept while a command started before then still
        runs: its claim may have read the mark before the flag was set, and its replay is a duplicate."""
        self.emitted_rounds: deque[tuple[float, list[str]]] = deque()
        self.wake, self.flowing = asyncio.Event(), asyncio.Event()

    def _queue(self, tp: TP, records: list[Incoming]) -> None:
        """Adds fetched records to their partition's lane and starts its launcher. A held partition's
        records were fetched before its hold: dropped, it is read again from there when the hold ends."""
        if (held_at := self._held_at(tp)) is not None:
            self.consumer.pause([tp])
            self.consumer.seek(tp, held_at)
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

    def _held_at(self, tp: TP) -> int | None:
        lane = self.partitions.get(tp)
        return lane.held_at if lane is not None and tp in self.paused_until else None

    async def _launch(self, lane: Lane) -> None:
        """Starts the lane's waiting commands in offset order as slots free up; stops at a retry not
        yet due (`_hold`), or when its partition is taken away."""
        while lane.waiting and not self.closing and self.partitions.get(lane.tp) is lane:
            if len(lane.running) >= WINDOW:
                lane.room.clear()
                await lane.room.wait()
                continue
            if self.unacknowledged > UNACKNOWLEDGED:
                self.flowing.clear()
                await self.flowing.wait()
                continue
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
        handled prefix (commands done, in offset order) is handed on with its outputs and offset. A
        Blocked command in the prefix holds it too, before anything after it could move the offset:
        its own callback may not have run yet. A dropped command's result moves no offset and hands on
        only what a mark stands for (a dead letter without one would be written again at the re-read)."""
        try:
            task = started.task
            ended = not task.cancelled() and task.exception() is None
            if ended and not started.dropped and isinstance(blocked := task.result(), Blocked):
                self._hold(lane, started.record.offset, blocked.until)
            outputs: list[Output] = []
            marks: dict[str, dict[str, Any]] = {}
            next_offset: int | None = None
            failed: BaseException | None = None
            while lane.running and lane.running[0].task.done():
                done = lane.running[0]
                if done.task.cancelled() or done.task.exception() is not None:
                    error = done.task.exception() if not done.task.cancelled() else None
                    if not done.dropped:
                        where = f"{done.record.topic}[{done.record.partition}]@{done.record.offset}"
                        failed = error or RuntimeError(f"the handling of {where} was cancelled")
                        break
                    log.warning("a command read again failed: %r", error)
                result = None if done.task.cancelled() or done.task.exception() else done.task.result()
                if isinstance(result, Blocked) and not done.dropped:
                    self._hold(lane, done.record.offset, result.until)
                lane.running.popleft()
                if not isinstance(result, Handled) or (done.dropped and not result.mark):
                    continue
                if not done.dropped:
                    next_offset = done.record.offset + 1
                seen = result.mark is not None and (
                    result.mark[0] in marks
                    or result.mark[0] in self.unemitted
                    or self.emitted_at.get(result.mark[0], -1.0) >= done.at
                )
                if result.replayed and seen:
                    self._count("duplicates")
                    continue
                if result.replayed:
                    self._count("re_emitted")
                outputs += result.outputs
                if result.mark:
                    marks[result.mark[0]] = result.mark[1]
            lane.room.set()
            if next_offset is not None or outputs or marks:
                self.unemitted.update(marks)
                self.unacknowledged += len(outputs)
                self.handed.append((outputs, marks, {} if next_offset is None else {lane.tp: next_offset}))
                self.wake.set()
            if failed is not None:
                self._fail(failed)
        except Exception as exc:
            self._fail(exc)

    def _hold(self, lane: Lane, offset: int, until: float) -> None:
        """Stops the partition at `offset` until `until` (a retry not yet due, every circuit open, a
        delivery in flight elsewhere): what it started from there on moves no offset, what it fetched
        is dropped, and it is read again from `offset` when the hold ends. Commands before `offset`
        still finish and are handed on."""
        if self.partitions.get(lane.tp) is not lane:
            return
        if (held_at := self._held_at(lane.tp)) is not None and offset >= held_at:
            return
        for started in lane.running:
            if started.record.offset >= offset:
                started.dropped = True
        lane.waiting.clear()
        lane.full, lane.held_at = False, offset
        self.consumer.pause([lane.tp])
        self.consumer.seek(lane.tp, offset)
        self.paused_until[lane.tp] = time.monotonic() + max(0.0, until - time.time())

    def _revoked(self, tps: list[TP]) -> None:
        """A rebalance took the partitions away: their lanes retire (what they started still finishes
        and is handed on, moving no offset; their launchers stop), and one given back to this process
        starts a new lane from its committed offset, neither paused nor held."""
        try:
            self._retire(tps)
        except Exception as exc:
            self._fail(exc)

    def _retire(self, tps: list[TP]) -> None:
        """(aiokafka logs and ignores an error in its rebalance listener: a lane that survived would
        keep a hold over a partition given back, and drop its records.)"""
        self.retired = [lane for lane in self.retired if lane.running]
        for tp in tps:
            self.paused_until.pop(tp, None)
            lane = self.partitions.pop(tp, None)
            if lane is None:
                continue
            for started in lane.running:
                started.dropped = True
            lane.waiting.clear()
            lane.room.set()
            self.retired.append(lane)

    def _resume_due(self) -> None:
        now = time.monotonic()
        due = [tp for tp, at in self.paused_until.items() if at <= now or not self.consumer.holds(tp)]
        for tp in due:
            del self.paused_until[tp]
        full = {tp for tp, lane in self.partitions.items() if lane.full}
        if resumable := [tp for tp in due if self.consumer.holds(tp) and tp not in full]:
            self.consumer.resume(resumable)

    def _busy(self, within: float | None) -> bool:
        """Commands waiting, in flight or not yet committed, or a paused partition resuming before the
        idle exit would."""
        lanes = [*self.partitions.values(), *self.retired]
        if self.handed or any(lane.waiting or lane.running for lane in lanes):
            return True
        horizon = time.monotonic() + (within or 0.0)
        return any(at <= horizon for at in self.paused_until.values())

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
            self.unacknowledged -= len(acks)
            self.flowing.set()
            marks = {key: mark for _, handed_marks, _ in handed for key, mark in handed_marks.items()}
            try:
                await self.marks.emitted(marks)
            except REDIS_DOWN as exc:
                log.warning("redis unavailable, emitted flags not set (a re-read re-emits): %s", exc)
            self.unemitted.difference_update(marks)
            self._note_emitted(list(marks))
            offsets = {tp: offset for _, _, handed_offsets in handed for tp, offset in handed_offsets.items()}
            offsets = self.uncommitted | offsets
            committed = await self.consumer.commit(offsets)
            self.uncommitted = (
                {} if committed else {tp: o for tp, o in offsets.items() if self.consumer.holds(tp)}
            )
            self.last_commit_at = time.monotonic()

    def _note_emitted(self, keys: list[str]) -> None:
        """Remembers when these marks were flagged, and forgets the rounds flagged before every
        command still running started, or longer than a claim's lifetime ago: a replay ends a claim's
        round trip after it starts, and a send held minutes by a rate limit kept every mark flagged
        meanwhile."""
        now = time.monotonic()
        if keys:
            self.emitted_rounds.append((now, keys))
            self.emitted_at.update(dict.fromkeys(keys, now))
        lanes = [*self.partitions.values(), *self.retired]
        oldest = min((lane.running[0].at for lane in lanes if lane.running), default=now)
        oldest = max(oldest, now - self.config.inflight_ttl)
        while self.emitted_rounds and self.emitted_rounds[0][0] < oldest:
            at, old = self.emitted_rounds.popleft()
            for key in old:
                if self.emitted_at.get(key) == at:
                    del self.emitted_at[key]

    async def _close(self) -> None:
        """Stops starting commands, lets the sends in flight finish and hands them on."""
        self.closing = True
        self.flowing.set()
        for lane in self.partitions.values():
            lane.waiting.clear()
            lane.room.set()
        launchers = [lane.launcher for lane in self.partitions.values() if lane.launcher is not None]
        await asyncio.gather(*launchers, return_exceptions=True)
        lanes = [*self.partitions.values(), *self.retired]
        in_flight = [started.task for lane in lanes for started in lane.running]
        await asyncio.gather(*in_flight, return_exceptions=True)

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
        a header no number can be read from (or none a float holds) is due now, and one far ahead (a
        writer's clock years off) would otherwise hold its partition for good. The command is good
        either way; only the wait is not. A record with no timestamp is due now (counted from when it is
        read, a held record read again would never come due), and with no tiers configured (retired
        tiers still read) the cap is `UNTIERED_WAIT_S`: either held its partition for good before."""
        due = record.header(DUE)
        if due is None:
            return None
        try:
            at = int(due) / 1000
        except (ValueError, OverflowError):
            log.warning("%s[%d]@%d: unreadable due %r", record.topic, record.partition, record.offset, due)
            return None
        if record.timestamp_ms <= 0:
            return None
        longest = tier_seconds(self.tiers[-1]) if self.tiers else UNTIERED_WAIT_S
        return min(at, record.timestamp_ms / 1000 + longest)

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
