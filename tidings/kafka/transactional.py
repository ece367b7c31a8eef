"""Consumes input topics; produces the handler's outputs exactly once (Kafka transactions, KIP-447).

One transactional producer per process. Each polled batch is one transaction holding the outputs, any
dead letters and the consumed offsets (`send_offsets_to_transaction` with the consumer group metadata, so
a zombie from an older group generation is fenced). Consumers read `read_committed`. Rebalances happen
only inside `consume()`, when no transaction is open, so a revoked partition never has uncommitted work.

A record whose handler raises a non-retriable error is a poison record: it is dead-lettered inside the
same transaction and the loop goes on. A retriable error aborts the transaction, rewinds the batch and
retries it after a back-off. After an abort the batch is re-read from its first offset.

A record whose headers cannot be read (a header key that is not UTF-8) is handled without them, as the
projections apply it: the processors here read headers for trace context only, and an erasure or an
opt-out dead-lettered by the router but applied by the projections left the person routed to while the
API showed them erased (review, session 27). The gateways, whose commands carry retry times in headers,
dead-letter such a record instead.

`transactional_id` must be stable per process slot (say `router-0`), so a restarted process fences its
killed predecessor at once instead of waiting for the broker to time its transaction out. With
`static_membership` it is also the consumer's `group.instance.id`: a restart reclaims the same partitions
without a rebalance.

A client that becomes unusable (a fatal error: a static member fenced after its session timed out while
the broker was down, a producer fenced after its transaction timed out) is replaced in-process, exactly
as a restart would: new consumer and producer, `init_transactions` aborts whatever was open, the state
stores are dropped and restored on the new assignment, and input is re-read from the committed offsets.
More than `MAX_RECOVERIES` within `RECOVERY_WINDOW_S` raises instead, so a persistent fault still stops
the process with its error rather than spinning. A Kafka error while partitions are being assigned (the
broker lost while the stores restore) is recovered the same way: raised from the assignment callback, it
stopped the process, which its supervisor restarted into the same outage.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from tidings.config import Settings
from tidings.errors import KafkaUnavailable
from tidings.kafka import config, guard
from tidings.kafka.align import Aligner
from tidings.kafka.messages import first_offsets, is_retriable, lag_of, next_offsets, to_incoming
from tidings.kafka.records import Handler, Incoming, Output, PoisonHandler, dead_letter, size_checked
from tidings.kafka.stores import TransactionalState as TransactionalState
from tidings.kafka.txn import MAX_COMMIT_RETRIES as MAX_COMMIT_RETRIES
from tidings.kafka.txn import TXN_TIMEOUT_S as TXN_TIMEOUT_S
from tidings.kafka.txn import Transactions
from tidings.metrics import Sample, lag_samples
from tidings.topics import names

log = logging.getLogger(__name__)


PartitionsCallback = Callable[[list[tuple[str, int]]], None]
MAX_RECOVERIES = 5
RECOVERY_WINDOW_S = 300.0


class TransactionalLoop:
    def __init__(
        self,
        settings: Settings,
        *,
        group_id: str,
        topics: Sequence[str],
        handle: Handler,
        transactional_id: str,
        on_poison: PoisonHandler | None = None,
        on_assign: PartitionsCallback | None = None,
        on_revoke: PartitionsCallback | None = None,
        batch_size: int = 500,
        poll_timeout: float = 0.1,
        static_membership: bool = False,
        stores: Sequence[TransactionalState] = (),
        before_batch: Callable[[], None] | None = None,
        align_max_idle: float | None = None,
        align_first: Sequence[str] = (),
        consumer_overrides: dict[str, Any] | None = None,
        producer_overrides: dict[str, Any] | None = None,
        punctuate: Callable[[], list[Output]] | None = None,
        punctuate_every: float = 0.2,
        pending: Callable[[], bool] | None = None,
        eager: Callable[[], bool] | None = None,
    ) -> None:
        """`punctuate` runs every `punctuate_every` seconds between batches: its outputs and the stores'
        staged writes commit in a transaction of their own (timers firing without input). While
        `pending()` is true the loop does not count as idle. While `eager()` is true the punctuation has
        work in hand (a broadcast being expanded): it runs after every poll and polls do not wait, so
        that work goes at full speed with input still interleaved between its transactions."""
        self.group_id = group_id
        self.dlq_topic = names(settings).dlq
        self.topics = list(topics)
        self.handle = handle
        self.on_poison = on_poison
        self.batch_size = batch_size
        self.poll_timeout = poll_timeout
        self._on_assign = on_assign
        self._on_revoke = on_revoke
        self.settings = settings
        self.stores = list(stores)
        self.before_batch = before_batch
        self.punctuate, self.punctuate_every, self.pending = punctuate, punctuate_every, pending
        self.eager = eager
        self._eager_after = 0.0
        self._assigned_at = 0.0
        self._assigning: list[TopicPartition] = []
        self._committed: dict[tuple[str, int], int] = {}
        self._assigned_high: dict[tuple[str, int], int] = {}
        self._punctuated = 0.0
        self.aligner = Aligner(align_max_idle, first=align_first) if align_max_idle is not None else None
        self._paused: set[tuple[str, int]] = set()
        membership: dict[str, Any] = {"group.instance.id": transactional_id} if static_membership else {}
        if self.stores:
            membership["partition.assignment.strategy"] = "range"  # co-partitioned inputs, one state slice
        self._consumer_config = config.consumer(
            settings, group_id, **membership, **(consumer_overrides or {})
        )
        self.consumer = Consumer(self._consumer_config)
        self.txn = Transactions(settings, transactional_id, producer_overrides)
        self.recoveries: list[float] = []
        self.stopping = threading.Event()
        self.committed_batches = 0
        self.committed_records = 0
        self.first_batch_at: float | None = None
        self.last_commit_at: float | None = None
        self.aborted_batches = 0
        self.dead_letters = 0
        self.recovered = 0
        self.lag: dict[tuple[str, int], int] = {}
        self._lag_at = 0.0
        self.partition_counts: dict[str, int] = {}

    @property
    def producer(self) -> Producer:
        return self.txn.producer

    def _assigned(self, _c: Consumer, partitions: list[TopicPartition]) -> None:
        from tidings.kafka.consumer import read_partition

        self._assigning = list(partitions)
        for number in sorted({p.partition for p in partitions}):
            for store in self.stores:
                keys = store.restore(number, read_partition(self.settings, store.topic, number))
                log.info("restored %s[%d]: %d keys", store.topic, number, keys)
        if self._consumer_config.get("auto.offset.reset") == "latest":
            self._pin_start(partitions)
        if self.punctuate is not None:
            self._seed_fence(partitions)
        for topic in sorted({p.topic for p in partitions}):
            meta = self.consumer.list_topics(topic, timeout=30).topics[topic]
            self.partition_counts[topic] = len(meta.partitions)
        self._assigned_at = time.monotonic()
        self._assigning = []
        if self._on_assign:
            self._on_assign([(p.topic, p.partition) for p in partitions])

    def _pin_start(self, partitions: list[TopicPartition]) -> None:
        """Commits the end of each assigned partition the group has no offset for, where `latest` starts
        it: otherwise that start held only until a restart, which began at the end again, past whatever
        reached the partition meanwhile (the relay lost the outcomes of every partition it had not
        relayed from yet). Left to `latest` if the coordinator does not answer."""
        from tidings.kafka.consumer import high_watermark

        try:
            unset = [tp for tp in self.consumer.committed(partitions, timeout=30) if tp.offset < 0]
            ends = [TopicPartition(tp.topic, tp.partition, high_watermark(self.consumer, tp)) for tp in unset]
            if ends:
                self.consumer.commit(offsets=ends, asynchronous=False)
        except (KafkaException, KafkaUnavailable) as exc:
            log.warning("start offsets not committed, a restart may start later: %s", exc)

    def _seed_fence(self, partitions: list[TopicPartition]) -> None:
        """The committed offsets of newly assigned partitions (the low watermark where the group has
        none: with `auto.offset.reset=earliest` that is where it would start), so punctuations are fenced
        from the start, not only after the first batch. Not `position()`: the aligner may hold records
        consumed but not yet processed. Also each partition's end as it is now, for `caught_up`. If the
        coordinator does not answer, fencing waits for the first batch's commit, as before."""
        try:
            for tp in self.consumer.committed(partitions, timeout=30):
                low, high = self.consumer.get_watermark_offsets(tp, timeout=10, cached=False)
                self._committed[(tp.topic, tp.partition)] = tp.offset if tp.offset >= 0 else low
                self._assigned_high[(tp.topic, tp.partition)] = high
        except KafkaException as exc:
            log.warning("punctuations unfenced until the first batch commits: %s", exc)

    def _revoked(self, _c: Consumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self._committed.pop((tp.topic, tp.partition), None)
            self._assigned_high.pop((tp.topic, tp.partition), None)
        for number in {p.partition for p in partitions}:
            for store in self.stores:
                store.drop(number)
        if self.aligner:
            self.aligner.drop((p.topic, p.partition) for p in partitions)
            self._paused -= {(p.topic, p.partition) for p in partitions}
        if self._on_revoke:
            self._on_revoke([(p.topic, p.partition) for p in partitions])

    def run(self, *, idle_exit_after: float | None = None) -> None:
        """Loop until `stop()`; with `idle_exit_after`, also return after that many seconds with partitions
        assigned and no input. Time spent in an assignment (restoring stores) is not idle time: a short
        `idle_exit_after` would otherwise end the loop before its first fetch."""
        self._start()
        last_input = time.monotonic()
        try:
            while not self.stopping.is_set():
                try:
                    last_input = self._step(last_input)
                except (KafkaException, KafkaUnavailable) as exc:
                    fatal = isinstance(exc, KafkaException) and config.is_fatal(exc.args[0])
                    if not (fatal or self._assigning):
                        raise
                    self._recover(exc)
                    last_input = time.monotonic()
                if idle_exit_after is not None and time.monotonic() - last_input > idle_exit_after:
                    return
        finally:
            self.consumer.close()

    def _start(self) -> None:
        """Initialise transactions (fencing any earlier producer of our transactional id), then subscribe."""
        self.txn.init(self.stopping, MAX_RECOVERIES)
        self.consumer.subscribe(
            self.topics, on_assign=self._assigned, on_revoke=self._revoked, on_lost=self._revoked
        )

    def _recover(self, exc: KafkaException | KafkaUnavailable) -> None:
        now = time.monotonic()
        self.recoveries = [t for t in self.recoveries if now - t < RECOVERY_WINDOW_S] + [now]
        if len(self.recoveries) > MAX_RECOVERIES:
            raise exc
        log.error("Kafka client unusable, replacing consumer and producer: %s", exc)
        self.recovered += 1
        for store in self.stores:
            store.aborted()
        try:
            assigned = self.consumer.assignment()
        except KafkaException:
            assigned = []
        held = {(p.topic, p.partition) for p in assigned}
        assigned += [p for p in self._assigning if (p.topic, p.partition) not in held]
        self._assigning = []
        self._revoked(self.consumer, assigned)
        self._committed.clear()
        if self.aligner:
            self.aligner.clear()
        self._paused.clear()
        try:
            guard.within(30, self.consumer.close, "closing the consumer")
        except KafkaException as close_error:
            log.warning("closing the unusable consumer: %s", close_error)
        self.consumer = Consumer(self._consumer_config)
        self.txn.replace()
        self._start()

    def _step(self, last_input: float) -> float:
        """One poll, its batch and a due punctuation; returns when input was last seen."""
        backlog = self.aligner is not None and self.aligner.pending() >= self.batch_size
        eager = self.eager is not None and time.monotonic() >= self._eager_after and self.eager()
        msgs = self.consumer.consume(self.batch_size, 0 if backlog or eager else self.poll_timeout)
        batch = [to_incoming(m) for m in msgs if self._usable(m)]
        if self.aligner:
            batch = self._aligned(batch)
        busy = self.aligner is not None and self.aligner.pending() > 0
        if batch or not self.consumer.assignment() or busy or (self.pending and self.pending()):
            last_input = time.monotonic()
        last_input = max(last_input, self._assigned_at)
        if batch:
            self.process(batch)
        if self.punctuate and (eager or time.monotonic() - self._punctuated >= self.punctuate_every):
            self._punctuate()
        if time.monotonic() - self._lag_at >= 1.0:
            self._measure_lag()
        return last_input

    def _measure_lag(self) -> None:
        self._lag_at = time.monotonic()
        self.lag = lag_of(self.consumer)

    def samples(self) -> list[Sample]:
        """The loop's counters and lag, read by a metrics scrape on another thread."""
        counters = {
            "records_committed": self.committed_records,
            "batches_committed": self.committed_batches,
            "batches_aborted": self.aborted_batches,
            "dead_letters": self.dead_letters,
            "client_recoveries": self.recovered,
        }
        return [Sample(name, value) for name, value in counters.items()] + lag_samples(self.lag)

    def stop(self) -> None:
        self.stopping.set()

    def _aligned(self, records: list[Incoming]) -> list[Incoming]:
        """Buffer, release in timestamp order, and pause topic-partitions that run far ahead."""
        assert self.aligner is not None
        self.aligner.add(records)
        assigned = [(tp.topic, tp.partition) for tp in self.consumer.assignment()]
        released = self.aligner.release(assigned, self.caught_up, self.batch_size)
        for tp in assigned:
            pending = self.aligner.pending(tp)
            if pending > 4 * self.batch_size and tp not in self._paused:
                self.consumer.pause([TopicPartition(*tp)])
                self._paused.add(tp)
            elif pending < self.batch_size and tp in self._paused:
                self.consumer.resume([TopicPartition(*tp)])
                self._paused.discard(tp)
        return released

    def caught_up(self, topic: str, partition: int) -> bool:
        """Whether this process has consumed and handled everything in the partition fetched so far (none
        of it is waiting in the aligner).
        A partition it has consumed nothing from since its assignment has no position: then the group's
        committed offset says how far it was handled (a restart with nothing new to read is caught up).
        The end is at least the one read fresh at the assignment: librdkafka's cached watermark can be a
        previous assignment's, older than records written while another member had the partition."""
        if self.aligner is not None and self.aligner.pending((topic, partition)):
            return False
        tp = TopicPartition(topic, partition)
        low, high = self.consumer.get_watermark_offsets(tp, cached=True)
        high = max(high, self._assigned_high.get((topic, partition), -1))
        if high < 0:
            return False  # no fetch response yet: unknown, so not caught up
        if high <= max(low, 0):
            return True
        [position] = self.consumer.position([tp])
        done = max(position.offset, self._committed.get((topic, partition), -1))
        return done >= high

    def _usable(self, msg: Message) -> bool:
        err = msg.error()
        if err is None:
            return True
        if config.is_fatal(err):
            raise KafkaException(err)
        log.warning("consumer error: %s", err)
        return False

    def _outputs(self, record: Incoming) -> Iterable[Output]:
        if record.unreadable is not None:
            log.warning(
                "%s[%d]@%d applied without its headers: %s",
                record.topic,
                record.partition,
                record.offset,
                record.unreadable,
            )
        try:
            outputs = size_checked(self.handle(record))
            for store in self.stores:
                store.record_done()
            return outputs
        except Exception as exc:
            if is_retriable(exc):
                raise
            for store in self.stores:
                store.record_failed()
            log.warning("dead-lettering %s[%d]@%d: %s", record.topic, record.partition, record.offset, exc)
            self.dead_letters += 1
            letter = dead_letter(record, exc, self.group_id, self.dlq_topic)
            return [*self._poison_outputs(record, exc), letter]

    def _poison_outputs(self, record: Incoming, exc: Exception) -> list[Output]:
        """What the handler adds to a poison record's dead letter, if anything. A failure here must not
        escape: the record would stop the loop on every restart instead of going to the DLQ."""
        if self.on_poison is None:
            return []
        try:
            return list(self.on_poison(record, exc))
        except Exception:
            log.exception("on_poison failed for %s[%d]@%d", record.topic, record.partition, record.offset)
            return []

    def process(self, batch: list[Incoming]) -> None:
        """One transaction: outputs of every record in the batch plus the batch's offsets."""
        if self.first_batch_at is None:
            self.first_batch_at = time.monotonic()
        if self.before_batch:
            self.before_batch()
        self.txn.begin()
        try:
            for record in batch:
                for out in self._outputs(record):
                    self.txn.produce(out)
            for store in self.stores:
                for out in store.changelog():
                    self.txn.produce(out)
            offsets = next_offsets(batch)
            self.txn.send_offsets(offsets, self.consumer.consumer_group_metadata())
            self.txn.commit()
            for store in self.stores:
                store.committed()
            self._committed.update(((tp.topic, tp.partition), tp.offset) for tp in offsets)
            self.committed_batches += 1
            self.committed_records += len(batch)
            self.last_commit_at = time.monotonic()
        except KafkaException as exc:
            err: KafkaError = exc.args[0]
            if not (err.txn_requires_abort() or err.retriable()):
                raise
            log.warning("aborting transaction: %s", err)
            self._abort(batch)
        except Exception as exc:
            if not is_retriable(exc):
                raise
            log.warning("retriable failure, retrying batch: %s", exc)
            self._abort(batch)
            time.sleep(1.0)

    def _punctuate(self) -> None:
        assert self.punctuate is not None
        self._punctuated = time.monotonic()
        outputs = self.punctuate()
        for store in self.stores:
            store.record_done()
        changelog = [out for store in self.stores for out in store.changelog()]
        if not outputs and not changelog:
            return
        self.txn.begin()
        try:
            for out in [*outputs, *changelog]:
                self.txn.produce(out)
            self._fence()
            self.txn.commit()
        except Exception as exc:
            for store in self.stores:
                store.aborted()
            err = exc.args[0] if isinstance(exc, KafkaException) else None
            if err is not None and config.is_fatal(err):
                raise
            self.txn.abort()
            if err is not None and (err.txn_requires_abort() or err.retriable()):
                log.warning("aborted a punctuation, its timers fire on the next one: %s", exc)
                self._eager_after = time.monotonic() + 0.5
                return
            raise
        for store in self.stores:
            store.committed()

    def _fence(self) -> None:
        """Send the offsets already committed with the group's metadata, so a punctuation of a zombie
        (a process whose partitions the group gave to another member meanwhile) fails like its batches
        would (KIP-447), instead of committing timers or expansions the new owner also commits."""
        if not self._committed:
            return
        offsets = [TopicPartition(t, p, o) for (t, p), o in self._committed.items()]
        self.txn.send_offsets(offsets, self.consumer.consumer_group_metadata())

    def _abort(self, batch: list[Incoming]) -> None:
        for store in self.stores:
            store.aborted()
        self.txn.abort()
        self.aborted_batches += 1
        if self.aligner:
            self.aligner.drop((r.topic, r.partition) for r in batch)
        for tp in first_offsets(batch):
            try:
                self.consumer.seek(tp)
            except KafkaException as exc:
                log.info("not rewinding %s[%d] (no longer assigned): %s", tp.topic, tp.partition, exc)
