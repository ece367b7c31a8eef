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


async def sends(s: Settings, timeout: float, delays: list[float]) -> list[tuple[object, float]]:
    """One send per delay, each started that long after the first; each result and when it came."""
    inbox = provider(s, timeout)
    started = time.monotonic()
    try:
        async with aiohttp.ClientSession() as session:

            async def send(i: int, delay: float) -> tuple[object, float]:
                await asyncio.sleep(delay)
                try:
                    result: object = await inbox.send(session, command("ada", f"item {i}"))
                except ProviderUnavailable as exc:
                    result = exc
                return result, time.monotonic() - started

            return list(await asyncio.gather(*(send(i, d) for i, d in enumerate(delays))))
    finally:
        await inbox.close()


def test_a_send_queued_behind_a_timed_out_one_has_its_own_connection(database: Settings) -> None:
    """The send that timed out closed the connection after handing it on: the send behind it failed
    with `the connection is closed`, with time to spare."""
    s = database
    held = threading.Event()
    thread = locked(s.postgres_dsn, 1.5, held)
    held.wait(5)
    (first, _), (second, _) = asyncio.run(sends(s, 1.0, [0.0, 0.5]))
    thread.join()
    assert isinstance(first, ProviderUnavailable), first
    assert isinstance(second, Sent), second


def test_sends_queued_behind_a_hanging_database_fail_within_their_timeout_not_in_turn(
    database: Settings,
) -> None:
    """With the wait for the connection unbounded, the sends queued behind a hanging database timed out
    one after another, a timeout each: the last of 64 waited over ten minutes, holding its slot."""
    s = database
    held = threading.Event()
    thread = locked(s.postgres_dsn, 6.0, held)
    held.wait(5)
    results = asyncio.run(sends(s, 1.0, [0.0] * 5))
    thread.join()
    assert all(isinstance(r, ProviderUnavailable) for r, _ in results), results
    assert max(at for _, at in results) < 3.0, results


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


def test_two_tenants_items_with_one_delivery_id_each_reach_their_feed(database: Settings) -> None:
    """A delivery id derives from the notification id, which a producer may choose: the same id under
    another tenant is another item, not a repeat of this one."""
    s = database
    acme = command("ada", "for acme")
    globex = acme.model_copy(update={"tenant_id": "globex", "content": acme.content.model_copy()})

    async def scenario() -> list[Sent]:
        inbox = provider(s, 5.0)
        try:
            async with aiohttp.ClientSession() as session:
                return [await inbox.send(session, c) for c in (acme, globex, globex)]
        finally:
            await inbox.close()

    first, second, repeat = asyncio.run(scenario())
    with psycopg.connect(s.postgres_dsn) as conn:
        rows = conn.execute("SELECT tenant_id, seq::text FROM inbox_items ORDER BY seq").fetchall()
    assert rows == [("acme", first.provider_message_id), ("globex", second.provider_message_id)]
    assert repeat.provider_message_id == second.provider_message_id


def test_a_read_only_database_is_unavailable_and_the_next_send_connects_afresh(database: Settings) -> None:
    """A standby left in the DSN after a failover refuses every insert (SQLSTATE 25006): each item
    failed permanently, where it went in once the DSN reached a primary again."""
    s = database
    name = s.postgres_dsn.rsplit("/", 1)[1]

    def read_only(on: bool) -> None:
        with psycopg.connect(s.postgres_dsn, autocommit=True) as conn:
            setting = "on" if on else "off"
            conn.execute("SET default_transaction_read_only = off")
            conn.execute(f"ALTER DATABASE {name} SET default_transaction_read_only = {setting}".encode())

    async def scenario() -> list[object]:
        inbox = provider(s, 5.0)
        results: list[object] = []
        try:
            async with aiohttp.ClientSession() as session:
                for i, writable in enumerate([False, True]):
                    read_only(not writable)
                    try:
                        results.append(await inbox.send(session, command("ada", f"item {i}")))
                    except ProviderUnavailable as exc:
                        results.append(exc)
        finally:
            await inbox.close()
        return results

    refused, sent = asyncio.run(scenario())
    assert isinstance(refused, ProviderUnavailable) and "read-only" in str(refused), refused
    assert isinstance(sent, Sent), sent
    with psycopg.connect(s.postgres_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM inbox_items").fetchone() == (1,)
