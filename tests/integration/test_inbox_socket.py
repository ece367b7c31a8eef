"""The inbox WebSocket on the real stack when a look has more than a page to send, when a client's
cursor is past every item, and when PostgreSQL does not answer."""

from __future__ import annotations

import asyncio
import socket

import aiohttp
import psycopg
import pytest

from gateways import feed as feed_module
from gateways.inapp._feed import INSERT, item_row
from tests.integration.test_inbox import command, greeted_socket, inbox, serving, token
from tidings.config import Settings


def test_a_burst_larger_than_a_page_reaches_an_open_socket_at_once(
    database: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Eleven items committed together, then a twelfth that rings: the socket reads pages until one is
    not full, and the items it already sent, which the look back in time reads again, do not fill the
    pages ahead of the ones after its cursor."""
    s = database
    monkeypatch.setattr(feed_module, "MAX_PAGE", 5)
    burst = [command("ada", f"B{i:02d}") for i in range(12)]

    async def scenario(base: str) -> list[str]:
        provider = inbox(s)
        titles: list[str] = []
        async with greeted_socket(base) as (session, ws):
            with psycopg.connect(s.postgres_dsn) as conn:
                for c in burst[:-1]:
                    conn.execute(INSERT, item_row(c))
            await provider.send(session, burst[-1])
            while len(titles) < len(burst):
                frame = await ws.receive_json(timeout=5)
                titles += [i["title"] for i in frame["items"]]
        await provider.close()
        return titles

    titles = asyncio.run(serving(s, scenario))
    assert titles == [c.content.title for c in burst]


def test_a_resumed_socket_gets_everything_after_its_cursor_in_pages(
    database: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = database
    monkeypatch.setattr(feed_module, "MAX_PAGE", 5)
    items = [command("ada", f"R{i:02d}") for i in range(13)]
    with psycopg.connect(s.postgres_dsn) as conn:
        for c in items:
            conn.execute(INSERT, item_row(c))

    async def scenario(base: str) -> list[int]:
        sizes: list[int] = []
        async with aiohttp.ClientSession() as http, http.ws_connect(f"{base}/v1/ws") as ws:
            await ws.send_json({"token": token("ada"), "cursor": 0})
            while sum(sizes) < len(items):
                sizes.append(len((await ws.receive_json(timeout=5))["items"]))
        return sizes

    assert asyncio.run(serving(s, scenario)) == [5, 5, 3]


def test_a_resumed_socket_whose_cursor_is_past_the_newest_item_gets_the_next_one(
    database: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cursor beyond every item (a database restored from a backup) is taken as the newest item's: a
    lost doorbell then only delays the next item until the socket's periodic look, which finds it."""
    s = database
    monkeypatch.setattr(feed_module, "LOOKBACK_S", 0.0)
    monkeypatch.setattr(feed_module, "REREAD_S", 0.5)
    first, lost = command("ada", "first"), command("ada", "lost doorbell")
    with psycopg.connect(s.postgres_dsn) as conn:
        conn.execute(INSERT, item_row(first))

    async def scenario(base: str) -> list[list[str]]:
        frames: list[list[str]] = []
        async with aiohttp.ClientSession() as http, http.ws_connect(f"{base}/v1/ws") as ws:
            await ws.send_json({"token": token("ada"), "cursor": 10**12})
            frames.append([i["title"] for i in (await ws.receive_json(timeout=5))["items"]])
            with psycopg.connect(s.postgres_dsn) as conn:
                conn.execute(INSERT, item_row(lost))
            frames.append([i["title"] for i in (await ws.receive_json(timeout=5))["items"]])
        return frames

    assert asyncio.run(serving(s, scenario)) == [[], ["lost doorbell"]]


def test_a_socket_whose_look_finds_postgresql_down_closes_to_be_tried_again(
    database: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not an HTTP 503 written into the socket's stream, which the client reads as a broken frame."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    dead = Settings(**(database.model_dump() | {"postgres_dsn": f"postgresql://x@127.0.0.1:{port}/x"}))
    monkeypatch.setattr(feed_module.pg, "pool", pool_waiting(1.0))

    async def scenario(base: str) -> tuple[object, object]:
        async with aiohttp.ClientSession() as http, http.ws_connect(f"{base}/v1/ws") as ws:
            await ws.send_json({"token": token("ada")})
            message = await ws.receive(timeout=15)
            return message.type, ws.close_code

    kind, code = asyncio.run(serving(dead, scenario))
    assert (kind, code) == (aiohttp.WSMsgType.CLOSE, feed_module.TRY_AGAIN_LATER)


def pool_waiting(seconds: float) -> object:
    """`pg.pool` with its wait for a connection cut to `seconds`."""
    make = feed_module.pg.pool

    def pool(*args: object, **kwargs: object) -> object:
        return make(*args, **(kwargs | {"timeout": seconds}))  # type: ignore[arg-type]

    return pool


def test_one_recipient_holds_a_bounded_number_of_sockets(
    database: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each socket looks at the feed from one shared pool: one token opening thousands filled it, and
    every other recipient's socket closed with 1013."""
    s = database
    monkeypatch.setattr(feed_module, "MAX_SOCKETS", 2)

    async def scenario(base: str) -> list[object]:
        async with aiohttp.ClientSession() as http:

            async def opened(who: str) -> aiohttp.ClientWebSocketResponse:
                ws = await http.ws_connect(f"{base}/v1/ws")
                await ws.send_json({"token": token(who)})
                return ws

            first, second, third, bobs = [await opened(w) for w in ("ada", "ada", "ada", "bob")]
            greeted = [(await ws.receive_json(timeout=5))["type"] for ws in (first, second, bobs)]
            refused = await third.receive(timeout=5)
            await first.close()
            await asyncio.sleep(0.2)
            again = await opened("ada")
            answer = (await again.receive_json(timeout=5))["type"]
            for ws in (second, bobs, again):
                await ws.close()
            return [greeted, (refused.type, refused.data), answer]

    greeted, refused, answer = asyncio.run(serving(s, scenario))
    assert greeted == ["items"] * 3
    assert refused == (aiohttp.WSMsgType.CLOSE, feed_module.POLICY_VIOLATION)
    assert answer == "items", "a socket closed makes room"


def test_an_item_committed_late_reaches_the_socket_behind_a_full_page_of_items_it_sent(
    database: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An item whose transaction commits after items with later `seq`s is found by the look back in
    time: that look read the oldest items of the last seconds first, and when more than a page of them
    had been sent already (a burst), the late one was never sent."""
    s = database
    monkeypatch.setattr(feed_module, "MAX_PAGE", 5)
    before = [command("ada", f"E{i:02d}") for i in range(6)]
    late, after, ring = command("ada", "late"), command("ada", "after"), command("ada", "ring")

    async def scenario(base: str) -> list[str]:
        provider = inbox(s)
        titles: list[str] = []
        async with greeted_socket(base) as (session, ws):
            with psycopg.connect(s.postgres_dsn, autocommit=True) as conn:
                for c in before:
                    conn.execute(INSERT, item_row(c))
            slow = psycopg.connect(s.postgres_dsn)
            slow.execute(INSERT, item_row(late))
            await provider.send(session, after)
            while "after" not in titles:
                titles += [i["title"] for i in (await ws.receive_json(timeout=5))["items"]]
            slow.commit()
            slow.close()
            await provider.send(session, ring)
            while "late" not in titles or "ring" not in titles:
                titles += [i["title"] for i in (await ws.receive_json(timeout=5))["items"]]
        await provider.close()
        return titles

    titles = asyncio.run(serving(s, scenario))
    assert sorted(titles) == sorted(c.content.title for c in [*before, late, after, ring])
