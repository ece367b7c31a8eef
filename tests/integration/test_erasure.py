"""Erasure on the real stack: the router forgets the recipient and cancels what waits for it, the scheduler
drops its deferred commands, the projections delete its contacts, devices and inbox items, and the in-app
gateway refuses items requested before the erasure. And the export of what the tables hold about one."""

import asyncio
import json
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

import aiohttp
import psycopg
import pytest

from gateways.base import DeliveryRejected
from gateways.inapp._feed import INSERT, item_row
from gateways.runner import GatewayRunner
from processors import digest
from processors.recipients import RecipientState
from processors.router import Router
from processors.scheduler import Scheduler
from projections import Projection, Runner
from projections.recipients import erase
from tests.integration.conftest import read_all, table_checksums
from tests.integration.test_api import GLOBEX, call, serving
from tests.integration.test_cli import run
from tests.integration.test_digest_escalation import LIKED, outcomes_of
from tests.integration.test_inbox import command, inbox
from tests.integration.test_projections import project, rows
from tests.integration.test_router import commands, decoded, publish_catalog, run_router
from tidings.catalog import parse_type
from tidings.client import Client
from tidings.codec import default_codec
from tidings.config import Settings
from tidings.events import DeliveryCommand, NotificationOpened, ProviderFeedback, RecipientErased
from tidings.kafka import EventProducer, Output
from tidings.kafka.records import log_time
from tidings.topics import names


def pause() -> None:
    """Records a few milliseconds apart, so the router's time alignment of its inputs keeps this order."""
    time.sleep(0.05)


def test_the_router_and_scheduler_drop_what_waits_for_an_erased_recipient(topology: Settings) -> None:
    s = topology
    publish_catalog(s)
    later = datetime.now(UTC) + timedelta(hours=1)
    with Client(s) as client:
        client.publish(parse_type("*", LIKED | {"digest": LIKED["digest"] | {"window": "1h"}}))
        for who in ("ada", "bob"):
            client.update_recipient(tenant="acme", recipient=who, email=f"{who}@example.com")
        pause()
        waiting: dict[str, list[Any]] = {}
        for who in ("ada", "bob"):
            liked = [
                client.send(tenant="acme", recipient=who, type="post.liked", data={"by": by, "post": "P"})
                for by in ("Cy", "Di")
            ]
            order = {"order": "A-1", "carrier": "D"}
            scheduled = client.send(
                tenant="acme", recipient=who, type="order.shipped", data=order, scheduled_at=later
            )
            waiting[who] = [*liked, scheduled]
        pause()
        erased_at = datetime.now(UTC)
        erasure = RecipientErased(
            tenant_id="acme",
            recipient_id="ada",
            reason="ticket 42",
            occurred_at=erased_at - timedelta(hours=1),
        )
        client.publish(erasure)
        pause()
        late = ProviderFeedback(
            tenant_id="acme",
            recipient_id="ada",
            kind="hard_bounce",
            channel="email",
            address="ada@example.com",
            occurred_at=erased_at - timedelta(minutes=5),
        )
        with EventProducer(s) as producer:
            producer.produce(Output.event(names(s).feedback, late))
        pause()
        after = client.send(
            tenant="acme", recipient="ada", type="order.shipped", data={"order": "A-2", "carrier": "D"}
        )
    router = Router(s, instance="0", group_id=f"router-{s.topic_prefix}")
    thread = threading.Thread(target=router.run)
    thread.start()
    deadline = time.monotonic() + 120
    while router.loop.committed_records < 3 + 8 and time.monotonic() < deadline:
        time.sleep(0.05)
    router.stop()
    thread.join(timeout=60)
    assert not thread.is_alive() and router.loop.committed_records == 11, "bob's digest stays open (1h)"
    two_hours_on = Scheduler(
        s, instance="0", group_id=f"scheduler-{s.topic_prefix}", clock=lambda: time.time() + 2 * 3600
    )
    two_hours_on.run(idle_exit_after=3.0)  # a scheduler that lags: the timers are due as they arrive

    outcomes = outcomes_of(s)
    cancelled = Counter((o.notification_id, o.channel) for o in outcomes if o.status == "CANCELLED")
    assert all(o.reason == "erased" for o in outcomes if o.status == "CANCELLED")
    liked, scheduled = waiting["ada"][:2], waiting["ada"][2]
    assert {n: cancelled[(n, "email")] for n in liked} == {n: 1 for n in liked}, "left its open digest"
    assert cancelled[(scheduled, "email")] == 1 and cancelled[(scheduled, "in_app")] == 1
    assert not any(n in waiting["bob"] for n, _ in cancelled), "another recipient's waits are untouched"

    waited = [c for c in commands(s) if c.notification_id == scheduled or c.channel == "email"]
    assert [c for c in waited if c.recipient_id == "ada"] == [], "what waited at the erasure is not sent"
    bob = {c.notification_id for c in commands(s) if c.recipient_id == "bob"}
    assert waiting["bob"][2] in bob, "bob's scheduled order is released when due"
    fresh = [(o.channel, o.status, o.reason) for o in outcomes if o.notification_id == after]
    assert ("email", "SKIPPED", "no_address") in fresh, "the contacts are forgotten"
    assert ("in_app", "QUEUED", None) in fresh, "a request after the erasure is planned afresh"

    changelog = read_all(s, names(s).changelog("router", "recipients"))
    last = [r.value for r in changelog if r.key == b"acme/ada"][-1]
    assert last is not None and b"ada@example.com" not in last, last
    kept = RecipientState.model_validate_json(last[8:])  # after the store's 8-byte expiry
    assert kept == RecipientState(erased_at=kept.erased_at) and kept.erased_at is not None, (
        "the erasure's time only: a bounce from before it, reported after it, brought the address back"
    )
    logged_from = erased_at.replace(microsecond=erased_at.microsecond // 1000 * 1000)
    assert kept.erased_at >= logged_from, "dated when it reached Kafka (in ms), as the projections date it"


def test_the_projections_forget_contacts_devices_and_inbox_items_and_rebuild_identically(
    database: Settings,
) -> None:
    s = database
    with Client(s) as client:
        for who in ("ada", "bob"):
            client.update_recipient(tenant="acme", recipient=who, email=f"{who}@example.com")
            client.register_device(
                tenant="acme", recipient=who, device_id="phone", platform="fcm", token=f"tok-{who}"
            )
    items = {who: command(who, f"for {who}") for who in ("ada", "bob")}
    asyncio.run(send_all(s, list(items.values())))
    assert rows(s, "SELECT recipient_id FROM inbox_items ORDER BY 1") == [("ada",), ("bob",)]

    with Client(s) as client:
        client.erase_recipient(tenant="acme", recipient="ada", reason="ticket 42")
        pause()
        client.update_recipient(tenant="acme", recipient="ada", email="ada@new.example.com")
        client.register_device(tenant="acme", recipient="ada", device_id="tablet", platform="fcm", token="t2")
    for name in ("recipients", "devices"):
        project(s, name)

    assert rows(s, "SELECT recipient_id, email FROM recipients ORDER BY 1") == [
        ("ada", "ada@new.example.com"),
        ("bob", "bob@example.com"),
    ]
    assert rows(s, "SELECT recipient_id, device_id FROM devices ORDER BY 1") == [
        ("ada", "tablet"),
        ("bob", "phone"),
    ]
    assert rows(s, "SELECT recipient_id FROM inbox_items") == [("bob",)]
    [(erased_at, reason)] = rows(s, "SELECT erased_at, reason FROM erasures WHERE recipient_id = 'ada'")
    assert reason == "ticket 42"

    late = command("ada", "requested before the erasure, delivered after it")
    late = late.model_copy(update={"occurred_at": erased_at - timedelta(seconds=1)})
    lagging = command("ada", "requested before the erasure, planned after it by a router behind")
    lagging = lagging.model_copy(update={"requested_at": erased_at - timedelta(seconds=1)})
    fresh = command("ada", "requested after the erasure")
    for refused in (late, lagging):
        with pytest.raises(DeliveryRejected, match="erased"):
            asyncio.run(send_all(s, [refused]))
    asyncio.run(send_all(s, [fresh]))
    assert sorted(rows(s, "SELECT title FROM inbox_items WHERE recipient_id = 'ada'")) == [
        ("requested after the erasure",)
    ]

    tables = ["recipients", "devices", "inbox_items", "erasures"]
    before = table_checksums(s, tables)
    for name in ("recipients", "devices"):
        runner = Runner(s, Projection.registry[name]())
        runner.rebuild()
        runner.close()
    assert table_checksums(s, tables) == before


def test_an_erasure_waits_for_an_inbox_insert_in_flight_and_deletes_its_item(database: Settings) -> None:
    """Without the lock the erasure would not see the uncommitted item, and the item would outlive it."""
    s = database
    item = command("ada", "in flight")
    gateway = psycopg.connect(s.postgres_dsn)
    gateway.execute(INSERT, item_row(item))
    erased = threading.Event()

    def erasure() -> None:
        with psycopg.connect(s.postgres_dsn) as conn, conn.transaction(), conn.cursor() as cur:
            erase(cur, RecipientErased(tenant_id="acme", recipient_id="ada"))
        erased.set()

    thread = threading.Thread(target=erasure)
    thread.start()
    assert not erased.wait(1.0), "the erasure waits for the insert in flight"
    gateway.commit()
    gateway.close()
    thread.join(timeout=30)
    assert erased.is_set()
    assert rows(s, "SELECT count(*) FROM inbox_items") == [(0,)]


def api_calls(
    s: Settings, *requests: tuple[str, str, dict[str, Any]]
) -> list[tuple[int, Any, dict[str, str]]]:
    """Each (method, path, call's keywords) against an edge serving the API, in order."""

    async def scenario(base: str) -> list[tuple[int, Any, dict[str, str]]]:
        async with aiohttp.ClientSession() as http:
            return [await call(http, method, base + path, **kw) for method, path, kw in requests]

    result: list[tuple[int, Any, dict[str, str]]] = asyncio.run(serving(s, scenario))
    return result


async def send_all(s: Settings, items: list[DeliveryCommand]) -> None:
    provider = inbox(s)
    try:
        async with aiohttp.ClientSession() as session:
            for item in items:
                await provider.send(session, item)
    finally:
        await provider.close()


def test_the_api_and_the_cli_erase_a_recipient_and_take_it_out_of_its_audiences(database: Settings) -> None:
    s = database
    with Client(s) as client:
        for who in ("ada", "bob", "cy"):
            client.update_recipient(tenant="acme", recipient=who, email=f"{who}@example.com")
        client.add_members(tenant="acme", audience="beta", recipients=["ada", "bob", "cy"])
        client.add_members(tenant="acme", audience="gamma", recipients=["ada"])
    for name in ("recipients", "audiences"):
        project(s, name)

    too_long, done, anonymous = api_calls(
        s,
        ("DELETE", f"/v1/recipients/ada?reason={'x' * 501}", {}),
        ("DELETE", "/v1/recipients/ada?reason=ticket-7", {}),
        ("DELETE", "/v1/recipients/ada", {"key": None}),
    )
    assert (too_long[0], done[0], anonymous[0]) == (400, 202, 401)
    assert len(done[1]["event_ids"]) == 2, "one removal per audience"
    early = run("recipients", "erase", "-t", "acme", "-r", "bob", s=s)
    assert early.returncode == 1 and "membership records to apply" in early.stderr, early.stderr
    project(s, "audiences")
    cli = run("recipients", "erase", "-t", "acme", "-r", "bob", s=s)
    assert cli.returncode == 0, cli.stderr
    assert "removed from 1 audiences" in cli.stderr

    erasures = [e for e in decoded(s, names(s).recipients) if isinstance(e, RecipientErased)]
    assert sorted((e.recipient_id, e.reason or "") for e in erasures) == [("ada", "ticket-7"), ("bob", "")]
    assert done[1]["event_id"] in {str(e.event_id) for e in erasures}
    for name in ("recipients", "audiences"):
        project(s, name)
    assert rows(s, "SELECT recipient_id FROM recipients") == [("cy",)]
    assert rows(s, "SELECT audience_id, recipient_id FROM audience_members ORDER BY 1, 2") == [("beta", "cy")]


def test_an_erasure_waits_for_the_audiences_projection_to_know_every_membership(database: Settings) -> None:
    """A membership added just before the erasure, not yet in the audiences table, was never removed:
    the audience processor kept the recipient and every later broadcast reached it."""
    s = database
    with Client(s) as client:
        client.add_members(tenant="acme", audience="beta", recipients=["ada"])
    [(status, body, headers)] = api_calls(s, ("DELETE", "/v1/recipients/ada", {}))
    assert status == 503 and "membership records to apply" in body["detail"] and headers["Retry-After"] == "5"
    assert not [e for e in decoded(s, names(s).recipients) if isinstance(e, RecipientErased)]
    with Client(s) as client:
        client.add_members(tenant="acme", audience="gamma", recipients=["ada"])
    catching_up = threading.Timer(1.0, project, (s, "audiences"))
    catching_up.start()
    try:
        [(status, body, _)] = api_calls(s, ("DELETE", "/v1/recipients/ada", {}))
    finally:
        catching_up.join()
    assert status == 202 and len(body["event_ids"]) == 2, "it waited for the projection to catch up"


def test_an_export_holds_what_the_tables_hold_and_an_erasure_leaves_the_delivery_record(
    database: Settings,
) -> None:
    s = database
    publish_catalog(s)
    with Client(s) as client:
        client.update_recipient(tenant="acme", recipient="ada", email="ada@example.com", name="Ada")
        client.register_device(
            tenant="acme", recipient="ada", device_id="phone", platform="fcm", token="tok-1"
        )
        client.add_members(tenant="acme", audience="beta", recipients=["ada"])
        pause()
        sent = [
            client.send(
                tenant="acme", recipient="ada", type="order.shipped", data={"order": o, "carrier": "D"}
            )
            for o in ("A-1", "A-2")
        ]
    run_router(s)
    with Client(s) as client:
        opened = NotificationOpened(
            tenant_id="acme",
            recipient_id="ada",
            notification_id=sent[0],
            delivery_id=uuid4(),
            channel="email",
        )
        client.publish(opened)
    for name in ("delivery_status", "recipients", "devices", "audiences", "inbox"):
        project(s, name)
    asyncio.run(send_all(s, [command("ada", "hello")]))

    full, one, bad, unknown, foreign = api_calls(
        s,
        ("GET", "/v1/recipients/ada/export", {}),
        ("GET", "/v1/recipients/ada/export?limit=1", {}),
        ("GET", "/v1/recipients/ada/export?limit=0", {}),
        ("GET", "/v1/recipients/zed/export", {}),
        ("GET", "/v1/recipients/ada/export", {"key": GLOBEX}),
    )
    assert [x[0] for x in (full, one, bad, unknown, foreign)] == [200, 200, 400, 404, 404]
    body = full[1]
    assert body["profile"]["contacts"]["email"] == "ada@example.com"
    assert [d["device_id"] for d in body["devices"]] == ["phone"] and "tok-1" not in str(body)
    assert body["audiences"] == ["beta"]
    assert {n["notification_id"] for n in body["notifications"]} == {str(n) for n in sent}
    assert all("email" in {d["channel"] for d in n["deliveries"]} for n in body["notifications"])
    read = {n["notification_id"]: n["read_at"] for n in body["notifications"]}
    assert read[str(sent[0])] is not None and read[str(sent[1])] is None, "an email opened is engagement"
    assert [i["title"] for i in body["inbox"]] == ["hello"]
    assert (body["erased"], body["truncated"]) == (None, False)
    assert (len(one[1]["notifications"]), one[1]["truncated"]) == (1, True)
    cli = run("recipients", "export", "-t", "acme", "-r", "ada", s=s)
    assert cli.returncode == 0, cli.stderr
    assert json.loads(cli.stdout)["audiences"] == ["beta"]

    with Client(s) as client:
        client.erase_recipient(tenant="acme", recipient="ada", reason="ticket 9")
    for name in ("recipients", "devices"):
        project(s, name)
    cli = run("recipients", "export", "-t", "acme", "-r", "ada", s=s)
    after = json.loads(cli.stdout)
    assert (after["profile"], after["devices"], after["inbox"]) == (None, [], [])
    assert after["erased"]["reason"] == "ticket 9"
    assert len(after["notifications"]) == 2, "the delivery record is kept"


def test_a_digest_closed_before_the_erasure_but_planned_after_it_does_not_reach_the_inbox(
    database: Settings,
) -> None:
    """The router closes a full bucket while handling the next like, writing the digest request after
    the erasure was written; the digest counts as requested when its likes were, so it is erased."""
    s = database
    liked = LIKED | {
        "digest": {
            "window": "1h",
            "templates": LIKED["digest"]["templates"]
            | {"in_app": {"default": {"title": "{{ count }} likes"}}},
        }
    }
    with Client(s) as client:
        client.publish(parse_type("*", liked))
        client.update_recipient(tenant="acme", recipient="ada", email="ada@example.com")
        pause()
        for i in range(digest.MAX_ITEMS + 1):
            client.send(
                tenant="acme", recipient="ada", type="post.liked", data={"by": i, "post": "P"}, wait=False
            )
        client.flush()
        pause()
        client.erase_recipient(tenant="acme", recipient="ada")
    router = Router(s, instance="0", group_id=f"router-{s.topic_prefix}")
    thread = threading.Thread(target=router.run)
    thread.start()
    deadline = time.monotonic() + 120
    while router.loop.committed_records < digest.MAX_ITEMS + 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    router.stop()
    thread.join(timeout=60)

    [summary] = [
        c for c in commands(s) if c.channel == "in_app" and c.content.title == f"{digest.MAX_ITEMS} likes"
    ]
    [erasure] = [
        r
        for r in read_all(s, names(s).recipients)
        if isinstance(default_codec().decode(r.value or b""), RecipientErased)
    ]
    erased_at = log_time(erasure)
    assert summary.requested_at is not None and erased_at is not None and summary.requested_at < erased_at
    project(s, "recipients")

    async def deliver() -> None:
        await GatewayRunner(s, "in_app", [inbox(s)]).run(idle_exit_after=2.0)

    asyncio.run(deliver())
    assert rows(s, "SELECT title FROM inbox_items WHERE title LIKE '%%likes'") == []


def test_timers_pending_at_the_erasure_leave_the_scheduler_at_once_not_when_due(topology: Settings) -> None:
    s = topology
    publish_catalog(s)
    tomorrow = datetime.now(UTC) + timedelta(days=1)
    with Client(s) as client:
        for who in ("ada", "bob"):
            client.update_recipient(tenant="acme", recipient=who, email=f"{who}@example.com")
        pause()
        waiting = {
            who: client.send(
                tenant="acme",
                recipient=who,
                type="order.shipped",
                data={"order": "A-1", "carrier": "D"},
                scheduled_at=tomorrow,
            )
            for who in ("ada", "bob")
        }
    run_router(s)
    scheduler = Scheduler(s, instance="0", group_id=f"scheduler-{s.topic_prefix}")
    thread = threading.Thread(target=scheduler.run)
    thread.start()
    deadline = time.monotonic() + 60
    try:
        while scheduler.loop.committed_records < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert scheduler.loop.committed_records == 4, "two channels of two deferred requests"
        with Client(s) as client:
            client.erase_recipient(tenant="acme", recipient="ada")
        run_router(s)
        while scheduler.cancelled < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        scheduler.stop()
        thread.join(timeout=60)

    cancelled = [(o.notification_id, o.channel, o.reason) for o in outcomes_of(s) if o.status == "CANCELLED"]
    assert sorted(cancelled) == [(waiting["ada"], "email", "erased"), (waiting["ada"], "in_app", "erased")]
    timers: dict[bytes, bytes | None] = {}
    for r in read_all(s, names(s).changelog("scheduler", "timers")):
        timers[r.key or b""] = r.value
    held = [
        default_codec().decode(v[8:]) for k, v in timers.items() if v is not None and not k.startswith(b"n/")
    ]
    assert sorted((c.recipient_id, c.channel) for c in held) == [("bob", "email"), ("bob", "in_app")]
    index = {k for k, v in timers.items() if v is not None and k.startswith(b"n/")}
    assert index == {f"n/{waiting['bob']}".encode()}, "ada's notification left the index"
    assert all(b"ada@example.com" not in (v or b"") for v in timers.values()), "ada's content is tombstoned"
    erased = {r.key: r.value for r in read_all(s, names(s).changelog("scheduler", "erased"))}
    assert erased[b"sweep"] is None and erased[b"acme/ada"] is not None, "the walk ended"
