"""A gateway's circuits with its rate limit, on real Redis: what a send waiting for its token finds."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import aiohttp

from gateways.base import ProviderThrottled
from gateways.handling import Blocked
from gateways.runner import GatewayRunner, GatewaySettings
from tests.servers.smtp import SmtpServer
from tidings.codec import default_codec
from tidings.config import Settings
from tidings.kafka import Incoming
from tidings.topics import names


def test_a_circuit_whose_probe_was_taken_during_the_token_wait_holds_the_command_without_an_attempt(
    namespace: Callable[..., Settings],
) -> None:
    """The chain was checked before the token wait and the probe taken after it: a command that found
    its only provider's circuit half-open with the probe out skipped it, and was retried as if every
    provider had failed (an attempt spent; on its last one, FAILED and dead-lettered)."""
    s = namespace(partitions=1)

    async def scenario() -> tuple[Any, int]:
        async with SmtpServer() as server:
            provider = server.provider()
            gateway = GatewayRunner(
                s, "email", [provider], GatewaySettings(), rates={provider.label: (2.0, 1)}
            )
            try:
                async with aiohttp.ClientSession() as session:
                    gateway.session = session
                    assert await gateway.buckets[provider.label].take() == 0
                    gateway.circuits.failure(provider.label, ProviderThrottled("429", 0.05))
                    await asyncio.sleep(0.1)
                    command = server.command()
                    record = Incoming(
                        names(s).delivery("email"),
                        0,
                        0,
                        b"k",
                        default_codec().encode(command),
                        [],
                        int(time.time() * 1000),
                    )

                    async def another_commands_probe() -> None:
                        await asyncio.sleep(0.2)
                        assert gateway.circuits.closed(provider.label)

                    result, _ = await asyncio.gather(gateway.handle(record), another_commands_probe())
            finally:
                await gateway.redis.aclose()
                await gateway.consumer.stop()
                await gateway.producer.stop()
            return result, server.attempts

    result, attempts = asyncio.run(scenario())
    assert isinstance(result, Blocked) and result.until > time.time(), result
    assert attempts == 0
