"""The HTTP edge on the real stack: an email's one-click unsubscribe link opts the recipient out."""

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web

from gateways.edge import app
from gateways.email._message import EmailSettings, headers
from tests.integration.conftest import read_all
from tests.integration.test_router import commands, decoded, publish_catalog, run_router
from tidings.client import Client
from tidings.config import Settings
from tidings.events import DeliveryOutcome, ProviderFeedback
from tidings.topics import names

EMAIL = EmailSettings()


async def serving(s: Settings, scenario: Callable[[str], Awaitable[Any]]) -> Any:
    runner = web.AppRunner(app(s, EMAIL))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        return await scenario(f"http://127.0.0.1:{runner.addresses[0][1]}")
    finally:
        await runner.cleanup()


def test_one_click_unsubscribe_opts_the_category_out(topology: Settings) -> None:
    s = topology
    publish_catalog(s)
    with Client(s) as client:
        client.update_recipient(tenant="acme", recipient="ada", email="ada@example.com")
        client.send(
            tenant="acme", recipient="ada", type="order.shipped", data={"order": "A-1", "carrier": "D"}
        )
    run_router(s)
    [email] = [c for c in commands(s) if c.channel == "email"]
    link = headers(email, EMAIL)["List-Unsubscribe"][1:-1]
    token = link.rsplit("/", 1)[1]

    async def clicks(base: str) -> list[tuple[int, str]]:
        answers = []
        async with aiohttp.ClientSession() as http:
            for method, path, body in [
                ("GET", token, None),
                ("GET", token[:-2] + "xx", None),
                ("POST", token[:-2] + "xx", "List-Unsubscribe=One-Click"),
                ("POST", token, "List-Unsubscribe=One-Click"),
            ]:
                async with http.request(method, f"{base}/unsubscribe/{path}", data=body) as r:
                    answers.append((r.status, await r.text()))
        return answers

    [shown, bad_get, bad_post, done] = asyncio.run(serving(s, clicks))
    assert shown[0] == 200 and '<form method="post">' in shown[1] and "ada@example.com" in shown[1]
    assert (bad_get[0], bad_post[0]) == (400, 400)
    assert done[0] == 200 and "no longer get orders emails" in done[1]

    [feedback] = [f for f in decoded(s, names(s).feedback) if isinstance(f, ProviderFeedback)]
    assert (feedback.kind, feedback.category, feedback.address, feedback.recipient_id) == (
        "unsubscribe",
        "orders",
        "ada@example.com",
        "ada",
    )
    assert [r.key for r in read_all(s, names(s).feedback)] == [b"acme/ada"]

    with Client(s) as client:
        later = client.send(
            tenant="acme", recipient="ada", type="order.shipped", data={"order": "A-2", "carrier": "D"}
        )
        invoice = client.send(
            tenant="acme", recipient="ada", type="invoice.due", data={"amount": 5, "currency": "EUR"}
        )
    run_router(s)
    outcomes = [o for o in decoded(s, names(s).outcomes) if isinstance(o, DeliveryOutcome)]
    skipped = [
        (o.channel, o.reason, o.detail)
        for o in outcomes
        if o.notification_id == later and o.channel == "email"
    ]
    assert skipped == [("email", "opted_out", "unsubscribed from orders")]
    assert [c.channel for c in commands(s) if c.notification_id == invoice] == ["email"]
