"""The runner's lanes on the real stack: a slow send holds back no other send, an urgent command
takes the next free slot however many standard commands wait for one, and a claim of the gateway's own
left by a Redis failure holds up nothing."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable

import pytest
import redis.asyncio
from aiohttp import web

from gateways import lanes
from gateways.marks import mark_ref
from gateways.runner import GatewayRunner, GatewaySettings
from gateways.webhook.standard import StandardWebhook, WebhookSettings
from tests.integration.test_gateway_runner import Handler, commands, outcomes, produce, runner, serve
from tidings.config import Settings
from tidings.kafka import EventProducer, Output
from tidings.kafka.aio import AsyncConsumer
from tidings.topics import names

ELSEWHERE = json.dumps({"state": "inflight", "owner": "webhook/elsewhere"})
"""A delivery's mark while another gateway sends it."""


def keeping(kept: list[str], *, delay: float = 0.0, paths: bool = False) -> Handler:
    """A receiver that keeps each webhook-id (or the path's name), `delay` seconds after reading the
    body, and answers 204."""

    async def handler(request: web.Request) -> web.Response:
        await request.read()
        await asyncio.sleep(delay)
        kept.append(request.match_info["name"] if paths else request.headers["webhook-id"])
        return web.Response(status=204)

    return handler


async def put_marks(s: Settings, marks: dict[str, tuple[str, int]]) -> None:
    """Delivery marks as gateways leave them in Redis: key -> (value, seconds to live)."""
    async with redis.asyncio.Redis.from_url(s.redis_url) as client:
        for key, (value, ttl) in marks.items():
            await client.set(key, value, ex=ttl)


def test_a_slow_send_holds_back_no_other_send(namespace: Callable[..., Settings]) -> None:
    """While one endpoint takes its time, the commands produced meanwhile, to every partition including
    its own, are fetched and sent (they waited for the batch holding the slow send to finish); its
    partition's commit waits for it, and once it answered a second gateway finds nothing to send."""
    s = namespace()
    got: list[str] = []
    slow_in, answer = asyncio.Event(), asyncio.Event()

    async def handler(request: web.Request) -> web.Response:
        await request.read()
        if request.match_info["name"] == "slow":
            slow_in.set()
            await answer.wait()
        got.append(request.match_info["name"])
        return web.Response(status=204)

    async def scenario() -> int:
        app_runner, base = await serve(handler)
        produce(s, commands(f"{base}/slow", 1))
        patient = StandardWebhook(WebhookSettings(allow_cidrs="127.0.0.1/32", read_timeout=30))
        gateway = GatewayRunner(s, "webhook", [patient], GatewaySettings())
        task = asyncio.create_task(gateway.run(idle_exit_after=3))
        await asyncio.wait_for(slow_in.wait(), 30)
        await asyncio.to_thread(produce, s, commands(f"{base}/fast", 30))
        deadline = time.monotonic() + 15
        while len(got) < 30 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        sent_meanwhile = len(got)
        answer.set()
        await task
        await runner(s).run(idle_exit_after=3)
        await app_runner.cleanup()
        return sent_meanwhile

    assert asyncio.run(scenario()) == 30
    assert got == ["fast"] * 30 + ["slow"]
    assert [o.status for o in outcomes(s)].count("SENT") == 31


def test_an_urgent_command_takes_the_next_free_slot(namespace: Callable[..., Settings]) -> None:
    """One slot, 300 standard commands queued for it: an urgent command produced after the 20th was
    sent goes next (it used to wait for the rest of the standard lane's fetched batch)."""
    s = namespace()
    got: list[str] = []

    async def scenario() -> None:
        app_runner, base = await serve(keeping(got, delay=0.02, paths=True))
        produce(s, commands(f"{base}/standard", 300))
        gateway = runner(s, concurrency=1)
        task = asyncio.create_task(gateway.run(idle_exit_after=3))
        while len(got) < 20:
            await asyncio.sleep(0.01)
        [urgent] = commands(f"{base}/urgent", 1)
        with EventProducer(s) as producer:
            producer.produce(Output.event(names(s).delivery("webhook", urgent=True), urgent))
        await task
        await app_runner.cleanup()

    asyncio.run(scenario())
    assert len(got) == 301
    assert got.index("urgent") < 50, got.index("urgent")


def test_a_claim_of_its_own_left_by_a_redis_failure_is_taken_again_at_once(
    namespace: Callable[..., Settings],
) -> None:
    """Redis failing right after a claim was made leaves the gateway's own in-flight mark, for a
    claim's lifetime (60 s): the command read again is sent at once (it waited out the minute). A
    second copy of a command in flight here still waits for the first: each is sent once."""
    s = namespace()
    ids: list[str] = []

    async def scenario() -> list[str]:
        app_runner, base = await serve(keeping(ids, delay=0.3))
        stale, twice = commands(f"{base}/hook", 2)
        produce(s, [stale, twice, twice])
        gateway = runner(s, busy_backoff=0.5)
        own = json.dumps({"state": "inflight", "owner": gateway.marks.owner})
        await put_marks(s, {gateway.marks.key(mark_ref(stale)): (own, 60)})
        await asyncio.wait_for(gateway.run(idle_exit_after=3), 30)
        await app_runner.cleanup()
        return [str(stale.delivery_id), str(twice.delivery_id)]

    expected = asyncio.run(scenario())
    assert sorted(ids) == sorted(expected)
    assert [o.status for o in outcomes(s)].count("SENT") == 2


def test_stopping_while_a_slow_send_fills_its_partitions_window_hands_on_what_ended(
    namespace: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A slow send at the head of a partition, its window (3 here) full of sends that ended behind it:
    stop() finishes the slow one and commits all three (it crashed on the emptied backlog); the next
    gateway sends the other eight, each once."""
    monkeypatch.setattr(lanes, "WINDOW", 3)
    s = namespace(partitions=1)
    ids: list[str] = []
    answer = asyncio.Event()

    async def handler(request: web.Request) -> web.Response:
        await request.read()
        if request.match_info["name"] == "slow":
            await answer.wait()
        ids.append(request.headers["webhook-id"])
        return web.Response(status=204)

    async def scenario() -> int:
        app_runner, base = await serve(handler)
        produce(s, commands(f"{base}/slow", 1) + commands(f"{base}/fast", 10))
        gateway = runner(s)
        task = asyncio.create_task(gateway.run())
        while len(ids) < 2:
            await asyncio.sleep(0.02)
        gateway.stop()
        await asyncio.sleep(0.5)
        answer.set()
        await task
        sent_first = len(ids)
        await runner(s).run(idle_exit_after=3)
        await app_runner.cleanup()
        return sent_first

    assert asyncio.run(scenario()) == 3
    assert len(ids) == len(set(ids)) == 11
    assert [o.status for o in outcomes(s)].count("SENT") == 11


def test_a_held_partition_a_rebalance_gives_back_loses_nothing(namespace: Callable[..., Settings]) -> None:
    """The fourth command is in flight at another gateway, so its partition is held for 4 s; meanwhile a
    member joins the group and leaves (each time aiokafka revokes every partition and gives this one
    back, afresh from its committed offset). Every command is sent once: the records read again were
    dropped as if still held, and the fourth one and those after it were never sent."""
    s = namespace(partitions=1)
    ids: list[str] = []

    async def scenario() -> None:
        app_runner, base = await serve(keeping(ids))
        batch = commands(f"{base}/hook", 10)
        gateway = runner(s, busy_backoff=4)
        await put_marks(s, {gateway.marks.key(batch[3].delivery_id): (ELSEWHERE, 3)})
        produce(s, batch)
        task = asyncio.create_task(gateway.run(idle_exit_after=4))
        while not gateway.paused_until:
            await asyncio.sleep(0.02)
        member = AsyncConsumer(s, group_id=gateway.group, topics=[names(s).outcomes])
        await member.start()
        await asyncio.sleep(2)
        await member.stop()
        await task
        await app_runner.cleanup()

    asyncio.run(scenario())
    assert len(ids) == len(set(ids)) == 10
    assert [o.status for o in outcomes(s)].count("SENT") == 10


def test_a_blocked_command_between_two_that_ended_with_it_is_not_committed_past(
    namespace: Callable[..., Settings],
) -> None:
    """Three commands whose claims come back in one Redis pipeline, the middle one in flight at another
    gateway: all three end in the same pass, and the first one's callback saw the blocked one before
    its own did. The offset stays at the blocked command, so the next gateway sends it after a stop
    (its offset was committed past, and it was never sent)."""
    s = namespace(partitions=1)
    ids: list[str] = []

    async def scenario() -> str:
        app_runner, base = await serve(keeping(ids))
        before, blocked, after = commands(f"{base}/hook", 3)
        gateway = runner(s, busy_backoff=5)
        done = json.dumps({"state": "done", "status": "SENT", "emitted": True})
        await put_marks(
            s,
            {
                gateway.marks.key(mark_ref(before)): (done, 60),
                gateway.marks.key(mark_ref(after)): (done, 60),
                gateway.marks.key(mark_ref(blocked)): (ELSEWHERE, 3),
            },
        )
        produce(s, [before, blocked, after])
        task = asyncio.create_task(gateway.run())
        while not gateway.paused_until:
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.5)
        gateway.stop()
        await task
        await runner(s, busy_backoff=0.5).run(idle_exit_after=4)
        await app_runner.cleanup()
        return str(blocked.delivery_id)

    assert ids == [asyncio.run(scenario())]
