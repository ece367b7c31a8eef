"""Produces events and raw records with an idempotent producer; reports failed deliveries.

Each record's outcome is its own: `send()` waits for the record it produced (`wait`), and only the
failures of records nobody waited for are raised by `flush()`. With one list of failures for every
record, a waited send raised another record's failure (a record written reported as failed, retried,
and written twice) while the refused record's own `flush()` passed: lost without a word.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, cast

from confluent_kafka import KafkaError, Producer

from tidings.config import Settings
from tidings.errors import KafkaUnavailable, TidingsError
from tidings.kafka import config
from tidings.kafka.records import Output


class DeliveryFailed(TidingsError):
    """The broker refused or never acknowledged a record."""

    def __init__(self, message: str, retriable: bool) -> None:
        super().__init__(message)
        self.retriable = retriable


class Delivery:
    """One record's acknowledgement: `error` is set, or stays None, once `done` is."""

    __slots__ = ("done", "error", "waited")

    def __init__(self, waited: bool) -> None:
        self.done = threading.Event()
        self.error: KafkaError | None = None
        self.waited = waited


class EventProducer:
    """Idempotent (acks=all, enable.idempotence): a retried send never duplicates a record in the log."""

    def __init__(self, settings: Settings, **overrides: Any) -> None:
        self._producer = Producer(config.producer(settings, **overrides))
        self._errors: list[KafkaError] = []
        self._lock = threading.Lock()

    def _on_delivery(self, delivery: Delivery, err: KafkaError | None) -> None:
        delivery.error = err
        if err is not None and not delivery.waited:
            with self._lock:
                self._errors.append(err)
        delivery.done.set()

    def produce(self, output: Output, *, waited: bool = False) -> Delivery:
        """Queue a record. A `waited` record's failure is raised by `wait()` only, never by `flush()`."""
        delivery = Delivery(waited)
        while True:
            try:
                self._producer.produce(
                    output.topic,
                    output.value,
                    output.key,
                    partition=-1 if output.partition is None else output.partition,
                    headers=cast(Any, output.headers),
                    on_delivery=lambda err, _msg: self._on_delivery(delivery, err),
                )
                break
            except BufferError:
                self._producer.poll(0.1)
        self._producer.poll(0)
        return delivery

    def wait(self, delivery: Delivery, timeout: float = 30.0) -> None:
        """Until the broker acknowledged this record; DeliveryFailed if it refused it."""
        deadline = time.monotonic() + timeout
        while not delivery.done.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise KafkaUnavailable(f"the record was not acknowledged within {timeout}s")
            self._producer.poll(min(0.1, remaining))
        if (err := delivery.error) is not None:
            raise DeliveryFailed(f"the record failed: {err.str()}", retriable=err.retriable())

    def flush(self, timeout: float = 30.0) -> None:
        """Until every record is acknowledged; DeliveryFailed for those nobody waited for that failed."""
        remaining = self._producer.flush(timeout)
        if remaining:
            raise KafkaUnavailable(f"{remaining} records not acknowledged within {timeout}s")
        with self._lock:
            errors, self._errors = self._errors, []
        if errors:
            first = errors[0]
            raise DeliveryFailed(f"{len(errors)} records failed: {first.str()}", retriable=first.retriable())

    def close(self, timeout: float = 30.0) -> None:
        self.flush(timeout)

    def __enter__(self) -> EventProducer:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        closed_after(self.close, exc, "producer")


def closed_after(close: Callable[[], None], exc: BaseException | None, what: str) -> None:
    """`close()` on leaving a `with` block; while `exc` propagates, a failure to close becomes a note on
    it instead of replacing it (a flush timing out hid the send's error and the id to retry with)."""
    if exc is None:
        close()
        return
    try:
        close()
    except TidingsError as closing:
        exc.add_note(f"and closing the {what} failed too: {closing}")
