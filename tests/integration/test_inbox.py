"""The in-app channel on the real stack: the gateway fills the inbox and rings the doorbell; the edge
serves the feed over HTTP and WebSocket to JWT-authenticated recipients and turns their clicks into
engagement events, which the inbox projection folds and the scheduler honours."""

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import jwt
import psycopg
import pytest
import redis.asyncio as aioredis
from pydantic import SecretStr

from gateways import feed as feed_module
from gateways.edge import EdgeSettings
from gateways.inapp.inbox import Inbox, InboxSettings
from gateways.runner import GatewayRunner
from projections import Projection, Runner
from tests.integration.conftest import table_checksums
from tests.integration.test_edge import serving as edge_serving
from tests.integration.test_projections import project
from tests.integration.test_router import commands, decoded, publish_catalog, run_router
from tidings.client import Client, inbox_signing_key, inbox_token
from tidings.config import Settings
from tidings.events import (
    DeliveryCommand,
    DeliveryOutcome,
    InboxItemArchived,
    InboxItemMarkedUnread,
    InboxItemRead,
    InboxItemSeen,
    InboxItemUnarchived,
    NotificationCancelled,
    NotificationClicked,
    NotificationOpened,
    RenderedContent,
)
from tidings.ids import delivery_id
from tidings.topics import names

SECRET = "inbox-test-secret-that-is-long-enough"


def token(recipient: str, *, tenant: str = "acme", key: str | None = None, ttl: float = 300) -> str:
    """Signed as the tenant's backend signs it: with the tenant's key, unless `key` says otherwise."""
    claims = {"sub": recipient, "tenant": tenant, "exp": int(time.time() + ttl)}
    return jwt.encode(claims, key or inbox_signing_key(SECRET, tenant), algorithm="HS256")


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


def inbox(s: Settings) -> Inbox:
    return Inbox(InboxSettings(postgres_dsn=s.postgres_dsn, redis_url=s.redis_url, prefix=s.topic_prefix))


def command(recipient: str, title: str) -> DeliveryCommand:
    nid = uuid.uuid4()
    return DeliveryCommand(
        tenant_id="acme",
        delivery_id=delivery_id(nid, "in_app", recipient),
        notification_id=nid,
        recipient_id=recipient,
        notification_type="comment.mention",
        category="social",
        channel="in_app",
        priority="normal",
        address=recipient,
        content=RenderedContent(title=title, body="in T-1", data_json='{"thread": "T-1"}'),
    )


async def delivered(s: Settings, *commands: DeliveryCommand) -> None:
    """The commands through the inbox provider, one after another."""
    provider = inbox(s)
    async with aiohttp.ClientSession() as session:
        for c in commands:
            await provider.send(session, c)
    await provider.close()


async def serving(s: Settings, scenario: Callable[[str], Awaitable[Any]]) -> Any:
    return await edge_serving(s, scenario, EdgeSettings(inbox_jwt_secret=SecretStr(SECRET)))


@contextlib.asynccontextmanager
async def greeted_socket(
    base: str, recipient: str = "ada"
) -> AsyncIterator[tuple[aiohttp.ClientSession, aiohttp.ClientWebSocketResponse]]:
    """A session for the provider, and a socket signed in as `recipient` whose first frame was read."""
    async with (
        aiohttp.ClientSession() as session,
        aiohttp.ClientSession() as http,
        http.ws_connect(f"{base}/v1/ws") as ws,
    ):
        await ws.send_json({"token": token(recipient)})
        await ws.receive_json(timeout=5)
        yield session, ws


def test_the_gateway_fills_the_inbox_once_and_rings_the_doorbell(database: Settings) -> None:
    s = database
    publish_catalog(s)
    with Client(s) as client:
        client.update_recipient(tenant="acme", recipient="ada", email="ada@example.com")
        for order in ("A-1", "A-2"):
            client.send(
                tenant="acme", recipient="ada", type="order.shipped", data={"order": order, "carrier": "D"}
            )
    run_router(s)
    in_app = [c for c in commands(s) if c.channel == "in_app"]
    assert len(in_app) == 2

    async def scenario() -> tuple[list[bytes], str | None]:
        listener = aioredis.Redis.from_url(s.redis_url)
        async with listener.pubsub() as pubsub:
            await pubsub.subscribe(f"{s.topic_prefix}tidings:inbox:acme/ada")
            runner = GatewayRunner(s, "in_app", [inbox(s)])
            await runner.run(idle_exit_after=2.0)
            repeat = inbox(s)
            async with aiohttp.ClientSession() as session:
                again = await repeat.send(session, in_app[0])
            await repeat.close()
            rings = []
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline:
                m = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
                rings += [m["data"]] if m else []
        await listener.aclose()
        return rings, again.provider_message_id

    rings, again = asyncio.run(scenario())
    with psycopg.connect(s.postgres_dsn) as conn:
        rows = conn.execute("SELECT delivery_id, seq, title FROM inbox_items").fetchall()
    assert sorted(title for _, _, title in rows) == ["Order A-1 shipped", "Order A-2 shipped"]
    assert len(rings) == 2, "one doorbell per new item, none for the repeated send"
    seqs = {did: str(seq) for did, seq, _ in rows}
    assert sorted(r.decode() for r in rings) == sorted(seqs.values())
    assert again == seqs[in_app[0].delivery_id], "a repeated send reports the existing row"
    outcomes = [
        o for o in decoded(s, names(s).outcomes) if isinstance(o, DeliveryOutcome) and o.channel == "in_app"
    ]
    assert sorted((o.status, o.provider) for o in outcomes if o.status == "SENT") == [("SENT", "inbox")] * 2


def test_an_item_that_waited_for_an_erasures_lock_is_dated_when_it_was_written(database: Settings) -> None:
    """Dated when its statement started (`now()`), an item that waited out an erasure's lock took its
    seq after the wait with a time older than the feed's 5 s look-back: a socket whose cursor had
    passed that seq never sent it."""
    s = database

    async def scenario() -> datetime:
        with psycopg.connect(s.postgres_dsn) as locker:
            locker.execute("LOCK TABLE inbox_items IN SHARE ROW EXCLUSIVE MODE")
            waiting = asyncio.create_task(delivered(s, command("ada", "late")))
            await asyncio.sleep(1.5)
            assert not waiting.done(), "the insert waits for the erasure's lock"
            released = datetime.now(UTC)
            locker.commit()
        await waiting
        return released

    released = asyncio.run(scenario())
    with psycopg.connect(s.postgres_dsn) as conn:
        [(created,)] = conn.execute("SELECT created_at FROM inbox_items").fetchall()
    assert created >= released - timedelta(milliseconds=200), (created, released)


def test_recipients_read_their_feed_mark_items_and_get_new_ones_live(database: Settings) -> None:
    s = database
    first, second, bobs = (
        command("ada", "Bo mentioned you"),
        command("ada", "Cy mentioned you"),
        command("bob", "x"),
    )

    async def scenario(base: str) -> dict[str, Any]:
        provider = inbox(s)
        session = aiohttp.ClientSession()
        for c in (first, second, bobs):
            await provider.send(session, c)
        seen: dict[str, Any] = {}
        async with aiohttp.ClientSession() as http:
            auth = {"Authorization": f"Bearer {token('ada')}"}
            for name, headers in [
                ("none", {}),
                ("forged", bearer(token("ada", key="another-secret-of-32-bytes-length"))),
                ("master_key", bearer(token("ada", key=SECRET))),
                ("other_tenants_key", bearer(token("ada", key=inbox_signing_key(SECRET, "globex")))),
                (
                    "sdk",
                    bearer(inbox_token(inbox_signing_key(SECRET, "acme"), tenant="acme", recipient="ada")),
                ),
                ("expired", {"Authorization": f"Bearer {token('ada', ttl=-120)}"}),
            ]:
                async with http.get(f"{base}/v1/inbox", headers=headers) as r:
                    seen[name] = r.status
                    if name == "none":
                        seen["problem"] = (r.content_type, r.headers["WWW-Authenticate"], await r.json())
            async with http.get(f"{base}/v1/inbox?limit=1", headers=auth) as r:
                seen["page"] = await r.json()
            async with http.post(f"{base}/v1/inbox/{first.notification_id}/read", headers=auth) as r:
                seen["read"] = r.status
            async with http.post(f"{base}/v1/inbox/{bobs.notification_id}/read", headers=auth) as r:
                seen["not_mine"] = r.status
                seen["not_mine_type"] = r.content_type
            async with http.post(f"{base}/v1/inbox/{first.notification_id}/liked", headers=auth) as r:
                seen["bad_action"] = r.status

            async with http.ws_connect(f"{base}/v1/ws") as ws:
                await ws.send_json({"token": token("ada", key="wrong-secret-that-is-long-enough-as-well")})
                await ws.receive(timeout=5)
                seen["ws_refused"] = ws.close_code
            async with http.ws_connect(f"{base}/v1/ws") as ws:
                await ws.send_json({"token": token("ada")})
                seen["backlog"] = (await ws.receive_json(timeout=5))["items"]
                live = command("ada", "Di mentioned you")
                await provider.send(session, live)
                seen["live"] = (await ws.receive_json(timeout=5))["items"]
            async with http.ws_connect(f"{base}/v1/ws") as ws:
                await ws.send_json({"token": token("ada"), "cursor": seen["backlog"][-1]["cursor"]})
                seen["resumed"] = (await ws.receive_json(timeout=5))["items"]
            async with http.ws_connect(f"{base}/v1/ws") as ws:
                await ws.send_json({"token": token("ada", ttl=-25)})  # in the 30 s leeway for 5 s more
                seen["expiring"] = len((await ws.receive_json(timeout=5))["items"])
                await ws.receive(timeout=20)
                seen["expired_ws"] = ws.close_code
        await session.close()
        await provider.close()
        return seen

    seen = asyncio.run(serving(s, scenario))
    refused = ("none", "forged", "expired", "master_key", "other_tenants_key")
    assert {name: seen[name] for name in refused} == dict.fromkeys(refused, 401)
    assert seen["sdk"] == 200
    assert seen["problem"] == (
        "application/problem+json",
        "Bearer",
        {"type": "about:blank", "title": "A valid token is required", "status": 401},
    )
    assert seen["not_mine_type"] == "application/problem+json"
    assert [i["title"] for i in seen["page"]["items"]] == ["Cy mentioned you"]
    assert seen["page"]["unread"] == 2 and seen["page"]["next"] is not None
    assert (seen["read"], seen["not_mine"], seen["bad_action"]) == (202, 404, 404)
    assert seen["ws_refused"] == 4401
    assert [i["title"] for i in seen["backlog"]] == ["Bo mentioned you", "Cy mentioned you"]
    assert seen["backlog"][0]["data"] == {"thread": "T-1"}
    assert [i["title"] for i in seen["live"]] == ["Di mentioned you"]
    assert [i["title"] for i in seen["resumed"]] == ["Di mentioned you"]
    assert (seen["expiring"], seen["expired_ws"]) == (3, 4401), "a socket closes when its token expires"

    [read] = [e for e in decoded(s, names(s).engagement) if isinstance(e, InboxItemRead)]
    assert (read.notification_id, read.delivery_id, read.recipient_id) == (
        first.notification_id,
        first.delivery_id,
        "ada",
    )
    project(s, "inbox")

    async def after(base: str) -> dict[str, Any]:
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{base}/v1/inbox", headers={"Authorization": f"Bearer {token('ada')}"}) as r,
        ):
            result: dict[str, Any] = await r.json()
            return result

    page = asyncio.run(serving(s, after))
    states = {i["title"]: (i["seen_at"] is not None, i["read_at"] is not None) for i in page["items"]}
    assert states == {
        "Bo mentioned you": (True, True),
        "Cy mentioned you": (False, False),
        "Di mentioned you": (False, False),
    }
    assert page["unread"] == 2


def test_a_cancelled_notification_is_withdrawn_from_the_feed_and_the_unread_count(database: Settings) -> None:
    s = database
    kept, withdrawn = command("ada", "Bo mentioned you"), command("ada", "Cy mentioned you")

    async def feed(base: str) -> Any:
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{base}/v1/inbox", headers=bearer(token("ada"))) as r,
        ):
            return await r.json()

    async def mark_withdrawn(base: str) -> int:
        url = f"{base}/v1/inbox/{withdrawn.notification_id}/read"
        async with aiohttp.ClientSession() as http, http.post(url, headers=bearer(token("ada"))) as r:
            return r.status

    asyncio.run(delivered(s, kept, withdrawn))
    with Client(s) as client:
        client.cancel(tenant="globex", recipient="ada", notification_id=kept.notification_id)
        client.cancel(tenant="acme", recipient="bob", notification_id=kept.notification_id)
        client.cancel(tenant="acme", recipient="ada", notification_id=withdrawn.notification_id)
        client.send(
            tenant="acme", recipient="ada", type="order.shipped", data={"order": "A-1", "carrier": "D"}
        )
    before = asyncio.run(serving(s, feed))
    project(s, "inbox")
    after = asyncio.run(serving(s, feed))
    assert asyncio.run(serving(s, mark_withdrawn)) == 404, "an item the feed hides cannot be marked"
    with Client(s) as client:
        ids = {"tenant_id": "acme", "recipient_id": "ada", "notification_id": kept.notification_id}
        client.publish(InboxItemRead(**ids, delivery_id=kept.delivery_id))
    project(s, "inbox")
    read = asyncio.run(serving(s, feed))
    assert sorted(i["title"] for i in before["items"]) == ["Bo mentioned you", "Cy mentioned you"]
    assert ([i["title"] for i in after["items"]], after["unread"]) == (["Bo mentioned you"], 1)
    assert read["unread"] == 0, "another tenant's or recipient's cancel must not take the item's state row"


def test_an_unread_or_unarchive_after_a_read_or_archive_wins_whatever_order_they_arrive_in(
    database: Settings,
) -> None:
    s = database
    reread, unread, restored, archived, clicked, untouched = (command("ada", t) for t in "ABCDEF")
    at = [datetime.fromtimestamp(1_700_000_000 + i, UTC) for i in range(4)]

    def ids(c: DeliveryCommand) -> dict[str, Any]:
        return {
            "tenant_id": "acme",
            "recipient_id": "ada",
            "notification_id": c.notification_id,
            "delivery_id": c.delivery_id,
        }

    async def deliver() -> None:
        provider = inbox(s)
        async with aiohttp.ClientSession() as session:
            for c in (reread, unread, restored, archived, clicked, untouched):
                await provider.send(session, c)
        await provider.close()

    async def feed(base: str) -> Any:
        auth = bearer(token("ada"))
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/v1/inbox", headers=auth) as r:
                page = await r.json()
            async with http.get(f"{base}/v1/inbox?archived=true", headers=auth) as r:
                everything = await r.json()
        return page, everything

    asyncio.run(deliver())
    with Client(s) as client:
        for event in [
            InboxItemRead(**ids(reread), occurred_at=at[2]),
            InboxItemMarkedUnread(**ids(reread), occurred_at=at[1]),
            InboxItemMarkedUnread(**ids(unread), occurred_at=at[2]),
            InboxItemRead(**ids(unread), occurred_at=at[1]),
            InboxItemRead(**ids(unread), occurred_at=at[0]),
            InboxItemMarkedUnread(**ids(unread), occurred_at=at[2]),
            InboxItemUnarchived(**ids(restored), occurred_at=at[3]),
            InboxItemArchived(**ids(restored), occurred_at=at[1]),
            InboxItemArchived(**ids(archived), occurred_at=at[3]),
            InboxItemUnarchived(**ids(archived), occurred_at=at[2]),
            InboxItemMarkedUnread(**ids(clicked), occurred_at=at[1]),
            NotificationClicked(**ids(clicked), occurred_at=at[2], channel="push"),
            InboxItemMarkedUnread(**ids(untouched), occurred_at=at[1]),
            InboxItemUnarchived(**ids(untouched), occurred_at=at[1]),
        ]:
            client.publish(event)
    project(s, "inbox")
    page, everything = asyncio.run(serving(s, feed))
    states = {i["title"]: (i["read_at"], i["archived_at"]) for i in everything["items"]}
    iso = [t.isoformat() for t in at]
    assert states == {
        "A": (iso[2], None),
        "B": (None, None),
        "C": (None, None),
        "D": (None, iso[3]),
        "E": (iso[2], None),
        "F": (None, None),
    }
    assert sorted(i["title"] for i in page["items"]) == ["A", "B", "C", "E", "F"]
    assert page["unread"] == 3
    assert [i["seen_at"] for i in page["items"] if i["title"] == "F"] == [None], "an undo is no sighting"
    with psycopg.connect(s.postgres_dsn) as conn:
        [first] = conn.execute(
            "SELECT read_at, last_read_at, unread_at FROM inbox_states WHERE notification_id = %s",
            (unread.notification_id,),
        ).fetchall()
    assert first == (at[0], at[1], at[2]), "read_at stays the first read, for the statistics"
    with psycopg.connect(s.postgres_dsn) as conn:
        conn.execute(
            "UPDATE inbox_states SET last_read_at = NULL WHERE notification_id = %s",
            (clicked.notification_id,),
        )
    _, folded_before_the_upgrade = asyncio.run(serving(s, feed))
    [e] = [i for i in folded_before_the_upgrade["items"] if i["title"] == "E"]
    assert e["read_at"] == iso[2], "a read the previous release folded after the migration is still a read"

    async def undo(base: str) -> list[int]:
        auth = bearer(token("ada"))
        statuses = []
        async with aiohttp.ClientSession() as http:
            for nid, action in [(reread.notification_id, "unread"), (archived.notification_id, "unarchived")]:
                async with http.post(f"{base}/v1/inbox/{nid}/{action}", headers=auth) as r:
                    statuses.append(r.status)
            async with http.post(
                f"{base}/v1/inbox/{unread.notification_id}/unread", headers=bearer(token("bob"))
            ) as r:
                statuses.append(r.status)
        return statuses

    assert asyncio.run(serving(s, undo)) == [202, 202, 404]
    project(s, "inbox")
    page, _ = asyncio.run(serving(s, feed))
    assert sorted(i["title"] for i in page["items"]) == ["A", "B", "C", "D", "E", "F"]
    assert page["unread"] == 5
    kinds = [type(e).__name__ for e in decoded(s, names(s).engagement)]
    assert kinds.count("InboxItemMarkedUnread") == 6 and kinds.count("InboxItemUnarchived") == 4


def test_mark_all_read_marks_only_the_callers_unread_items_in_pages(
    database: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = database
    monkeypatch.setattr(feed_module, "MAX_BULK", 2)
    adas = [command("ada", f"item {i}") for i in range(4)]
    bobs = command("bob", "not ada's")

    async def deliver() -> None:
        provider = inbox(s)
        async with aiohttp.ClientSession() as session:
            for c in (*adas, bobs):
                await provider.send(session, c)
        await provider.close()

    async def mark(base: str, path: str, who: str = "ada") -> tuple[int, Any]:
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"{base}/v1/inbox/{path}", headers=bearer(token(who))) as r,
        ):
            return r.status, (await r.json() if r.status == 202 else None)

    async def unread(base: str, who: str = "ada") -> int:
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{base}/v1/inbox", headers=bearer(token(who))) as r,
        ):
            return int((await r.json())["unread"])

    asyncio.run(deliver())
    asyncio.run(serving(s, lambda base: mark(base, f"{adas[0].notification_id}/read")))
    project(s, "inbox")
    first = asyncio.run(serving(s, lambda base: mark(base, "all/read")))
    cursor = first[1]["next"]
    second = asyncio.run(serving(s, lambda base: mark(base, f"all/read?before={cursor}")))
    project(s, "inbox")
    third = asyncio.run(serving(s, lambda base: mark(base, "all/read")))
    after = asyncio.run(serving(s, unread)), asyncio.run(serving(s, lambda base: unread(base, "bob")))
    refused = asyncio.run(serving(s, lambda base: mark(base, "all/unread")))
    assert first[0] == 202 and first[1] | {"next": 0} == {
        "status": "accepted",
        "marked": 2,
        "more": True,
        "next": 0,
    }
    assert second == (202, {"status": "accepted", "marked": 1, "more": False, "next": None})
    assert third == (202, {"status": "accepted", "marked": 0, "more": False, "next": None})
    assert after == (0, 1) and refused[0] == 404
    reads = [e for e in decoded(s, names(s).engagement) if isinstance(e, InboxItemRead)]
    assert sorted(str(e.notification_id) for e in reads) == sorted(str(c.notification_id) for c in adas)


def test_one_recipient_marking_in_a_loop_is_paced_and_another_is_not(
    database: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each mark is a Kafka record and a webhook to every destination of the tenant: a token's holder
    looping `/read` produced them without bound."""
    s = database
    monkeypatch.setattr(feed_module, "MARKS_BURST", 3)
    monkeypatch.setattr(feed_module, "MARKS_PER_S", 0.5)
    ada, bob = command("ada", "item"), command("bob", "item")

    async def loop(base: str) -> list[tuple[int, str | None]]:
        answers = []
        async with aiohttp.ClientSession() as http:
            for who, c in [("ada", ada)] * 5 + [("bob", bob)]:
                url = f"{base}/v1/inbox/{c.notification_id}/read"
                async with http.post(url, headers=bearer(token(who))) as r:
                    answers.append((r.status, r.headers.get("Retry-After")))
        return answers

    asyncio.run(delivered(s, ada, bob))
    answers = asyncio.run(serving(s, loop))
    assert [status for status, _ in answers] == [202, 202, 202, 429, 429, 202]
    assert answers[3][1] is not None and 1 <= int(answers[3][1]) <= 2
    reads = [e for e in decoded(s, names(s).engagement) if isinstance(e, InboxItemRead)]
    assert len(reads) == 4


def test_an_open_socket_is_told_of_a_withdrawn_item_once(database: Settings) -> None:
    s = database
    kept, withdrawn = command("ada", "Bo mentioned you"), command("ada", "Cy mentioned you")

    def cancel_and_project() -> None:
        with Client(s) as client:
            client.cancel(tenant="acme", recipient="ada", notification_id=withdrawn.notification_id)
        project(s, "inbox")

    async def scenario(base: str) -> list[dict[str, Any]]:
        provider = inbox(s)
        frames = []
        async with aiohttp.ClientSession() as session, aiohttp.ClientSession() as http:
            for c in (kept, withdrawn):
                await provider.send(session, c)
            async with http.ws_connect(f"{base}/v1/ws") as ws:
                await ws.send_json({"token": token("ada")})
                frames.append(await ws.receive_json(timeout=5))
                await asyncio.to_thread(cancel_and_project)
                await provider.send(session, command("ada", "Di mentioned you"))
                frames.append(await ws.receive_json(timeout=5))
                frames.append(await ws.receive_json(timeout=5))
                await provider.send(session, command("ada", "Ed mentioned you"))
                frames.append(await ws.receive_json(timeout=5))
        await provider.close()
        return frames

    backlog, live, gone, later = asyncio.run(serving(s, scenario))
    assert [i["title"] for i in backlog["items"]] == ["Bo mentioned you", "Cy mentioned you"]
    assert [i["title"] for i in live["items"]] == ["Di mentioned you"]
    assert (gone["type"], gone["ids"]) == ("withdrawn", [str(withdrawn.notification_id)])
    assert gone["cursors"] == [backlog["items"][1]["cursor"]]
    assert (later["type"], [i["title"] for i in later["items"]]) == ("items", ["Ed mentioned you"])


def archive(s: Settings, *commands: DeliveryCommand) -> None:
    with Client(s) as client:
        for c in commands:
            ids = {"tenant_id": "acme", "recipient_id": "ada", "notification_id": c.notification_id}
            client.publish(InboxItemArchived(**ids, delivery_id=c.delivery_id))
    project(s, "inbox")


def test_a_socket_greets_with_the_newest_items_cursor_and_sends_no_archived_item_as_new(
    database: Settings,
) -> None:
    s = database
    kept, *archived = (command("ada", t) for t in ("Bo", "Cy", "Di", "Ed"))

    async def deliver() -> None:
        provider = inbox(s)
        async with aiohttp.ClientSession() as session:
            for c in (kept, *archived):
                await provider.send(session, c)
        await provider.close()

    async def scenario(base: str) -> list[Any]:
        frames: list[Any] = []
        async with aiohttp.ClientSession() as http:
            hellos = [{"token": token("ada")}] + [{"token": token("ada"), "cursor": c} for c in (True, 2**64)]
            for hello in hellos:
                async with http.ws_connect(f"{base}/v1/ws") as ws:
                    await ws.send_json(hello)
                    frames.append(await ws.receive_json(timeout=5))
                    with contextlib.suppress(TimeoutError):
                        frames.append(await ws.receive_json(timeout=1.5))
        return frames

    asyncio.run(deliver())
    archive(s, *archived)
    with psycopg.connect(s.postgres_dsn) as conn:
        [(newest,)] = conn.execute("SELECT max(seq) FROM inbox_items").fetchall()
    frames = asyncio.run(serving(s, scenario))
    greeting = {"type": "items", "cursor": newest}
    assert [({k: f[k] for k in greeting}, [i["title"] for i in f["items"]]) for f in frames] == [
        (greeting, ["Bo"]),
        (greeting, ["Bo"]),
        (greeting, ["Bo"]),
    ], "archived items came as new, or the greeting's cursor is not the newest item's"


def test_a_resumed_socket_repeats_no_item_the_socket_it_replaces_sent(database: Settings) -> None:
    s = database

    async def scenario(base: str) -> list[list[str]]:
        provider = inbox(s)
        titles: list[list[str]] = []
        async with aiohttp.ClientSession() as session, aiohttp.ClientSession() as http:
            async with http.ws_connect(f"{base}/v1/ws") as ws:
                await ws.send_json({"token": token("ada")})
                titles.append([i["title"] for i in (await ws.receive_json(timeout=5))["items"]])
                await provider.send(session, command("ada", "Bo"))
                frame = await ws.receive_json(timeout=5)
                titles.append([i["title"] for i in frame["items"]])
            async with http.ws_connect(f"{base}/v1/ws") as ws:
                await ws.send_json({"token": token("ada"), "cursor": frame["cursor"]})
                titles.append([i["title"] for i in (await ws.receive_json(timeout=5))["items"]])
                await provider.send(session, command("ada", "Cy"))
                titles.append([i["title"] for i in (await ws.receive_json(timeout=5))["items"]])
        await provider.close()
        return titles

    assert asyncio.run(serving(s, scenario)) == [[], ["Bo"], [], ["Cy"]]


def test_a_socket_that_sent_many_items_still_names_its_recent_ones_withdrawn(
    database: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The socket keeps the newest KEPT items it sent however far other recipients' items moved `seq`
    (and those a look back in time may still return)."""
    s = database
    monkeypatch.setattr(feed_module, "KEPT", 3)
    monkeypatch.setattr(feed_module, "LOOKBACK_S", 0.2)
    adas = [command("ada", f"A{i}") for i in range(7)]

    def cancel_and_project() -> None:
        with Client(s) as client:
            client.cancel(tenant="acme", recipient="ada", notification_id=adas[4].notification_id)
        project(s, "inbox")

    async def scenario(base: str) -> list[Any]:
        provider = inbox(s)
        frames = []
        async with greeted_socket(base) as (session, ws):
            for c in adas:
                if c is adas[-1]:
                    await asyncio.sleep(0.5)
                for _ in range(5):
                    await provider.send(session, command("bob", "x"))
                await provider.send(session, c)
                frames.append(await ws.receive_json(timeout=5))
            await asyncio.to_thread(cancel_and_project)
            await provider.send(session, command("ada", "last"))
            frames += [await ws.receive_json(timeout=5), await ws.receive_json(timeout=5)]
        await provider.close()
        return frames

    *sent, live, gone = asyncio.run(serving(s, scenario))
    assert [i["title"] for f in sent for i in f["items"]] == [c.content.title for c in adas]
    assert [i["title"] for i in live["items"]] == ["last"]
    assert (gone["type"], gone["ids"]) == ("withdrawn", [str(adas[4].notification_id)])


def test_the_inbox_projection_keeps_the_first_time_of_each_and_rebuilds_identically(
    database: Settings,
) -> None:
    s = database
    nid, did = uuid.uuid4(), uuid.uuid4()
    base = {"tenant_id": "acme", "recipient_id": "ada", "notification_id": nid, "delivery_id": did}
    at = [datetime.fromtimestamp(1_800_000_000 + i, UTC) for i in range(4)]
    with Client(s) as client:
        for event in [
            InboxItemRead(**base, occurred_at=at[2]),
            InboxItemSeen(**base, occurred_at=at[1]),
            InboxItemSeen(**base, occurred_at=at[3]),
            NotificationOpened(**base, occurred_at=at[3], channel="push"),
            InboxItemArchived(**base, occurred_at=at[3]),
            NotificationCancelled(
                tenant_id="acme", recipient_id="ada", notification_id=nid, occurred_at=at[3]
            ),
            NotificationCancelled(
                tenant_id="acme", recipient_id="ada", notification_id=nid, occurred_at=at[2]
            ),
        ]:
            client.publish(event)
    project(s, "inbox")
    with psycopg.connect(s.postgres_dsn) as conn:
        row = conn.execute("SELECT seen_at, read_at, archived_at, withdrawn_at FROM inbox_states").fetchall()
    assert row == [(at[1], at[2], at[3], at[2])]
    before = table_checksums(s, ["inbox_states"])
    runner = Runner(s, Projection.registry["inbox"]())
    try:
        runner.rebuild()
    finally:
        runner.close()
    assert table_checksums(s, ["inbox_states"]) == before


def test_the_preference_centre_reads_and_writes_only_the_token_holders_preferences(
    database: Settings,
) -> None:
    s = database
    opt_out = {
        "rules": [{"scope": "category", "key": "social", "channel": "email", "enabled": False}],
        "quiet_hours": {"start": "22:00", "end": "07:00", "timezone": "Europe/Vienna"},
    }

    async def call(base: str, method: str, who: str | None, **kwargs: Any) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token(who)}"} if who else {}
        url = f"{base}/v1/me/preferences"
        async with aiohttp.ClientSession() as http, http.request(method, url, headers=headers, **kwargs) as r:
            return r.status, await r.json(content_type=None)

    async def writes(base: str) -> list[tuple[int, Any]]:
        return [
            await call(base, "GET", "ada"),
            await call(base, "PATCH", "ada", json=opt_out),
            await call(base, "PATCH", "ada", json={"digest": {"social": "sometimes"}}),
            await call(base, "PATCH", None, json=opt_out),
        ]

    before, written, invalid, anonymous = asyncio.run(serving(s, writes))
    assert before == (
        200,
        {"preferences": {"muted": False, "rules": {}, "quiet_hours": None, "digest": {}}, "unsubscribed": {}},
    )
    assert (written[0], invalid[0], anonymous[0]) == (202, 422, 401)
    [event] = decoded(s, names(s).recipients)
    assert (event.tenant_id, event.recipient_id, str(event.event_id)) == (
        "acme",
        "ada",
        written[1]["event_id"],
    )
    project(s, "recipients")

    async def reads(base: str) -> list[tuple[int, Any]]:
        return [await call(base, "GET", "ada"), await call(base, "GET", "grace")]

    (code, ada), (_, grace) = asyncio.run(serving(s, reads))
    assert code == 200
    assert ada["preferences"]["rules"] == {"category:social:email": False}
    assert ada["preferences"]["quiet_hours"]["start"] == "22:00"
    assert grace["preferences"]["rules"] == {}
