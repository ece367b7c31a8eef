"""Consumes topics at least once, committing only fully handled offsets; reads topics for tools.

`AtLeastOnceLoop` hands each record to a handler in partition order. A handled record's offset is
committed after the batch; a poison record is dead-lettered (the dead letter is acknowledged by the broker
before its offset is committed) and the loop goes on; a retriable failure rewinds the partition to the
failed record and retries it after a back-off, so nothing after it is committed first.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any, cast

from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaError, KafkaException, TopicPartition

from tidings.config import Settings
from tidings.errors import HangingTransaction, KafkaUnavailable, UnknownTopic
from tidings.kafka import config
from tidings.kafka.messages import is_retriable, next_offsets, to_incoming
from tidings.kafka.producer import EventProducer
from tidings.kafka.records import Handler, Incoming, dead_letter
from tidings.kafka.transactional import TXN_TIMEOUT_S
from tidings.topics import names

log = logging.getLogger(__name__)
SETTLE_S = TXN_TIMEOUT_S + 30
"""How long a restore waits for an open transaction to end: a zombie's lasts at most TXN_TIMEOUT_S."""


class AtLeastOnceLoop:
    def __init__(
        self,
        settings: Settings,
        *,
        group_id: str,
        topics: Sequence[str],
        handle: Handler,
        batch_size: int = 500,
        poll_timeout: float = 0.1,
        retry_backoff: float = 1.0,
        consumer_overrides: dict[str, Any] | None = None,
    ) -> None:
        self.group_id = group_id
        self.dlq_topic = names(settings).dlq
        self.topics = list(topics)
        self.handle = handle
        self.batch_size = batch_size
        self.poll_timeout = poll_timeout
        self.retry_backoff = retry_backoff
        self.consumer = Consumer(config.consumer(settings, group_id, **(consumer_overrides or {})))
        self.producer = EventProducer(settings)
        self.stopping = threading.Event()
        self.handled = 0
        self.dead_letters = 0

    def stop(self) -> None:
        self.stopping.set()

    def run(self, *, idle_exit_after: float | None = None) -> None:
        self.consumer.subscribe(self.topics)
        last_input = time.monotonic()
        try:
            while not self.stopping.is_set():
                msgs = self.consumer.consume(self.batch_size, self.poll_timeout)
                batch = []
                for m in msgs:
                    if (err := m.error()) is None:
                        batch.append(to_incoming(m))
                    elif config.is_fatal(err):
                        raise KafkaException(err)
                if batch or not self.consumer.assignment():
                    last_input = time.monotonic()
                if batch:
                    self.process(batch)
                elif idle_exit_after is not None and time.monotonic() - last_input > idle_exit_after:
                    return
        finally:
            self.consumer.close()
            self.producer.close()

    def process(self, batch: list[Incoming]) -> None:
        done: list[Incoming] = []
        failed: set[tuple[str, int]] = set()
        for record in batch:
            tp = (record.topic, record.partition)
            if tp in failed:
                continue
            try:
                record.check_headers()
                self.handle(record)
                self.handled += 1
            except Exception as exc:
                if is_retriable(exc):
                    log.warning("retriable failure at %s[%d]@%d: %s", *tp, record.offset, exc)
                    failed.add(tp)
                    self.consumer.seek(TopicPartition(record.topic, record.partition, record.offset))
                    continue
                log.warning("dead-lettering %s[%d]@%d: %s", *tp, record.offset, exc)
                self.producer.produce(dead_letter(record, exc, self.group_id, self.dlq_topic))
                self.dead_letters += 1
            done.append(record)
        if done:
            self.producer.flush()
            self.consumer.commit(offsets=next_offsets(done), asynchronous=False)
        if failed:
            time.sleep(self.retry_backoff)


def read_topic(
    settings: Settings,
    topic: str,
    *,
    from_beginning: bool = False,
    max_records: int | None = None,
    idle_timeout: float | None = None,
    read_committed: bool = True,
) -> Iterator[Incoming]:
    """Every partition of a topic, without a consumer group (nothing is committed)."""
    consumer = Consumer(
        config.consumer(
            settings,
            f"tidings-reader-{uuid.uuid4()}",
            **{"isolation.level": "read_committed" if read_committed else "read_uncommitted"},
        )
    )
    try:
        meta = consumer.list_topics(topic, timeout=10)
        tmeta = meta.topics.get(topic)
        if tmeta is None or tmeta.error is not None:
            raise UnknownTopic(unknown_topic(settings, topic))
        start = OFFSET_BEGINNING if from_beginning else OFFSET_END
        consumer.assign([TopicPartition(topic, p, start) for p in sorted(tmeta.partitions)])
        seen = 0
        last = time.monotonic()
        while max_records is None or seen < max_records:
            msg = consumer.poll(0.2)
            if msg is None:
                if idle_timeout is not None and time.monotonic() - last > idle_timeout:
                    return
                continue
            if msg.error():
                log.warning("read error: %s", msg.error())
                continue
            last = time.monotonic()
            seen += 1
            yield to_incoming(msg)
    finally:
        consumer.close()


def read_partition(
    settings: Settings, topic: str, partition: int, *, timeout: float = 120.0, settle: float = SETTLE_S
) -> Iterator[Incoming]:
    """One partition from its start to its end, read_committed, then stop (a state store's restore).
    `timeout` bounds a stall, not the whole read: a large store restores for as long as it progresses
    (a fixed bound failed every restart of a store too large to read within it).

    The end is the high watermark once every transaction before it has ended: reading only to the last
    stable offset would silently restore a store without the records behind a transaction still open.
    Such a transaction is waited for up to `settle` seconds, longer than any of ours may stay open; one
    that outlives that is a transaction Kafka lost the marker of (it happened after a broker SIGKILL,
    docs/architecture.md) and raises HangingTransaction: a processor must stop rather than decide on
    state it knows to be incomplete (a recipient's opt-outs, say).
    """
    consumer = Consumer(config.consumer(settings, f"tidings-restore-{uuid.uuid4()}"))
    try:
        high = settled_end(settings, consumer, TopicPartition(topic, partition), settle)
        low, _ = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
        if high <= max(int(low), 0):
            return
        consumer.assign([TopicPartition(topic, partition, OFFSET_BEGINNING)])
        deadline, reached = time.monotonic() + timeout, -1
        while True:
            msg = consumer.poll(0.2)
            if msg is not None and msg.error() is None:
                yield to_incoming(msg)
            [position] = consumer.position([TopicPartition(topic, partition)])
            if position.offset >= high:
                return
            if position.offset > reached:
                deadline, reached = time.monotonic() + timeout, position.offset
            elif time.monotonic() > deadline:
                raise KafkaUnavailable(
                    f"{topic}[{partition}] read to {reached} of {high}, then nothing for {timeout:.0f}s"
                )
    finally:
        consumer.close()


def read_to_unreadable(
    settings: Settings, starts: dict[tuple[str, int], int | None], limit: int, timeout: float = 10.0
) -> dict[tuple[str, int], list[Incoming]]:
    """Each partition's records from its start (None: the beginning), read_committed, up to `limit`, its
    end, or its first record whose headers cannot be read, which is the last returned."""
    consumer = Consumer(
        config.consumer(settings, f"tidings-salvage-{uuid.uuid4()}", **{"enable.partition.eof": True})
    )
    found: dict[tuple[str, int], list[Incoming]] = {tp: [] for tp in starts}
    reading = set(starts)
    try:
        consumer.assign(
            [TopicPartition(t, p, OFFSET_BEGINNING if o is None else o) for (t, p), o in starts.items()]
        )
        deadline = time.monotonic() + timeout
        while reading and time.monotonic() < deadline:
            for msg in consumer.consume(limit, 0.2):
                tp = (cast(str, msg.topic()), cast(int, msg.partition()))
                if tp not in reading:
                    continue
                if (err := msg.error()) is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        reading.discard(tp)
                    continue
                record = to_incoming(msg)
                found[tp].append(record)
                if record.unreadable is not None or len(found[tp]) >= limit:
                    reading.discard(tp)
    finally:
        consumer.close()
    return found


def settled_end(settings: Settings, committed: Consumer, tp: TopicPartition, settle: float) -> int:
    """The partition's high watermark, once its last stable offset (what `committed`, a read_committed
    consumer, sees as the end) has reached it; HangingTransaction if that takes over `settle` seconds."""
    probe = Consumer(
        config.consumer(settings, f"tidings-probe-{uuid.uuid4()}", **{"isolation.level": "read_uncommitted"})
    )
    try:
        high, deadline = high_watermark(probe, tp), time.monotonic() + settle
        while (stable := high_watermark(committed, tp)) < high:
            if time.monotonic() > deadline:
                raise HangingTransaction(
                    f"{tp.topic}[{tp.partition}]: offsets {stable} to {high - 1} stayed behind an open "
                    f"transaction for {settle:.0f}s; Kafka lost its marker (`kafka-transactions.sh "
                    "find-hanging` lists it). Not restoring a state store without them."
                )
            time.sleep(0.5)
        return high
    finally:
        probe.close()


def end_offsets(settings: Settings, topic: str) -> dict[int, int]:
    """Each partition's end offset (high watermark) now; raises KafkaUnavailable or UnknownTopic."""
    consumer = Consumer(config.consumer(settings, f"tidings-ends-{uuid.uuid4()}"))
    try:
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        if meta.error is not None:
            raise UnknownTopic(unknown_topic(settings, topic))
        return {p: high_watermark(consumer, TopicPartition(topic, p), 10.0) for p in sorted(meta.partitions)}
    except KafkaException as exc:
        raise KafkaUnavailable(f"no end offsets for {topic}: {exc}") from None
    finally:
        consumer.close()


def high_watermark(consumer: Consumer, tp: TopicPartition, timeout: float = 30.0) -> int:
    """The partition's end offset, retrying while leadership settles (a just-created topic)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return int(consumer.get_watermark_offsets(tp, timeout=10)[1])
        except KafkaException as exc:
            if not exc.args[0].retriable() and exc.args[0].code() != KafkaError.NOT_LEADER_FOR_PARTITION:
                raise
            if time.monotonic() > deadline:
                raise KafkaUnavailable(f"no end offset for {tp.topic}[{tp.partition}]: {exc}") from exc
            time.sleep(0.2)


def unknown_topic(settings: Settings, topic: str) -> str:
    return (
        f"no topic {topic!r} at {settings.kafka_bootstrap}"
        + (f" (topics here carry the prefix {settings.topic_prefix!r})" if settings.topic_prefix else "")
        + "; `tidings topics apply` creates tidings' topics"
    )


class TopicFollower:
    """Reads a whole topic into the caller without a group: `catch_up()` to its end, then `poll()`.

    Its fetches wait at most 20 ms at the broker: an end-offset query queues behind an open long-poll
    fetch on the same connection, and the default 500 ms wait made every query cost half a second.
    """

    def __init__(self, settings: Settings, topic: str) -> None:
        self.topic = topic
        self.consumer = Consumer(
            config.consumer(settings, f"tidings-follower-{uuid.uuid4()}", **{"fetch.wait.max.ms": 20})
        )
        meta = self.consumer.list_topics(topic, timeout=10).topics[topic]
        self.exists = meta.error is None
        self.partitions = sorted(meta.partitions)
        self.consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in self.partitions])

    def catch_up(self, timeout: float = 60.0) -> list[Incoming]:
        return [r for batch in self.batches(500, timeout) for r in batch]

    def end_total(self) -> int:
        """How many records the topic holds now (end minus start offsets, control records included)."""
        total = 0
        for p in self.partitions:
            low, high = self.consumer.get_watermark_offsets(TopicPartition(self.topic, p), timeout=10)
            total += max(0, high - max(low, 0))
        return total

    def start_total(self) -> int:
        """How many records the topic no longer holds: its partitions' start offsets, moved on by
        retention or deleted records."""
        return sum(self._start(p) for p in self.partitions)

    def batches(
        self, size: int = 500, timeout: float = 60.0, partitions: Sequence[int] | None = None
    ) -> Iterator[list[Incoming]]:
        """Batches up to the topic's end as of the call; `timeout` bounds a stretch without progress
        while the caller reads (not while it holds the iterator between batches). `partitions` reads
        those alone, from their start.

        A partition retention emptied (start == end > 0: a quiet partition of a topic kept 30 days)
        has nothing to read, and its position stays unset (librdkafka reports no position before a
        record is consumed): waiting for it to reach the end stalled `tidings audit`, `replay`, `dlq`
        and `projections rebuild` for the whole timeout, then failed them."""
        chosen = self.partitions if partitions is None else sorted(partitions)
        if partitions is not None:
            self.consumer.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in chosen])
        ends = {p: high_watermark(self.consumer, TopicPartition(self.topic, p)) for p in chosen}
        empty = {p for p in chosen if self._start(p) >= ends[p]}
        deadline = time.monotonic() + timeout
        while True:
            got = self.poll(size, timeout=0.2)
            if got:
                yield got
                deadline = time.monotonic() + timeout
            positions = self.consumer.position([TopicPartition(self.topic, p) for p in chosen])
            if all(tp.offset >= ends[tp.partition] or tp.partition in empty for tp in positions):
                return
            if time.monotonic() > deadline:
                raise KafkaUnavailable(f"{self.topic} not read to its end: no progress for {timeout:.0f}s")

    def records(self, partition: int, size: int = 500) -> Iterator[Incoming]:
        """One partition's records from its start to its end as of the call."""
        for batch in self.batches(size, partitions=[partition]):
            yield from batch

    def _start(self, partition: int) -> int:
        low, _ = self.consumer.get_watermark_offsets(TopicPartition(self.topic, partition), timeout=10)
        return max(int(low), 0)

    def poll(self, max_records: int = 500, timeout: float = 0.0) -> list[Incoming]:
        return [to_incoming(m) for m in self.consumer.consume(max_records, timeout) if m.error() is None]

    def close(self) -> None:
        self.consumer.close()


def log_ordered(followers: Sequence[TopicFollower], size: int = 500) -> Iterator[list[Incoming]]:
    """The followers' topics to their ends as of the call, in batches of at most `size`, partition
    number by partition number: the co-partitioned records of one number merged by timestamp, the
    followers' order breaking ties, as the router's `Aligner` releases them. A projection rebuilt from
    two topics (recipients and feedback) then folds each key's events in the order the router did;
    read one topic after the other, an address set again after a bounce to it came back suppressed.
    Each topic's own order is kept, whatever its timestamps."""
    rank = {f.topic: i for i, f in enumerate(followers)}
    for number in sorted({p for f in followers for p in f.partitions}):
        streams = [f.records(number, size) for f in followers if number in f.partitions]
        merged = heapq.merge(*streams, key=lambda r: (r.timestamp_ms, rank[r.topic]))
        while batch := list(itertools.islice(merged, size)):
            yield batch
