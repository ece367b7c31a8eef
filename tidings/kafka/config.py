"""librdkafka configuration and error classification shared by every client tidings creates."""

from __future__ import annotations

import logging
from typing import Any

from confluent_kafka import KafkaError

from tidings.config import Settings


def is_fatal(err: KafkaError) -> bool:
    """The client is unusable: librdkafka flags the error fatal, or reports `_FATAL` in a message.

    A consumed message carrying `_FATAL` (say, a static member fenced after its session timed out
    while the broker was down) is not itself flagged fatal; treating it as a warning left the consumer
    polling a dead client forever.
    """
    return bool(err.fatal()) or err.code() == KafkaError._FATAL


def base(settings: Settings, **overrides: Any) -> dict[str, Any]:
    conf: dict[str, Any] = {
        "bootstrap.servers": settings.kafka_bootstrap,
        "client.id": settings.client_id,
        "log.connection.close": False,
        "logger": logging.getLogger("tidings.librdkafka"),
    }
    conf.update(overrides)
    return conf


def producer(settings: Settings, **overrides: Any) -> dict[str, Any]:
    return base(
        settings,
        **{
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "compression.type": "lz4",
            "partitioner": "murmur2_random",
            "message.max.bytes": 2_000_000,
            **overrides,
        },
    )


def consumer(settings: Settings, group_id: str, **overrides: Any) -> dict[str, Any]:
    return base(
        settings,
        **{
            "group.id": group_id,
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "enable.partition.eof": False,
            "session.timeout.ms": 10_000,
            "heartbeat.interval.ms": 1_000,
            **overrides,
        },
    )
