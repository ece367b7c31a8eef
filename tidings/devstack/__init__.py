"""The local stack: Kafka, PostgreSQL and Redis on loopback ports, data under `.devstack/`.

A service whose `TIDINGS_*` variable is set is external: it is used as it is, never started or stopped.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from tidings.config import Settings
from tidings.devstack import kafka, postgres, redis
from tidings.devstack.common import ServiceStatus

EXTERNAL_ENV = {
    "kafka": "TIDINGS_KAFKA_BOOTSTRAP",
    "postgres": "TIDINGS_POSTGRES_DSN",
    "redis": "TIDINGS_REDIS_URL",
}
_UP: dict[str, Callable[[Settings], str]] = {"kafka": kafka.up, "postgres": postgres.up, "redis": redis.up}
_DOWN: dict[str, Callable[[], bool]] = {"kafka": kafka.down, "postgres": postgres.down, "redis": redis.down}


def is_external(service: str) -> bool:
    return EXTERNAL_ENV[service] in os.environ


def up(settings: Settings, report: Callable[[str, str], None] = lambda s, m: None) -> None:
    for service, start in _UP.items():
        report(service, "external, not started" if is_external(service) else start(settings))


def down(report: Callable[[str, str], None] = lambda s, m: None) -> None:
    for service, stop in _DOWN.items():
        if is_external(service):
            report(service, "external, left running")
        else:
            report(service, "stopped" if stop() else "was not running")


def status(settings: Settings) -> list[ServiceStatus]:
    return [kafka.status(settings), postgres.status(settings), redis.status(settings)]


def env(settings: Settings) -> dict[str, str]:
    return {
        "TIDINGS_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "TIDINGS_POSTGRES_DSN": settings.postgres_dsn,
        "TIDINGS_REDIS_URL": settings.redis_url,
    }


__all__ = ["ServiceStatus", "down", "env", "is_external", "status", "up"]
