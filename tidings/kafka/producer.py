"""Produces events and raw records with an idempotent producer; reports failed deliveries on flush."""

from __future__ import annotations

from typing import Any, cast

from confluent_kafka import KafkaError, Message, Producer

from tidings.config import Settings
from tidings.errors import KafkaUnavailable, TidingsError
from tidings.kafka import config
from tidings.kafka.records import Output


class DeliveryFailed(TidingsError):
    """The broker refused or never acknowledged a record."""

    def __init__(self, message: str, retriable: bool) -> None:
        super().__init__(message)
        self.retriable = retriable


class EventProducer:
    """Idempotent (acks=all, enable.idempotence): a retried send never duplicates a record in the log."""

    def __init__(self, settings: Settings, **overrides: Any) -> None:
        self._producer = Producer(config.producer(settings, **overrides))
        self._errors: list[KafkaError] = []

    def _on_delivery(self, err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            self._errors.append(err)

    def produce(self, output: Output) -> None:
        while True:
            try:
                self._producer.produce(
                    output.topic,
                    output.value,
                    output.key,
                    partition=-1 if output.partition is None else output.partition,
                    headers=cast(Any, output.headers),
                    on_delivery=self._on_delivery,
                )
                break
            except BufferError:
                self._producer.poll(0.1)
        self._producer.poll(0)

    def flush(self, timeout: float = 30.0) -> None:
        remaining = self._producer.flush(timeout)
        if remaining:
            raise KafkaUnavailable(f"{remaining} records not acknowledged within {timeout}s")
        if self._errors:
            first, count = self._errors[0], len(self._errors)
            self._errors.clear()
            raise DeliveryFailed(f"{count} records failed: {first.str()}", retriable=first.retriable())

    def close(self, timeout: float = 30.0) -> None:
        self.flush(timeout)

    def __enter__(self) -> EventProducer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
