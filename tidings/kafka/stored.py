"""Consumes topics read_committed for a sink that stores its own offsets (a projection in PostgreSQL).

The sink writes a batch and the batch's next offsets in one external transaction; on assignment the
loop seeks each partition to the offset the sink holds (or the beginning), so the sink sees every record
exactly once however the process dies. Nothing is committed to Kafka. Offsets count one topic's
records: before seeking, the loop hands the sink the ids of the topics it was assigned (`pin_topics`),
so a sink can tell a topic deleted and created again under the same name from the one its offsets count.

Batches are pipelined: while a writer thread writes batch N, the consuming thread fetches and prepares
(decodes) batch N+1, so the database's share of the work overlaps Python's. One write at most is in
flight and writes run in consumption order. A rebalance first finishes the write in flight, so no write
straddles a change of assignment. A retriable error drops everything consumed since the last write and,
after a back-off, seeks every assigned partition back to the offsets the sink holds: whether or not the
failed commit landed, the sink's offsets say where its rows end. Any other error stops the loop (the sink
decides what is poison).

While the loop runs, the interpreter switches threads every millisecond rather than every 5: the writer
needs the GIL back after each database round trip, and waiting out the decoding thread's whole slice
each time stalled the pipeline (15-25% of the projection benchmark's throughput). Batches are large
(10,000 records) so a batch's round trips, plans and commit are shared by many records.

Records reach the sink as a `Batch`: values and positions are read straight off the client's messages,
and a full `Incoming` is built only for a record the sink asks for (to dead-letter it).
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Generic, Protocol, TypeVar, cast

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Message, TopicPartition
from confluent_kafka.admin import AdminClient

from tidings.config import Settings
from tidings.errors import OffsetsPastEnd
from tidings.kafka import config
from tidings.kafka.admin import admin, topic_ids
from tidings.kafka.messages import is_retriable, lag_of, to_incoming
from tidings.kafka.records import Incoming

log = logging.getLogger(__name__)
TP = tuple[str, int]
OffsetLoader = Callable[[list[TP]], dict[TP, int]]
TopicPinner = Callable[[dict[str, str]], None]
T = TypeVar("T")
R = TypeVar("R")


class Batch(Protocol):
    def __len__(self) -> int: ...
    def values(self) -> list[bytes | None]: ...
    def record(self, index: int) -> Incoming: ...
    def next_offsets(self) -> dict[TP, int]: ...
    def first_offsets(self) -> dict[TP, int]: ...


class MessageBatch:
    def __init__(self, messages: list[Message]) -> None:
        self.messages = messages

    def __len__(self) -> int:
        return len(self.messages)

    def values(self) -> list[bytes | None]:
        return [m.value() for m in self.messages]

    def record(self, index: int) -> Incoming:
        return to_incoming(self.messages[index])

    def first_offsets(self) -> dict[TP, int]:
        offsets: dict[TP, int] = {}
        for m in self.messages:
            offsets.setdefault(cast(TP, (m.topic(), m.partition())), cast(int, m.offset()))
        return offsets

    def next_offsets(self) -> dict[TP, int]:
        offsets: dict[TP, int] = {}
        for m in self.messages:
            tp, after = cast(TP, (m.topic(), m.partition())), cast(int, m.offset()) + 1
            if after > offsets.get(tp, 0):
                offsets[tp] = after
        return offsets


class RecordBatch:
    def __init__(self, records: list[Incoming]) -> None:
        self.records = records

    def __len__(self) -> int:
        return len(self.records)

    def values(self) -> list[bytes | None]:
        return [r.value for r in self.records]

    def record(self, index: int) -> Incoming:
        return self.records[index]

    def first_offsets(self) -> dict[TP, int]:
        offsets: dict[TP, int] = {}
        for r in self.records:
            offsets.setdefault((r.topic, r.partition), r.offset)
        return offsets

    def next_offsets(self) -> dict[TP, int]:
        offsets: dict[TP, int] = {}
        for r in self.records:
            tp = (r.topic, r.partition)
            offsets[tp] = max(offsets.get(tp, 0), r.offset + 1)
        return offsets


class StoredOffsetsLoop(Generic[T]):
    """`prepare` runs on the consuming thread, `write` (the sink's transaction) on the writer thread."""

    def __init__(
        self,
        settings: Settings,
        *,
        group_id: str,
        topics: Sequence[str],
        prepare: Callable[[Batch], T],
        write: Callable[[T], None],
        load_offsets: OffsetLoader,
        pin_topics: TopicPinner | None = None,
        batch_size: int = 10_000,
        poll_timeout: float = 0.2,
        retry_backoff: float = 1.0,
        switch_interval: float = 0.001,
    ) -> None:
        self.topics = list(topics)
        self.prepare = prepare
        self.write = write
        self.load_offsets = load_offsets
        self.pin_topics = pin_topics
        self.settings = settings
        self._admin: AdminClient | None = None
        self.batch_size = batch_size
        self.poll_timeout = poll_timeout
        self.retry_backoff = retry_backoff
        self.switch_interval = switch_interval
        self.consumer = Consumer(config.consumer(settings, group_id))
        self.writer = ThreadPoolExecutor(1, thread_name_prefix="stored-offsets-writer")
        self.pending: tuple[Future[float], int] | None = None
        self.stopping = threading.Event()
        self.handled = 0
        self.first_batch_at: float | None = None
        self.last_batch_at: float | None = None
        self.lag: dict[tuple[str, int], int] = {}
        self._lag_at = 0.0
        self.assigned_at = 0.0
        """When partitions were last assigned: the wait for the stored offsets is not idleness."""

    def _assigned(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Reads the stored offsets, asking again while the sink fails retriably: raised here, a
        database down at a rebalance left the consumer's callback and stopped the process, which then
        crash-looped under its supervisor until the database came back. Asked to stop meanwhile, it
        returns without assigning: librdkafka then assigns the partitions at their Kafka defaults, so
        the loop stops before handling anything that poll returned."""
        self._drain()
        if self.pin_topics is not None and partitions:
            pin = self.pin_topics
            self._admin = self._admin or admin(self.settings)
            ids = topic_ids(self._admin, sorted({p.topic for p in partitions}))
            if not self._retrying("pinning the topics", lambda: pin(ids) or True):
                return
        wanted = [(p.topic, p.partition) for p in partitions]
        stored = self._retrying("loading the stored offsets", lambda: self.load_offsets(wanted))
        if stored is None:
            return
        for p in partitions:
            p.offset = stored.get((p.topic, p.partition), OFFSET_BEGINNING)
            if p.offset > 0:
                self._check_end(consumer, p)
        consumer.assign(partitions)
        self.assigned_at = time.monotonic()

    def _check_end(self, consumer: Consumer, tp: TopicPartition) -> None:
        """A stored offset past the partition's end would reset the consumer to the start, and every
        batch would then be older than the offsets stored: stop and say what happened instead."""
        try:
            _, high = consumer.get_watermark_offsets(TopicPartition(tp.topic, tp.partition), timeout=10)
        except KafkaException as exc:
            log.warning("could not read the end of %s[%d]: %s", tp.topic, tp.partition, exc)
            return
        if tp.offset > high:
            raise OffsetsPastEnd(
                f"{tp.topic}[{tp.partition}] ends at {high} but offsets are stored up to {tp.offset}: the "
                "topic was created again; rebuild what these offsets belong to (tidings projections rebuild)"
            )

    def _revoked(self, _consumer: Consumer, _partitions: list[TopicPartition]) -> None:
        self._drain()

    def stop(self) -> None:
        self.stopping.set()

    def run(self, *, idle_exit_after: float | None = None) -> None:
        self.consumer.subscribe(self.topics, on_assign=self._assigned, on_revoke=self._revoked)
        last_input = time.monotonic()
        interval = sys.getswitchinterval()
        sys.setswitchinterval(min(interval, self.switch_interval))
        try:
            while not self.stopping.is_set():
                messages = []
                for m in self.consumer.consume(self.batch_size, self.poll_timeout):
                    if (err := m.error()) is None:
                        messages.append(m)
                    elif config.is_fatal(err):
                        raise KafkaException(err)
                if self.stopping.is_set():
                    break
                if messages or not self.consumer.assignment() or self.assigned_at > last_input:
                    last_input = time.monotonic()
                if time.monotonic() - self._lag_at >= 1.0:
                    self.lag, self._lag_at = lag_of(self.consumer), time.monotonic()
                if messages:
                    self._process(MessageBatch(messages))
                elif not self._drain():
                    self._rewind()
                elif idle_exit_after is not None and time.monotonic() - last_input > idle_exit_after:
                    return
            self._drain()
        finally:
            sys.setswitchinterval(interval)
            self.writer.shutdown(wait=True)
            self.pending = None
            self.consumer.close()

    def _process(self, batch: MessageBatch) -> None:
        if self.first_batch_at is None:
            self.first_batch_at = time.monotonic()
        try:
            prepared = self.prepare(batch)
        except Exception as exc:
            if not is_retriable(exc):
                raise
            log.warning("retriable failure preparing a batch, rewinding: %s", exc)
            self._drain()
            self._rewind()
            return
        if not self._drain():
            self._rewind()
            return
        self.pending = (self.writer.submit(self._write, prepared), len(batch))

    def _write(self, prepared: T) -> float:
        self.write(prepared)
        return time.monotonic()

    def _drain(self) -> bool:
        """Wait for the write in flight; False if it failed retriably (the sink holds the older offsets)."""
        if self.pending is None:
            return True
        future, size = self.pending
        self.pending = None
        try:
            written_at = future.result()
        except Exception as exc:
            if not is_retriable(exc):
                raise
            log.warning("retriable failure writing a batch, rewinding to the stored offsets: %s", exc)
            return False
        self.handled += size
        self.last_batch_at = written_at
        return True

    def _retrying(self, what: str, call: Callable[[], R]) -> R | None:
        """`call()`, again every `retry_backoff` seconds while it fails retriably; None once stopping."""
        while not self.stopping.is_set():
            try:
                return call()
            except Exception as exc:
                if not is_retriable(exc):
                    raise
                log.warning("retriable failure %s: %s", what, exc)
            self.stopping.wait(self.retry_backoff)
        return None

    def _rewind(self) -> None:
        if self.stopping.wait(self.retry_backoff):
            return
        assigned = self.consumer.assignment()
        held = [(p.topic, p.partition) for p in assigned]
        stored = self._retrying("loading the stored offsets", lambda: self.load_offsets(held))
        if stored is None:
            return
        for p in assigned:
            self.consumer.seek(
                TopicPartition(p.topic, p.partition, stored.get((p.topic, p.partition), OFFSET_BEGINNING))
            )
