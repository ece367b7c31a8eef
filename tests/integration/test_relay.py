"""Outcome destinations on the real stack: the router's outcomes relayed as webhook commands, delivered by
the webhook gateway to a local receiver that verifies their signatures, and never relayed twice."""

import asyncio
import json
from typing import Any

import aiohttp
from aiohttp import web
from standardwebhooks import Webhook

from gateways.runner import GatewayRunner
from gateways.webhook.standard import StandardWebhook, WebhookSettings
from processors.relay import Relay
from tests.integration.test_api import GLOBEX, call, serving
from tests.integration.test_router import commands, decoded, publish_catalog, run_router
from tidings.client import Client
from tidings.config import Settings
from tidings.events import RELAY_RECIPIENT, DestinationUpdated, InboxItemMarkedUnread, InboxItemRead
from tidings.topics import names

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def run_relay(s: Settings) -> Relay:
    relay = Relay(s, instance="0", group_id=f"relay-{s.topic_prefix}", from_beginning=True)
    relay.run(idle_exit_after=3.0)
    return relay


def test_outcomes_reach_each_matching_destination_signed_and_the_relay_never_relays_its_own(
    topology: Settings,
) -> None:
    s = topology
    publish_catalog(s)
    received: list[tuple[str, str, dict[str, Any]]] = []

    async def receiver(request: web.Request) -> web.Response:
        body = await request.read()
        Webhook(SECRET).verify(body, dict(request.headers))
        if request.match_info["name"] == "dead":
            return web.Response(status=410)
        received.append((request.match_info["name"], request.headers["webhook-id"], json.loads(body)))
        return web.Response(status=204)

    async def scenario() -> tuple[Relay, Relay, GatewayRunner]:
        app = web.Application()
        app.router.add_post("/{name}", receiver)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        base = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
        with Client(s) as client:
            for name, tenant, statuses in [
                ("all", "acme", []),
                ("skips", "acme", ["SKIPPED"]),
                ("gone", "acme", []),
                ("dead", "acme", ["QUEUED"]),
                ("other", "globex", []),
                ("reads", "acme", ["DELIVERED"]),
            ]:
                url = f"{base}/{name}"
                client.set_destination(
                    tenant=tenant,
                    destination_id=name,
                    url=url,
                    secret=SECRET,
                    statuses=statuses,
                    engagements=["read"] if name == "reads" else [],
                )
            client.remove_destination(tenant="acme", destination_id="gone")
            client.update_recipient(tenant="acme", recipient="ada", email="ada@example.com")
            order = {"order": "A-1", "carrier": "DHL"}
            client.send(
                tenant="acme", recipient="ada", type="order.shipped", data=order, channels=["email", "push"]
            )
        run_router(s)
        [email] = [c for c in commands(s) if c.channel == "email"]
        with Client(s) as client:
            client.publish(
                InboxItemRead(
                    tenant_id="acme",
                    recipient_id="ada",
                    notification_id=email.notification_id,
                    delivery_id=email.delivery_id,
                )
            )
            client.publish(
                InboxItemMarkedUnread(
                    tenant_id="acme",
                    recipient_id="ada",
                    notification_id=email.notification_id,
                    delivery_id=email.delivery_id,
                )
            )
        first = run_relay(s)
        gateway = GatewayRunner(s, "webhook", [StandardWebhook(WebhookSettings(allow_cidrs="127.0.0.1/32"))])
        try:
            await gateway.run(idle_exit_after=4)
        finally:
            await runner.cleanup()
        return first, run_relay(s), gateway

    first, second, gateway = asyncio.run(scenario())
    assert first.relayed == 5 and second.relayed == 0
    assert first.loop.dead_letters == 0
    assert gateway.counts["sent"] == 4 and second.disabled == 1
    latest = {e.key: e for e in decoded(s, names(s).destinations)}
    dead = latest["acme/dead"]
    assert isinstance(dead, DestinationUpdated) and not dead.enabled and dead.statuses == ["QUEUED"]
    got = sorted((name, body["type"], body["data"].get("channel")) for name, _, body in received)
    assert got == [
        ("all", "delivery.queued", "email"),
        ("all", "delivery.skipped", "push"),
        ("reads", "engagement.read", None),
        ("skips", "delivery.skipped", "push"),
    ]
    assert len({webhook_id for _, webhook_id, _ in received}) == 4
    assert all(body["data"]["recipient_id"] == "ada" for _, _, body in received)
    relayed = [c for c in commands(s) if c.recipient_id.startswith(RELAY_RECIPIENT)]
    assert sorted(c.recipient_id.removeprefix(RELAY_RECIPIENT) for c in relayed) == [
        "all",
        "all",
        "dead",
        "reads",
        "skips",
    ]
    import redis

    listed = redis.Redis.from_url(s.redis_url).keys(f"{s.topic_prefix}tidings:dead:*")
    assert listed == [], "a destination on the dead list stayed blocked after its owner re-enabled it"


def test_destinations_are_written_through_the_api_per_tenant(topology: Settings) -> None:
    s = topology

    async def scenario(base: str) -> list[tuple[int, Any, dict[str, str]]]:
        url = f"{base}/v1/destinations/ops"
        good = {
            "url": "https://hooks.example.com/tidings",
            "secret": SECRET,
            "statuses": ["FAILED"],
            "engagements": ["clicked"],
        }
        async with aiohttp.ClientSession() as http:
            return [
                await call(http, "PUT", url, json=good),
                await call(http, "PUT", url, json=good | {"secret": "not-a-secret"}),
                await call(http, "PUT", url, json=good | {"statuses": ["LOST"]}),
                await call(http, "PUT", url, json=good | {"engagements": ["liked"]}),
                await call(http, "PUT", url, json=good, key=GLOBEX),
                await call(http, "DELETE", url),
                await call(http, "PUT", url, json=good, key=None),
            ]

    put, bad_secret, bad_status, bad_kind, foreign, deleted, anonymous = asyncio.run(serving(s, scenario))
    assert (put[0], bad_secret[0], bad_status[0], bad_kind[0], foreign[0], deleted[0], anonymous[0]) == (
        202,
        422,
        422,
        422,
        202,
        202,
        401,
    )
    events = decoded(s, names(s).destinations)
    assert [(type(e).__name__, e.key) for e in events] == [
        ("DestinationUpdated", "acme/ops"),
        ("DestinationUpdated", "globex/ops"),
        ("DestinationRemoved", "acme/ops"),
    ]
    assert isinstance(events[0], DestinationUpdated) and events[0].statuses == ["FAILED"]
    assert events[0].engagements == ["clicked"]


def test_a_relay_started_at_the_end_keeps_that_start_through_a_restart(topology: Settings) -> None:
    """A new relay group starts at the end of the outcomes; a partition it had read nothing from had no
    committed offset, so after a restart it started at the end again, past the outcomes produced while
    it was down."""
    import uuid

    from tidings.events import DeliveryOutcome
    from tidings.kafka import EventProducer, Output

    s = topology
    group = f"relay-latest-{s.topic_prefix}"
    with Client(s) as client:
        client.set_destination(
            tenant="acme", destination_id="all", url="https://example.com/x", secret=SECRET
        )
    Relay(s, instance="0", group_id=group).run(idle_exit_after=3.0)
    outcomes = [
        DeliveryOutcome(tenant_id="acme", notification_id=uuid.uuid4(), recipient_id=f"r{i}", status="SENT")
        for i in range(6)
    ]
    with EventProducer(s) as producer:
        for o in outcomes:
            producer.produce(Output.event(names(s).outcomes, o))
    again = Relay(s, instance="0", group_id=group)
    again.run(idle_exit_after=3.0)
    assert again.relayed == 6
    relayed = [c for c in commands(s) if c.recipient_id.startswith(RELAY_RECIPIENT)]
    assert len(relayed) == 6
