"""Consumes outputs and consumed offsets; produces them in the transactions of one transactional producer.

Every call that waits on the broker runs under a deadline (`guard`). `replace()` swaps in a new producer
with the same transactional id, whose `init()` fences the old one.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable
from typing import Any, cast

from confluent_kafka import KafkaError, KafkaException, Producer, TopicPartition

from tidings.config import Settings
from tidings.kafka import config, guard
from tidings.kafka.messages import partition_of
from tidings.kafka.records import Output

log = logging.getLogger(__name__)

TXN_TIMEOUT_S = 30.0
MAX_COMMIT_RETRIES = 5


def default_slot() -> str:
    """The transactional slot of a processor started without `--instance`: host and process id. With
    the host alone, two processes on one machine (one per core, as the CLI advises) shared a
    transactional id and fenced each other until both gave up. In a container the process id is 1, so
    a restarted container keeps its slot; elsewhere a restart takes a new one, and what its killed
    predecessor left open is aborted by the transaction timeout instead of at once (`--instance`)."""
    return f"{socket.gethostname()}-{os.getpid()}"


class Transactions:
    def __init__(
        self, settings: Settings, transactional_id: str, overrides: dict[str, Any] | None = None
    ) -> None:
        self.producer_config = config.producer(
            settings,
            **{
                "transactional.id": transactional_id,
                "transaction.timeout.ms": 30_000,
                "linger.ms": 10,
                **(overrides or {}),
            },
        )
        self.producer = Producer(self.producer_config)

    def replace(self) -> None:
        self.producer = Producer(self.producer_config)

    def init(self, stopping: threading.Event, max_replacements: int) -> None:
        """Initialise transactions (fencing any earlier producer of our transactional id). A producer
        whose init does not return in time is replaced, as a hung commit's would be."""
        replaced = 0
        while True:
            try:
                guard.within(
                    TXN_TIMEOUT_S + 15,
                    lambda: self.producer.init_transactions(TXN_TIMEOUT_S),
                    "init_transactions",
                )
                return
            except KafkaException as exc:
                err: KafkaError = exc.args[0]
                if stopping.is_set():
                    raise
                if err.retriable():
                    log.warning("initialising transactions, retrying: %s", err)
                elif config.is_fatal(err) and replaced < max_replacements:
                    replaced += 1
                    log.error("replacing the producer: %s", err)
                    self.replace()
                else:
                    raise

    def begin(self) -> None:
        self.producer.begin_transaction()

    def produce(self, out: Output) -> None:
        while True:
            try:
                self.producer.produce(
                    out.topic, out.value, out.key, partition=partition_of(out), headers=cast(Any, out.headers)
                )
                return
            except BufferError:
                self.producer.poll(0.05)

    def send_offsets(self, offsets: list[TopicPartition], group: Any) -> None:
        guard.within(
            TXN_TIMEOUT_S + 15,
            lambda: self.producer.send_offsets_to_transaction(offsets, group, TXN_TIMEOUT_S),
            "send_offsets_to_transaction",
        )

    def commit(self) -> None:
        self._retrying("commit_transaction", lambda: self.producer.commit_transaction(TXN_TIMEOUT_S))

    def abort(self) -> None:
        self._retrying("abort_transaction", lambda: self.producer.abort_transaction(TXN_TIMEOUT_S))

    def _retrying(self, what: str, call: Callable[[], None]) -> None:
        """Commit or abort the open transaction, again while the broker answers with a retriable error."""
        for attempt in range(MAX_COMMIT_RETRIES):
            try:
                guard.within(TXN_TIMEOUT_S + 15, call, what)
                return
            except KafkaException as exc:
                err: KafkaError = exc.args[0]
                if not err.retriable() or attempt == MAX_COMMIT_RETRIES - 1:
                    raise
                log.warning("retrying %s: %s", what, err)
