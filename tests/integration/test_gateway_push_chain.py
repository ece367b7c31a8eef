"""A push chain with two FCM profiles on the real stack: what one device's rate limit does to it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from gateways.runner import GatewayRunner, GatewaySettings
from tests.integration.conftest import read_all
from tests.servers.push import FcmServer
from tidings.codec import default_codec
from tidings.config import Settings
from tidings.events import DeliveryOutcome
from tidings.kafka import EventProducer, Output
from tidings.topics import names


def test_a_device_over_its_rate_is_retried_not_sent_to_again_through_the_next_profile(
    namespace: Callable[..., Settings],
) -> None:
    """A rejection that is not permanent failed over to the chain's next provider: a second FCM profile
    sent to the same device at once, over the rate FCM had just refused, ignoring its Retry-After."""
    s = namespace(retry_tiers="1m")

    async def scenario() -> FcmServer:
        async with FcmServer() as server:
            server.mode = "device_quota"
            with EventProducer(s) as producer:
                producer.produce(Output.event(names(s).delivery("push"), server.command()))
            chain = [server.provider(timeout=3), server.provider(timeout=3).named("fcm@backup")]
            await GatewayRunner(s, "push", chain, GatewaySettings(concurrency=1)).run(idle_exit_after=3)
            return server

    server = asyncio.run(scenario())
    assert server.requests == 1
    decoded = [default_codec().decode(r.value or b"") for r in read_all(s, names(s).outcomes)]
    assert [(o.status, o.provider) for o in decoded if isinstance(o, DeliveryOutcome)] == [("RETRYING", None)]
