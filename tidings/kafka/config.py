"""librdkafka configuration shared by every client tidings creates."""

from __future__ import annotations

import logging
from typing import Any

from tidings.config import Settings


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
