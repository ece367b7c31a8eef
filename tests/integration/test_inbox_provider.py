"""The inbox provider against a slow PostgreSQL: each send's timeout, the connection a failed send
drops, and the doorbell a retried send rings."""

from __future__ import annotations

import asyncio
import threading
import time

import aiohttp
import psycopg
import redis.asyncio as aioredis

from gateways.base import ProviderUnavailable, Sent
from gateways.inapp.inbox import Inbox, InboxSettings
from tests.integration.test_inbox import command
from tidings.config import Settings


def provider(s: Settings, timeout: float) -> Inbox:
    stack = {"postgres_dsn": s.postgres_dsn, "redis_url": s.redis_url, "prefix": s.topic_prefix}
    return Inbox(InboxSettings(**stack, timeout=timeout))


def locked(dsn: str, seconds: float, held: threading.Event) -> threading.Thread:
    """Holds the inbox table locked against inserts for `seconds`, from another connection."""

    def hold() -> None:
        with psycopg.connect(dsn) as conn:
            conn.execute("LOCK TABLE inbox_items IN EXCLUSIVE MODE")
            held.set()
            time.sleep(seconds)

    thread = threading.Thread(target=hold)
    thread.start()
    return thread


def test_a_send_queued_behind_a_timed_out_one_has_its_own_time_and_connection(database: Settings) -> None:
    """The timeout counted the wait for the provider's one connection, and the send that timed out
    closed that connection after handing it on: the send behind it failed too, with time to spare."""
    s = database
    held = threading.Event()
    thread = locked(s.postgres_dsn, 1.5, held)
    held.wait(5)

    async def scenario() -> list[object]:
        inbox = provider(s, timeout=1.0)
        try:
            async with aiohttp.ClientSession() as session:

                async def send(title: str) -> object:
                    try:
                        return await inbox.send(session, command("ada", title))
                    except ProviderUnavailable as exc:
                        return exc

                return list(await asyncio.gather(send("first"), send("second")))
        finally:
            await inbox.close()

    first, second = asyncio.run(scenario())
    thread.join()
    assert isinstance(first, ProviderUnavailable), first
    assert isinstance(second, Sent), second


def test_a_retried_send_that_finds_its_row_rings_the_doorbell(database: Settings) -> None:
    """A first try that timed out after its insert committed never rang: the retry found the row and
    rang nothing either, so an open socket saw the item only at its next periodic re-read."""
    s = database
    item = command("ada", "hello")

    async def scenario() -> list[bytes]:
        inbox = provider(s, timeout=5.0)
        listener = aioredis.Redis.from_url(s.redis_url)
        try:
            async with aiohttp.ClientSession() as session, listener.pubsub() as pubsub:
                await inbox.send(session, item)
                await pubsub.subscribe(f"{s.topic_prefix}tidings:inbox:acme/ada")
                await inbox.send(session, item)
                await inbox.send(session, item.model_copy(update={"attempt": 1}))
                rings: list[bytes] = []
                deadline = time.monotonic() + 2
                while time.monotonic() < deadline:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
                    rings += [message["data"]] if message else []
                return rings
        finally:
            await inbox.close()
            await listener.aclose()

    assert len(asyncio.run(scenario())) == 1, "the retry rings; the duplicate at the same attempt does not"
