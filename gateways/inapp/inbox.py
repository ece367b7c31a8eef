"""Consumes in-app delivery commands; produces inbox rows in PostgreSQL and a doorbell on Redis.

Sending is an idempotent insert keyed by the delivery id (a redelivered command finds its row and
reports the same `seq`), then a PUBLISH on the recipient's doorbell channel for the edge's open
WebSockets. The row is the delivery: a doorbell that fails is logged and not retried, since the socket
re-reads the feed anyway. PostgreSQL unreachable is `ProviderUnavailable` (retry tiers); a row the
database refuses (a NUL byte, say) is rejected permanently.
"""

from __future__ import annotations

import asyncio
import logging

import aiohttp
import psycopg
import redis.asyncio as aioredis
from psycopg_pool import AsyncConnectionPool
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from gateways.base import DeliveryRejected, Provider, ProviderUnavailable, Sent
from gateways.inapp._feed import EXISTING, INSERT, doorbell
from tidings.config import settings as tidings_settings
from tidings.events import DeliveryCommand

log = logging.getLogger(__name__)


class InboxSettings(BaseSettings):
    """Defaults to the stack's own PostgreSQL, Redis and topic prefix (`TIDINGS_POSTGRES_DSN`, ...)."""

    model_config = SettingsConfigDict(env_prefix="TIDINGS_INBOX_", frozen=True)

    postgres_dsn: str | None = None
    redis_url: str | None = None
    prefix: str | None = None
    pool_size: int = Field(default=4, ge=1)


class Inbox(Provider):
    channel = "in_app"
    name = "inbox"
    settings_class = InboxSettings

    def __init__(self, settings: InboxSettings | None = None) -> None:
        self.settings = s = settings or InboxSettings()
        stack = tidings_settings() if None in (s.postgres_dsn, s.redis_url, s.prefix) else None
        self.dsn = s.postgres_dsn or (stack.postgres_dsn if stack else "")
        self.prefix = s.prefix if s.prefix is not None else (stack.topic_prefix if stack else "")
        self.redis = aioredis.Redis.from_url(s.redis_url or (stack.redis_url if stack else ""))
        self._pool: AsyncConnectionPool | None = None
        self._opening = asyncio.Lock()

    async def _connections(self) -> AsyncConnectionPool:
        async with self._opening:
            if self._pool is None:
                pool = AsyncConnectionPool(
                    self.dsn, min_size=1, max_size=self.settings.pool_size, open=False, timeout=10
                )
                await pool.open()
                self._pool = pool
        return self._pool

    async def send(self, session: aiohttp.ClientSession, command: DeliveryCommand) -> Sent:
        c = command.content
        row = {
            "delivery_id": command.delivery_id,
            "notification_id": command.notification_id,
            "tenant_id": command.tenant_id,
            "recipient_id": command.recipient_id,
            "notification_type": command.notification_type,
            "category": command.category,
            "priority": command.priority,
            "title": c.title,
            "body": c.body,
            "data_json": c.data_json,
            "locale": command.locale,
            "requested_at": command.occurred_at,
            "expires_at": command.expires_at,
        }
        try:
            pool = await self._connections()
            async with pool.connection() as conn:
                inserted = await (await conn.execute(INSERT, row)).fetchone()
                found = inserted or await (await conn.execute(EXISTING, (command.delivery_id,))).fetchone()
        except (psycopg.OperationalError, TimeoutError) as exc:
            raise ProviderUnavailable(f"inbox database: {exc}") from exc
        except psycopg.DataError as exc:
            raise DeliveryRejected(f"inbox refused the item: {exc}", permanent=True) from exc
        seq = str(found[0]) if found else None
        if inserted:
            try:
                await self.redis.publish(
                    doorbell(self.prefix, command.tenant_id, command.recipient_id), seq or ""
                )
            except aioredis.RedisError as exc:
                log.warning("inbox doorbell not rung (the socket re-reads the feed): %s", exc)
        return Sent(self.label, provider_message_id=seq)

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
        await self.redis.aclose()
