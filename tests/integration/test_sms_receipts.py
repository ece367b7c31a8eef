"""SMS delivery receipts end to end: the Twilio and Vonage providers ask for receipts at the edge, the
local vendor servers send them signed as the vendors do, and the edge turns them into the deliveries'
DELIVERED and FAILED outcomes and dead-number feedback on the real broker."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from pydantic import SecretStr

from gateways.base import Sent
from gateways.edge import EdgeSettings
from tests.integration.test_edge import serving
from tests.integration.test_projections import project
from tests.integration.test_router import decoded
from tests.servers.sms import SmsApiServer, TwilioServer, VonageServer, sms_command
from tidings.client import Client
from tidings.config import Settings
from tidings.events import DeliveryCommand, DeliveryOutcome, ProviderFeedback
from tidings.ids import delivery_id, new_notification_id
from tidings.topics import names

REACHABLE, DEAD = "+447700900123", "+447700900666"
RECIPIENT = "ada@example.com/eu"
"""Percent-encoded in the receipt URL: Twilio signs that encoding, which the edge must check as sent."""


def command(address: str, body: str = "Your code is 123456.") -> DeliveryCommand:
    nid = new_notification_id()
    return sms_command(address=address, body=body).model_copy(
        update={
            "notification_id": nid,
            "delivery_id": delivery_id(nid, "sms", address),
            "recipient_id": RECIPIENT,
        }
    )


async def send_with_receipts(
    server_class: type[SmsApiServer], route: str, commands: list[DeliveryCommand], receipts: int, **edge: Any
) -> tuple[list[Any], list[int]]:
    """Send `commands` through a fresh local vendor server asking for receipts at a fresh edge; the
    send results and the statuses the edge answered the vendor's receipts with."""
    async with server_class() as server:
        server.undeliverable = {DEAD: "30005" if server_class is TwilioServer else "3"}
        settings = {"twilio_auth_token": SecretStr(getattr(server, "auth_token", "unused"))}
        if isinstance(server, VonageServer):
            server.dlr_method = edge.pop("dlr_method", "POST")
            settings = {"vonage_signature_secret": SecretStr(server.signature_secret)}

        async def scenario(base: str) -> tuple[list[Any], list[int]]:
            provider = server.provider(timeout=5, status_callback_url=f"{base}{route}")
            async with aiohttp.ClientSession() as session:
                results = [await provider.send(session, c) for c in commands]
            return results, list(await server.reported(receipts))

        return await serving(edge.pop("settings"), scenario, EdgeSettings(**settings))


def outcomes_and_feedback(s: Settings) -> tuple[set[Any], list[Any]]:
    outcomes = {
        (o.delivery_id, o.status, o.reason)
        for o in decoded(s, names(s).outcomes)
        if isinstance(o, DeliveryOutcome)
    }
    feedback = sorted(
        (f.kind, f.address, f.delivery_id is not None and f.recipient_id == RECIPIENT)
        for f in decoded(s, names(s).feedback)
        if isinstance(f, ProviderFeedback)
    )
    return outcomes, feedback


def test_twilio_status_callbacks_become_outcomes(topology: Settings) -> None:
    ok, dead = command(REACHABLE), command(DEAD)
    results, answered = asyncio.run(
        send_with_receipts(TwilioServer, "/callbacks/twilio/status", [ok, dead], 4, settings=topology)
    )
    assert all(isinstance(r, Sent) for r in results), results
    assert answered == [204, 204, 204, 204], "sent and final status for each message"
    outcomes, feedback = outcomes_and_feedback(topology)
    assert outcomes == {
        (ok.delivery_id, "DELIVERED", "delivered"),
        (dead.delivery_id, "FAILED", "undelivered"),
    }
    assert feedback == [
        ("delivered", REACHABLE, True),
        ("hard_bounce", DEAD, True),
        ("undelivered", DEAD, True),
    ]


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_vonage_delivery_receipts_become_outcomes(database: Settings, method: str) -> None:
    """Vonage takes at most 100 characters of `callback`, fewer than the full receipt path of two UUIDs:
    the receipts come to the tenant's path, and the delivery-status projection names their deliveries."""
    long = command(REACHABLE, body="x" * 200)
    dead = command(DEAD)
    with Client(database) as client:
        for c in (long, dead):
            client.publish(
                DeliveryOutcome(
                    tenant_id=c.tenant_id,
                    notification_id=c.notification_id,
                    delivery_id=c.delivery_id,
                    recipient_id=c.recipient_id,
                    channel="sms",
                    status="SENT",
                    provider="vonage",
                )
            )
    project(database, "delivery_status")
    results, answered = asyncio.run(
        send_with_receipts(
            VonageServer, "/callbacks/vonage/status", [long, dead], 3, settings=database, dlr_method=method
        )
    )
    assert all(isinstance(r, Sent) for r in results), results
    assert answered == [204, 204, 204], "one receipt per part: two for the long text"
    outcomes, feedback = outcomes_and_feedback(database)
    outcomes = {o for o in outcomes if o[1] != "SENT"}
    assert outcomes == {
        (long.delivery_id, "DELIVERED", "delivered"),
        (dead.delivery_id, "FAILED", "undelivered"),
    }
    assert feedback == [
        ("delivered", REACHABLE, True),
        ("delivered", REACHABLE, True),
        ("hard_bounce", DEAD, True),
        ("undelivered", DEAD, True),
    ]
    assert len({o.event_id for o in decoded(database, names(database).outcomes)}) == 4, "2 SENT, 2 receipts"


def test_a_receipt_with_a_wrong_signature_changes_nothing(topology: Settings) -> None:
    async def scenario(base: str) -> list[int]:
        async with aiohttp.ClientSession() as http:
            answers = []
            nid = new_notification_id()
            did = delivery_id(nid, "sms", REACHABLE)
            url = f"{base}/callbacks/twilio/status/acme/ada/{nid}/{did}"
            form = {"MessageSid": "SM1", "To": REACHABLE, "MessageStatus": "delivered"}
            for signature in ({}, {"X-Twilio-Signature": "forged"}):
                async with http.post(url, data=form, headers=signature) as r:
                    answers.append(r.status)
            async with http.get(f"{base}/callbacks/vonage/status/acme?status=delivered&msisdn=1") as r:
                answers.append(r.status)
            return answers

    edge = EdgeSettings(twilio_auth_token=SecretStr("token"), vonage_signature_secret=SecretStr("secret"))
    assert asyncio.run(serving(topology, scenario, edge)) == [400, 400, 400]
    assert outcomes_and_feedback(topology) == (set(), [])
