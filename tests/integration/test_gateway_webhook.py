"""The gateway runner on the real stack (Kafka, Redis) delivering webhooks to a local receiver."""

import asyncio
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web
from standardwebhooks import Webhook

from gateways.runner import GatewayRunner
from gateways.webhook.standard import StandardWebhook, WebhookSettings
from tests.integration.conftest import read_all
from tidings.codec import default_codec
from tidings.config import Settings
from tidings.events import DeliveryCommand, DeliveryOutcome, ProviderFeedback, RenderedContent
from tidings.kafka import EventProducer, Output
from tidings.kafka.records import header_map
from tidings.topics import names

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
TERMINAL = {"SENT", "FAILED", "EXPIRED"}


def command(base: str, path: str, **changes: Any) -> DeliveryCommand:
    fields: dict[str, Any] = {
        "tenant_id": "acme",
        "delivery_id": uuid.uuid4(),
        "notification_id": uuid.uuid4(),
        "recipient_id": "u",
        "notification_type": "invoice.due",
        "channel": "webhook",
        "priority": "normal",
        "address": f"{base}/{path}",
        "address_params": {"secret": SECRET},
        "content": RenderedContent(data_json='{"n": 1}'),
    }
    return DeliveryCommand(**(fields | changes))


def test_deliveries_retries_failures_and_duplicates(namespace: Callable[..., Settings]) -> None:
    s = namespace(retry_tiers="1s,2s")
    n = names(s)
    received: Counter[tuple[str, str]] = Counter()
    calls: Counter[str] = Counter()

    async def receiver(request: web.Request) -> web.Response:
        body = await request.read()
        Webhook(SECRET).verify(body, dict(request.headers))
        path = request.match_info["name"]
        calls[path] += 1
        if path == "flaky" and calls[path] % 2 == 1:
            return web.Response(status=503)
        if path == "throttle" and calls[path] == 1:
            return web.Response(status=429, headers={"Retry-After": "1"})
        if path == "gone":
            return web.Response(status=410)
        if path == "down":
            return web.Response(status=500)
        received[(path, request.headers["webhook-id"])] += 1
        return web.Response(status=200)

    async def scenario() -> GatewayRunner:
        app = web.Application()
        app.router.add_post("/{name}", receiver)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        base = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
        ok = [command(base, "ok") for _ in range(60)]
        urgent = [command(base, "ok", priority="critical") for _ in range(5)]
        flaky = command(base, "flaky")
        throttled = command(base, "throttle")
        gone = command(base, "gone")
        down = command(base, "down")
        expired = command(base, "ok", expires_at=datetime.now(UTC) - timedelta(seconds=1))
        with EventProducer(s) as producer:
            for c in [*ok, flaky, throttled, gone, down, expired, ok[0]]:
                producer.produce(Output.event(n.delivery("webhook"), c))
            for c in urgent:
                producer.produce(Output.event(n.delivery("webhook", urgent=True), c))
            producer.produce(Output(n.delivery("webhook"), b"acme/u", b"poison"))
        gateway = GatewayRunner(s, "webhook", [StandardWebhook(WebhookSettings(allow_cidrs="127.0.0.1/32"))])
        try:
            await gateway.run(idle_exit_after=5)
        finally:
            await runner.cleanup()
        gateway.expected = (ok, urgent, flaky, throttled, gone, down, expired)  # type: ignore[attr-defined]
        return gateway

    gateway = asyncio.run(scenario())
    ok, urgent, flaky, throttled, gone, down, expired = gateway.expected  # type: ignore[attr-defined]
    sent = {str(c.delivery_id) for c in [*ok, *urgent, flaky, throttled]}
    assert {d for (_, d) in received} == sent and set(received.values()) == {1}
    assert calls["flaky"] == 2 and calls["throttle"] == 2 and calls["gone"] == 1 and calls["down"] == 3
    assert gateway.counts["duplicates"] == 1 and gateway.counts["dead_letters"] == 1

    outcomes = [default_codec().decode(r.value or b"") for r in read_all(s, n.outcomes)]
    terminal = Counter(
        (o.delivery_id, o.status) for o in outcomes if isinstance(o, DeliveryOutcome) and o.status in TERMINAL
    )
    assert set(terminal.values()) == {1}
    status = {d: st for (d, st) in terminal}
    assert all(status[c.delivery_id] == "SENT" for c in [*ok, *urgent, flaky, throttled])
    assert (status[gone.delivery_id], status[down.delivery_id], status[expired.delivery_id]) == (
        "FAILED",
        "FAILED",
        "EXPIRED",
    )
    retrying = [o for o in outcomes if isinstance(o, DeliveryOutcome) and o.status == "RETRYING"]
    assert sorted(o.reason or "" for o in retrying if o.delivery_id == down.delivery_id) == ["1s", "2s"]
    [feedback] = [
        f
        for f in (default_codec().decode(r.value or b"") for r in read_all(s, n.feedback))
        if isinstance(f, ProviderFeedback)
    ]
    assert (feedback.kind, feedback.address) == ("endpoint_disabled", gone.address)
    letters = [header_map(r.headers) for r in read_all(s, n.dlq)]
    assert sorted(h["tidings.error.type"] for h in letters) == ["BadMagic", "ProviderUnavailable"]
