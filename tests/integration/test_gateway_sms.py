"""The SMS gateway on the real stack against the local Twilio server: what it files about a number the
provider refuses, a dead number's failure or its owner's STOP."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from gateways.runner import GatewayRunner
from tests.integration.test_router import decoded
from tests.servers.sms import TwilioServer, sms_command
from tidings.config import Settings
from tidings.events import DeliveryOutcome, ProviderFeedback
from tidings.kafka import EventProducer, Output
from tidings.topics import names

STOPPED, LANDLINE, REACHABLE = "+447700900101", "+447700900102", "+447700900103"


def test_a_dead_number_is_filed_as_a_failure_and_a_stopped_one_as_the_owners_refusal(
    namespace: Callable[..., Settings],
) -> None:
    """Both were `sms_stop`, which only the owner's START lifts: a landline number, or one no longer
    in service, stayed suppressed even after an operator lifted it or the recipient set it again."""
    s = namespace()
    n = names(s)
    commands = {number: sms_command(address=number) for number in (STOPPED, LANDLINE, REACHABLE)}

    async def scenario() -> None:
        async with TwilioServer() as server:
            server.unsubscribed.add(STOPPED)
            server.landlines.add(LANDLINE)
            with EventProducer(s) as producer:
                for command in commands.values():
                    producer.produce(Output.event(n.delivery("sms"), command))
            await GatewayRunner(s, "sms", [server.provider(timeout=5)]).run(idle_exit_after=3)

    asyncio.run(scenario())
    feedback = {f.address: f.kind for f in decoded(s, n.feedback) if isinstance(f, ProviderFeedback)}
    assert feedback == {STOPPED: "sms_stop", LANDLINE: "hard_bounce"}
    status = {o.delivery_id: o.status for o in decoded(s, n.outcomes) if isinstance(o, DeliveryOutcome)}
    assert {number: status[c.delivery_id] for number, c in commands.items()} == {
        STOPPED: "FAILED",
        LANDLINE: "FAILED",
        REACHABLE: "SENT",
    }
