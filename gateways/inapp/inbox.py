"""Consumes in-app delivery commands; produces inbox rows in PostgreSQL and a doorbell on Redis.

Sending is an idempotent insert keyed by the delivery id (a redelivered command finds its row and
reports the same `seq`), then a PUBLISH on the recipient's doorbell channel for the edge's open
WebSockets. The row is the delivery: a doorbell that fails is logged and not retried, since the socket
re-reads the feed anyway. A retry (attempt > 0) that finds its row rings too: its first try may have
committed the insert and timed out before ringing.

One connection per provider, used by one send at a time: an insert takes well under a millisecond,
and a pool would hide why a connection failed. PostgreSQL refusing connections for load (SQLSTATE
53300, too many clients) is `ProviderThrottled` (pause `throttle_pause` seconds); unreachable, starting
up, timing out or dropping the connection is `ProviderUnavailable` (retry tiers), and so is any other
error of the database rather than of the row: a read-only server (a standby left in the DSN after a
failover, SQLSTATE 25006) or a missing table (migrations not yet run) failed every item permanently,
where the same items went in once the database was put right. The connection is dropped, so the next
send connects afresh (to the new primary, with a multi-host DSN and `target_session_attrs=read-write`).
A row the database refuses (a NUL byte in a text, a constraint) is rejected permanently. So is an item
requested before its recipient was erased (the `erasures` ledger, see projections/recipients.py): FAILED
`erased`, nothing stored. (Once the gateway has read the erasure from its urgent lane, the claim cancels
such an item first: CANCELLED `erased`.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import aiohttp
import psycopg
import redis.asyncio as aioredis
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from gateways.base import DeliveryRejected, Provider, ProviderThrottled, ProviderUnavailable, Sent
from gateways.inapp._feed import EXISTING, INSERT, doorbell, item_row
from tidings.config import settings as tidings_settings
from tidings.events import DeliveryCommand
from tidings.pg import sturdy

log = logging.getLogger(__name__)
TOO_MANY_CONNECTIONS = "53300"
BUSY_MESSAGES = ("too many clients", "remaining connection slots are reserved")
"""libpq reports a refused connection by message only (no SQLSTATE): PostgreSQL's English wording."""


class InboxSettings(BaseSettings):
    """Defaults to the stack's own PostgreSQL, Redis and topic prefix (`TIDINGS_POSTGRES_DSN`, ...)."""

    model_config = SettingsConfigDict(env_prefix="TIDINGS_INBOX_", frozen=True, hide_input_in_errors=True)

    postgres_dsn: str | None = None
    redis_url: str | None = None
    prefix: str | None = None
    timeout: float = Field(default=10.0, gt=0)
    throttle_pause: float = Field(default=1.0, gt=0)


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
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._lock = asyncio.Lock()

    async def _insert(self, row: dict[str, Any]) -> tuple[bool, str | None]:
        """(whether this call inserted the row, its seq). The wait for the connection and the insert
        on it have a timeout each: one for both made the send after a slow one fail with time to spare,
        and none for the wait queued every send behind a hanging database for a timeout each in turn.
        A connection that failed is dropped while it is held: dropped after, the next send's statement
        was closed under it."""
        try:
            await asyncio.wait_for(self._lock.acquire(), self.settings.timeout)
        except TimeoutError:
            raise TimeoutError(f"waited {self.settings.timeout:g}s for the inbox connection") from None
        try:
            return await asyncio.wait_for(self._insert_now(row), self.settings.timeout)
        except (psycopg.DataError, psycopg.IntegrityError):
            raise
        except (TimeoutError, OSError, psycopg.Error):
            await self._drop_connection()
            raise
        finally:
            self._lock.release()

    async def _insert_now(self, row: dict[str, Any]) -> tuple[bool, str | None]:
        if self._conn is None or self._conn.closed:
            self._conn = await psycopg.AsyncConnection.connect(sturdy(self.dsn), autocommit=True)
        inserted = await (await self._conn.execute(INSERT, row)).fetchone()
        found = inserted or await (await self._conn.execute(EXISTING, row)).fetchone()
        return inserted is not None, str(found[0]) if found else None

    async def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(TimeoutError, psycopg.Error, OSError):
                await asyncio.wait_for(conn.close(), 1.0)

    async def send(self, session: aiohttp.ClientSession, command: DeliveryCommand) -> Sent:
        row = item_row(command)
        try:
            inserted, seq = await self._insert(row)
        except (psycopg.DataError, psycopg.IntegrityError) as exc:
            raise DeliveryRejected(f"inbox refused the item: {exc}", permanent=True) from exc
        except psycopg.Error as exc:
            if exc.sqlstate == TOO_MANY_CONNECTIONS or any(m in str(exc) for m in BUSY_MESSAGES):
                raise ProviderThrottled(f"inbox database busy: {exc}", self.settings.throttle_pause) from exc
            raise ProviderUnavailable(f"inbox database: {exc}") from exc
        except (TimeoutError, OSError) as exc:
            raise ProviderUnavailable(f"inbox database: {str(exc) or type(exc).__name__}") from exc
        if seq is None:
            raise DeliveryRejected("erased", permanent=True)
        if inserted or command.attempt > 0:
            try:
                await self.redis.publish(
                    doorbell(self.prefix, command.tenant_id, command.recipient_id), seq or ""
                )
            except aioredis.RedisError as exc:
                log.warning("inbox doorbell not rung (the socket re-reads the feed): %s", exc)
        return Sent(self.label, provider_message_id=seq)

    async def close(self) -> None:
        await self._drop_connection()
        await self.redis.aclose()
