"""A gateway's shutdown on the real stack: a step that fails does not skip the ones after it."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable

import pytest

from gateways.runner import GatewayRunner, GatewaySettings
from gateways.webhook.standard import StandardWebhook, WebhookSettings
from tests.integration.test_gateway_runner import accepting, commands, outcomes, produce, serve
from tidings.config import Settings
from tidings.kafka.admin import admin


def test_a_provider_whose_close_raises_leaves_the_group_and_closes_the_rest(
    namespace: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    s = namespace(retry_tiers="1s")
    settings = WebhookSettings(allow_cidrs="127.0.0.1/32", read_timeout=2)
    first, backup = StandardWebhook(settings), StandardWebhook(settings).named("standard@backup")
    closed: list[str] = []

    async def broken() -> None:
        raise RuntimeError("the provider's pool was already gone")

    async def recorded() -> None:
        closed.append("backup")

    monkeypatch.setattr(first, "close", broken)
    monkeypatch.setattr(backup, "close", recorded)
    bodies: list[bytes] = []

    async def scenario() -> GatewayRunner:
        app_runner, base = await serve(accepting(bodies))
        produce(s, commands(f"{base}/hook", 20))
        gateway = GatewayRunner(s, "webhook", [first, backup], GatewaySettings())
        await gateway.run(idle_exit_after=2)
        await app_runner.cleanup()
        return gateway

    with caplog.at_level(logging.ERROR, logger="gateways.runner"):
        gateway = asyncio.run(scenario())
    assert len(bodies) == 20 and [o.status for o in outcomes(s)].count("SENT") == 20
    assert closed == ["backup"]
    assert any("closing provider standard failed" in r.getMessage() for r in caplog.records)
    client = admin(s)
    group = client.describe_consumer_groups([gateway.group])[gateway.group].result(timeout=10)
    assert group.members == [], "the consumer stayed in its group after the stop"


def test_a_stop_does_not_wait_out_the_rate_limit_and_the_next_run_sends_the_rest(
    namespace: Callable[..., Settings],
) -> None:
    """Sends queued on a token bucket each waited out their turn before a stop could finish: at 1/s
    with 8 slots, 8 s; at a low rate across many gateways, minutes."""
    s = namespace(retry_tiers="1s")
    bodies: list[bytes] = []

    async def scenario() -> float:
        app_runner, base = await serve(accepting(bodies))
        produce(s, commands(f"{base}/hook", 12))
        provider = StandardWebhook(WebhookSettings(allow_cidrs="127.0.0.1/32", read_timeout=2))
        gateway = GatewayRunner(
            s, "webhook", [provider], GatewaySettings(concurrency=8), rates={"standard": (1.0, 1)}
        )
        running = asyncio.create_task(gateway.run())
        while len(bodies) < 2:
            assert not running.done(), running
            await asyncio.sleep(0.01)
        gateway.stop()
        started = time.monotonic()
        await running
        took = time.monotonic() - started
        assert gateway.counts.get("unsent_at_stop", 0) >= 4, gateway.counts
        again = StandardWebhook(WebhookSettings(allow_cidrs="127.0.0.1/32", read_timeout=2))
        await GatewayRunner(s, "webhook", [again], GatewaySettings()).run(idle_exit_after=3)
        await app_runner.cleanup()
        return took

    took = asyncio.run(scenario())
    assert took < 2.5, f"the stop took {took:.1f} s"
    ids = [json.loads(b)["i"] for b in bodies]
    assert sorted(ids) == list(range(12)), "each command sent once"
    assert [o.status for o in outcomes(s)].count("SENT") == 12
