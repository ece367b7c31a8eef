"""Audiences and broadcasts on the real stack: membership and broadcasts posted to the HTTP API, expanded
by the audience processor, planned by the router; cancellation; a broadcast of an unknown type."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any
from uuid import UUID, uuid5

import aiohttp
import psycopg

from processors.audience import Audience
from projections import Projection, Runner
from projections.db import MIGRATIONS
from tests.integration.conftest import read_all, table_checksums
from tests.integration.test_api import GLOBEX, call, serving
from tests.integration.test_cli import run as run_cli
from tests.integration.test_projections import project, rows
from tests.integration.test_router import commands, decoded, publish_catalog, run_router
from tidings.cli.demo import fast_rules
from tidings.client import Client
from tidings.config import Settings
from tidings.events import NotificationCancelled, NotificationRequested
from tidings.kafka.records import ERROR_MESSAGE, header_map
from tidings.topics import names


def run_audience(s: Settings, idle: float = 3.0) -> Audience:
    audience = Audience(s, instance="0", group_id=f"audience-{s.topic_prefix}")
    thread = threading.Thread(target=audience.run, kwargs={"idle_exit_after": idle})
    thread.start()
    thread.join(timeout=180)
    assert not thread.is_alive()
    return audience


def requests(s: Settings) -> list[NotificationRequested]:
    return [e for e in decoded(s, names(s).requested) if isinstance(e, NotificationRequested)]


def test_a_posted_broadcast_reaches_every_member_once_and_the_router_plans_each(topology: Settings) -> None:
    s = topology
    publish_catalog(s)
    fans = [f"fan-{i}" for i in range(2_000)]
    shipped = {
        "audience": "fans",
        "type": "order.shipped",
        "data": {"order": "A-1", "carrier": "DHL"},
        "channels": ["in_app"],
    }

    async def scenario(base: str) -> list[tuple[int, Any, dict[str, str]]]:
        async with aiohttp.ClientSession() as http:
            url = f"{base}/v1/audiences/fans/members"
            joined = await call(http, "POST", url, json={"add": [*fans, "gone"]})
            left = await call(http, "POST", url, json={"remove": ["gone"]})
            key = {"Idempotency-Key": "launch-1"}
            first = await call(http, "POST", f"{base}/v1/broadcasts", json=shipped, headers=key)
            again = await call(http, "POST", f"{base}/v1/broadcasts", json=shipped, headers=key)
            other = shipped | {"data": {"order": "A-2", "carrier": "DHL"}}
            reused = await call(http, "POST", f"{base}/v1/broadcasts", json=other, headers=key)
            empty = await call(http, "POST", url, json={})
            return [joined, left, first, again, reused, empty]

    joined, left, first, again, reused, empty = asyncio.run(serving(s, scenario))
    assert (joined[0], left[0], first[0], again[0], empty[0]) == (202, 202, 202, 202, 422)
    assert (reused[0], reused[1]["title"]) == (422, "Idempotency-Key reused"), "the new broadcast was dropped"
    assert len(joined[1]["event_ids"]) == 3
    bid = UUID(first[1]["broadcast_id"])
    assert again[1]["broadcast_id"] == str(bid)

    audience = run_audience(s)
    assert audience.expander.duplicates == 1
    made = requests(s)
    assert sorted(e.recipient_id for e in made) == sorted(fans)
    assert {e.notification_id for e in made} == {uuid5(bid, f) for f in fans}
    assert {(e.broadcast_id, e.notification_type, e.data_json) for e in made} == {
        (bid, "order.shipped", '{"order":"A-1","carrier":"DHL"}')
    }

    run_router(s)
    planned = [c for c in commands(s) if c.channel == "in_app"]
    assert sorted(c.recipient_id for c in planned) == sorted(fans)


def test_cancelling_a_finished_broadcast_cancels_each_member_notification(topology: Settings) -> None:
    s = topology
    publish_catalog(s)
    with Client(s) as client:
        client.add_members(tenant="acme", audience="team", recipients=["a", "b", "c"])
        bid = client.broadcast(tenant="acme", audience="team", type="order.shipped")
    run_audience(s)

    async def scenario(base: str) -> tuple[int, Any, dict[str, str]]:
        async with aiohttp.ClientSession() as http:
            url = f"{base}/v1/audiences/team/broadcasts/{bid}/cancel"
            return await call(http, "POST", url, json={"reason": "sent by mistake"})

    assert asyncio.run(serving(s, scenario))[0] == 202
    run_audience(s)
    cancelled = [e for e in decoded(s, names(s).requested) if isinstance(e, NotificationCancelled)]
    assert sorted((e.recipient_id, e.reason) for e in cancelled) == [
        (r, "sent by mistake") for r in ("a", "b", "c")
    ]
    assert {e.notification_id for e in cancelled} == {uuid5(bid, r) for r in ("a", "b", "c")}


def test_a_broadcast_of_an_unknown_type_is_dead_lettered_and_the_next_one_flows(topology: Settings) -> None:
    s = topology
    publish_catalog(s)
    with Client(s) as client:
        client.add_members(tenant="acme", audience="team", recipients=["a", "b"])
        client.broadcast(tenant="acme", audience="team", type="no.such.type")
        good = client.broadcast(tenant="acme", audience="team", type="order.shipped")
    run_audience(s)
    letters = read_all(s, names(s).dlq)
    assert len(letters) == 1
    assert "unknown notification type 'no.such.type'" in header_map(letters[0].headers)[ERROR_MESSAGE]
    assert {(e.broadcast_id, e.recipient_id) for e in requests(s)} == {(good, "a"), (good, "b")}


def test_the_audiences_projection_answers_reads_and_rebuilds_identically(database: Settings) -> None:
    s = database
    with Client(s) as client:
        client.add_members(tenant="acme", audience="fans", recipients=[f"f{i}" for i in range(5)])
        client.remove_members(tenant="acme", audience="fans", recipients=["f0", "nobody"])
        first = client.broadcast(tenant="acme", audience="fans", type="order.shipped")
        client.add_members(tenant="acme", audience="fans", recipients=["late", "f1", "late"])
        client.cancel_broadcast(tenant="acme", audience="fans", broadcast_id=first, reason="typo")
        never = UUID(int=7)
        client.cancel_broadcast(tenant="acme", audience="fans", broadcast_id=never)
        client.broadcast(tenant="acme", audience="fans", type="order.shipped", broadcast_id=never)
        client.add_members(tenant="globex", audience="fans", recipients=["g1"])
        client.add_members(tenant="acme", audience="gone", recipients=["x"])
        client.remove_members(tenant="acme", audience="gone", recipients=["x"])
    project(s, "audiences")

    async def scenario(base: str) -> list[tuple[int, Any, dict[str, str]]]:
        async with aiohttp.ClientSession() as http:
            return [
                await call(http, "GET", f"{base}/v1/audiences/fans"),
                await call(http, "GET", f"{base}/v1/audiences/fans/members?limit=3"),
                await call(http, "GET", f"{base}/v1/audiences/fans/members?limit=3&after=f4"),
                await call(http, "GET", f"{base}/v1/broadcasts/{first}"),
                await call(http, "GET", f"{base}/v1/broadcasts/{never}"),
                await call(http, "GET", f"{base}/v1/broadcasts/{first}", key=GLOBEX),
                await call(http, "GET", f"{base}/v1/audiences/fans/members?after=%00"),
                await call(http, "POST", f"{base}/v1/audiences/gone/broadcasts/{first}/cancel", json={}),
            ]

    size, page1, page2, one, other, foreign, nul, elsewhere = asyncio.run(serving(s, scenario))
    assert elsewhere[0] == 409 and "the broadcast is to fans" in elsewhere[1]["detail"]
    assert size[1] == {"audience_id": "fans", "members": 5}
    assert [m["recipient_id"] for m in page1[1]["items"]] == ["f1", "f2", "f3"] and page1[1]["next"] == "f3"
    assert [m["recipient_id"] for m in page2[1]["items"]] == ["late"] and page2[1]["next"] is None
    assert (one[1]["members"], one[1]["cancel_reason"], one[1]["notification_type"]) == (
        4,
        "typo",
        "order.shipped",
    )
    assert other[1]["members"] == 0 and other[1]["cancelled_at"] <= other[1]["requested_at"]
    assert (foreign[0], nul[0]) == (404, 400)
    tables = ["audience_members", "audiences", "broadcasts"]
    before = table_checksums(s, tables)
    assert rows(s, "SELECT audience_id, members FROM audiences ORDER BY 1, tenant_id") == [
        ("fans", 5),
        ("fans", 1),
    ]
    runner = Runner(s, Projection.registry["audiences"]())
    runner.rebuild()
    runner.close()
    assert table_checksums(s, tables) == before
    seed = (MIGRATIONS / "0008_audience_sizes.sql").read_text()
    with psycopg.connect(s.postgres_dsn) as conn:
        conn.execute(b"DROP TABLE audiences")
        conn.execute(seed.encode())
    assert table_checksums(s, tables) == before


def test_a_broadcasts_delivery_is_reported_by_status_and_channel(database: Settings) -> None:
    s = database
    publish_catalog(s)
    with Client(s) as client:
        client.add_members(tenant="acme", audience="team", recipients=["a", "b", "c"])
        client.update_recipient(tenant="acme", recipient="a", email="a@example.com")
        order = {"order": "A-1", "carrier": "DHL"}
        both = ["in_app", "email"]
        bid = client.broadcast(
            tenant="acme", audience="team", type="order.shipped", data=order, channels=both
        )
        client.send(tenant="acme", recipient="a", type="order.shipped", data=order, channels=["in_app"])
        other = client.broadcast(tenant="acme", audience="team", type="order.shipped", channels=["in_app"])
    run_audience(s)
    run_router(s)
    project(s, "audiences")
    project(s, "delivery_status")

    async def scenario(base: str) -> list[tuple[int, Any, dict[str, str]]]:
        async with aiohttp.ClientSession() as http:
            return [
                await call(http, "GET", f"{base}/v1/broadcasts/{bid}"),
                await call(http, "GET", f"{base}/v1/broadcasts/{other}"),
            ]

    first, second = asyncio.run(serving(s, scenario))
    assert first[1]["delivery"] == {
        "notifications": 3,
        "status": {"QUEUED": 3},
        "channels": {"email": {"QUEUED": 1, "SKIPPED": 2}, "in_app": {"QUEUED": 3}},
    }
    assert second[1]["delivery"] == {"notifications": 3, "status": {"REJECTED": 3}, "channels": {}}
    shown = run_cli("audience", "report", str(bid), "-t", "acme", "--json", s=s)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout) == {"broadcast_id": str(bid), **first[1]["delivery"]}
    foreign = run_cli("audience", "report", str(bid), "-t", "globex", s=s)
    assert foreign.returncode == 1 and "no notification" in foreign.stderr


def test_a_digested_broadcast_counts_each_member_once_per_channel(database: Settings) -> None:
    s = database
    publish_catalog(s)
    with Client(s) as client:
        for t in fast_rules():
            client.publish(t)
        client.add_members(tenant="acme", audience="team", recipients=["a", "b"])
        for r in ("a", "b"):
            client.update_recipient(tenant="acme", recipient=r, email=f"{r}@example.com")
        bid = client.broadcast(
            tenant="acme", audience="team", type="post.liked", data={"by": "x", "post": "p"}
        )
    run_audience(s)
    run_router(s, idle=6.0)
    project(s, "delivery_status")
    shown = run_cli("audience", "report", str(bid), "-t", "acme", "--json", s=s)
    assert shown.returncode == 0, shown.stderr
    report = json.loads(shown.stdout)
    assert report["notifications"] == 2
    assert report["channels"]["email"] == {"QUEUED": 2}
