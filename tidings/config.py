"""Settings from the environment (`TIDINGS_*`), defaulting to the local dev stack's loopback ports.

The dev stack's own ports can be moved with `TIDINGS_DEV_KAFKA_PORT`, `TIDINGS_DEV_POSTGRES_PORT` and
`TIDINGS_DEV_REDIS_PORT` (read once, at import).
"""

from __future__ import annotations

import os
from functools import cache

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEV_KAFKA_PORT = int(os.environ.get("TIDINGS_DEV_KAFKA_PORT", "19092"))
DEV_KAFKA_CONTROLLER_PORT = int(os.environ.get("TIDINGS_DEV_KAFKA_CONTROLLER_PORT", str(DEV_KAFKA_PORT + 1)))
DEV_POSTGRES_PORT = int(os.environ.get("TIDINGS_DEV_POSTGRES_PORT", "15432"))
DEV_REDIS_PORT = int(os.environ.get("TIDINGS_DEV_REDIS_PORT", "16379"))


PLACEHOLDER = "CHANGE-ME"
MIN_SECRET = 32


def own_secret(value: str, name: str) -> str:
    """A secret tidings signs tokens or derives tenants' keys with: at least `MIN_SECRET` characters,
    since anyone holding a token signed with it (every email's unsubscribe link) or a key derived from it
    (a tenant's Postmark password) can guess a short one offline, and never the example Secret's
    placeholder, which is public (deployed unchanged, it passed the length check)."""
    if PLACEHOLDER in value:
        raise ValueError(f"{name} is still the example's {PLACEHOLDER} placeholder")
    if len(value) < MIN_SECRET:
        raise ValueError(f"{name} must be at least {MIN_SECRET} characters")
    return value


class Settings(BaseSettings):
    """Example: `TIDINGS_KAFKA_BOOTSTRAP=broker:9092 tidings topics apply`."""

    model_config = SettingsConfigDict(env_prefix="TIDINGS_", frozen=True, hide_input_in_errors=True)

    kafka_bootstrap: str = f"127.0.0.1:{DEV_KAFKA_PORT}"
    postgres_dsn: str = f"postgresql://postgres@127.0.0.1:{DEV_POSTGRES_PORT}/tidings"
    redis_url: str = f"redis://127.0.0.1:{DEV_REDIS_PORT}/0"
    partitions: int = Field(default=6, ge=1, description="Partitions of every per-recipient topic.")
    replication_factor: int = Field(default=1, ge=1)
    retry_tiers: str = Field(default="10s,1m,10m,1h,6h", description="Retry tiers of every channel.")
    client_id: str = "tidings"
    topic_prefix: str = Field(default="", description="Prefix of every topic name, e.g. 'staging.'.")
    personal_data_days: int | None = Field(
        default=None,
        ge=7,
        description="Most days any topic that deletes old records keeps them (requests, recipient "
        "events, commands, outcomes, feedback, dead letters): an erasure is complete in Kafka after this "
        "long. Unset, each topic keeps its own retention (requests and recipient events forever).",
    )
    history_days: int | None = Field(
        default=None,
        ge=7,
        description="Days of history `tidings db prune` keeps in PostgreSQL (notifications, deliveries, "
        "timelines, in-app items, soft bounces). At least the 7-day soft-bounce window. Unset, nothing is "
        "pruned unless `--older-than` says how much to keep.",
    )
    metrics_port: int | None = Field(default=None, description="Serve /metrics of `tidings run` here.")
    metrics_host: str = "127.0.0.1"
    memory_limit_mb: int | None = Field(
        default=None,
        ge=64,
        description="Cap on a `tidings run` process's data segment: past it an allocation raises "
        "MemoryError (a template building a huge string is rejected) instead of the kernel killing the "
        "process and the restart meeting the same record. Set it below the container's memory limit.",
    )

    @model_validator(mode="after")
    def _retries_fit_the_cap(self) -> Settings:
        """A retry tier's topic keeps records 3 times the tier; a shorter cap would delete retries."""
        from tidings.topics import parse_tiers, tier_seconds

        if self.personal_data_days is not None:
            longest = max((tier_seconds(t) for t in parse_tiers(self.retry_tiers)), default=0)
            if 3 * longest > self.personal_data_days * 86_400:
                raise ValueError("personal_data_days is shorter than 3 times the longest retry tier")
        return self


@cache
def settings() -> Settings:
    return Settings()
