"""Erasure at the gateways, on the real stack: the router forwards an erasure to every channel's urgent
lane, and a gateway then cancels what it still holds for the recipient (retry tiers, a lane's backlog)
instead of sending it. Commands requested after the erasure are sent."""

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime

import redis.asyncio as aioredis
from aiohttp import web

from gateways.marks import Marks
from tests.integration.conftest import read_all
from tests.integration.test_gateway_runner import commands, outcomes, runner, serve
from tests.integration.test_router import run_router
from tidings.client import Client
from tidings.codec import default_codec
from tidings.config import Settings
from tidings.events import DeliveryCommand, RecipientErased
from tidings.kafka import EventProducer, Output
from tidings.topics import names


def webhook_commands(base: str, recipient: str, count: int, *, urgent: bool = False) -> list[DeliveryCommand]:
    """`count` webhooks to `<base>/<recipient>`, requested now."""
    update = {
        "recipient_id": recipient,
        "priority": "high" if urgent else "normal",
        "requested_at": datetime.now(UTC),
    }
    return [c.model_copy(update=update) for c in commands(f"{base}/{recipient}", count)]


def produce(s: Settings, batch: list[DeliveryCommand]) -> None:
    with EventProducer(s) as producer:
        for c in batch:
            producer.produce(Output.event(names(s).delivery("webhook", urgent=c.priority == "high"), c))


def test_commands_in_retry_tiers_are_cancelled_by_the_erasure_and_later_ones_sent(
    namespace: Callable[..., Settings],
) -> None:
    s = namespace(retry_tiers="6s")
    hits: Counter[str] = Counter()

    async def handler(request: web.Request) -> web.Response:
        await request.read()
        name = request.match_info["name"]
        hits[name] += 1
        return web.Response(status=503 if hits[name] <= 3 else 204)

    async def scenario() -> dict[str, int]:
        app_runner, base = await serve(handler)
        produce(s, webhook_commands(base, "ada", 3) + webhook_commands(base, "bob", 3))
        await runner(s, concurrency=1, circuit_failures=100).run(idle_exit_after=1)
        assert hits == {"ada": 3, "bob": 3}, "the first attempts did not all fail into the retry tier"
        with Client(s) as client:
            client.erase_recipient(tenant="acme", recipient="ada")
        await asyncio.to_thread(run_router, s, 3.0)
        time.sleep(0.05)
        later = webhook_commands(base, "ada", 1, urgent=True)
        produce(s, later)
        gateway = runner(s, concurrency=1, circuit_failures=100)
        await gateway.run(idle_exit_after=3)
        await app_runner.cleanup()
        return gateway.counts

    counts = asyncio.run(scenario())
    urgent = read_all(s, names(s).delivery("webhook", urgent=True))
    erasures = [
        e for e in (default_codec().decode(r.value or b"") for r in urgent) if isinstance(e, RecipientErased)
    ]
    assert [e.recipient_id for e in erasures] == ["ada"] and counts["erasures"] == 1
    assert hits == {"ada": 4, "bob": 6}, "an erased recipient's retry was sent, or a later command was not"
    final = {o.delivery_id: (o.status, o.reason) for o in outcomes(s) if o.status != "RETRYING"}
    assert Counter(final.values()) == {("CANCELLED", "erased"): 3, ("SENT", None): 4}


def test_the_claim_cancels_only_what_was_requested_before_the_latest_erasure(stack: Settings) -> None:
    async def scenario() -> list[str | None]:
        client = aioredis.Redis.from_url(stack.redis_url)
        marks = Marks(client, f"t{uuid.uuid4().hex[:8]}:", "test", inflight_ttl=60, done_ttl=600)
        key, dead = marks.erased_key("acme", "ada"), marks.key("dead")
        states: list[str | None] = []
        try:
            for erased_ms, requested_ms in [(1000, 999), (1000, 1000), (500, 999), (2000, 1999)]:
                await marks.erased(key, erased_ms, 600)
                mark = await marks.claim(f"acme/{uuid.uuid4()}", 0, dead, key, requested_ms)
                states.append(mark and mark["state"])
            states.append(str(await client.ttl(key) > 500))
            await marks.erased(key, 2000, 5000)
            states.append(str(await client.ttl(key) > 4000))
            await client.set(key, "not a time")
            mark = await marks.claim(f"acme/{uuid.uuid4()}", 0, dead, key, 1)
            states.append(mark and mark["state"])
            await marks.erased(key, 3000, 600)
            mark = await marks.claim(f"acme/{uuid.uuid4()}", 0, dead, key, 2999)
            states.append(mark and mark["state"])
        finally:
            await client.aclose()
        return states

    assert asyncio.run(scenario()) == ["erased", None, "erased", "erased", "True", "True", None, "erased"]
