"""Consumes topics read_committed for a sink that stores its own offsets (a projection in PostgreSQL).

The handler writes a batch and the batch's next offsets in one external transaction; on assignment the
loop seeks each partition to the offset the sink holds (or the beginning), so the sink sees every record
exactly once however the process dies. Nothing is committed to Kafka. A retriable error rewinds the
batch and retries it after a back-off; any other error stops the loop (the sink decides what is poison).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition

from tidings.config import Settings
from tidings.kafka import config
from tidings.kafka.records import Incoming
from tidings.kafka.transactional import first_offsets, is_retriable, to_incoming

log = logging.getLogger(__name__)
TP = tuple[str, int]
BatchHandler = Callable[[list[Incoming]], None]
OffsetLoader = Callable[[list[TP]], dict[TP, int]]


class StoredOffsetsLoop:
    def __init__(
        self,
        settings: Settings,
        *,
        group_id: str,
        topics: Sequence[str],
        handle_batch: BatchHandler,
        load_offsets: OffsetLoader,
        batch_size: int = 2000,
        poll_timeout: float = 0.2,
        retry_backoff: float = 1.0,
    ) -> None:
        self.topics = list(topics)
        self.handle_batch = handle_batch
        self.load_offsets = load_offsets
        self.batch_size = batch_size
        self.poll_timeout = poll_timeout
        self.retry_backoff = retry_backoff
        self.consumer = Consumer(config.consumer(settings, group_id))
        self.stopping = threading.Event()
        self.handled = 0
        self.first_batch_at: float | None = None
        self.last_batch_at: float | None = None

    def _assigned(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        stored = self.load_offsets([(p.topic, p.partition) for p in partitions])
        for p in partitions:
            p.offset = stored.get((p.topic, p.partition), OFFSET_BEGINNING)
        consumer.assign(partitions)

    def stop(self) -> None:
        self.stopping.set()

    def run(self, *, idle_exit_after: float | None = None) -> None:
        self.consumer.subscribe(self.topics, on_assign=self._assigned)
        last_input = time.monotonic()
        try:
            while not self.stopping.is_set():
                batch = []
                for m in self.consumer.consume(self.batch_size, self.poll_timeout):
                    if (err := m.error()) is None:
                        batch.append(to_incoming(m))
                    elif err.fatal():
                        raise KafkaException(err)
                if batch or not self.consumer.assignment():
                    last_input = time.monotonic()
                if batch:
                    self._process(batch)
                elif idle_exit_after is not None and time.monotonic() - last_input > idle_exit_after:
                    return
        finally:
            self.consumer.close()

    def _process(self, batch: list[Incoming]) -> None:
        if self.first_batch_at is None:
            self.first_batch_at = time.monotonic()
        try:
            self.handle_batch(batch)
        except Exception as exc:
            if not is_retriable(exc):
                raise
            log.warning("retriable failure, rewinding the batch: %s", exc)
            for tp in first_offsets(batch):
                self.consumer.seek(tp)
            time.sleep(self.retry_backoff)
            return
        self.handled += len(batch)
        self.last_batch_at = time.monotonic()
