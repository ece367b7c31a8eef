"""Email open and click tracking through the HTTP edge on the real broker: the links the email gateway
writes lead to the edge, which records each open and click once on notifications.engagement and
redirects only to the URL it signed."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import web
from pydantic import SecretStr, ValidationError

from gateways import track
from gateways.edge import EdgeSettings, app
from gateways.email._message import DEV_SECRET, EmailSettings, parts
from gateways.track import PIXEL
from tests.integration.test_router import decoded
from tests.unit.test_email_tracking import email
from tidings.config import Settings
from tidings.events import NotificationClicked, NotificationOpened
from tidings.topics import names

SECRET = SecretStr("tracking-test-secret-of-32-bytes-or-more")


async def scenario(s: Settings, html: str) -> tuple[list[Any], Any]:
    edge_email = EmailSettings(unsubscribe_secret=SECRET, track_clicks=True)
    runner = web.AppRunner(app(s, edge_email, EdgeSettings()))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    command = email(html)
    settings = EmailSettings(
        track_opens=True, track_clicks=True, tracking_url=f"{base}/t", unsubscribe_secret=SECRET
    )
    _, _, tracked = parts(command, settings)
    assert tracked is not None
    [pixel] = re.findall(r'<img src="([^"]+)"', tracked)
    [link] = re.findall(r'<a href="([^"]+)"', tracked)
    forged = link[:-4] + ("AAAA" if not link.endswith("AAAA") else "BBBB")
    answers: list[Any] = []
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(pixel) as r:
                answers.append(
                    (r.status, r.content_type, await r.read() == PIXEL, r.headers["Cache-Control"])
                )
            async with http.head(pixel) as r:
                answers.append(r.status)
            async with http.get(link, allow_redirects=False) as r:
                answers.append((r.status, r.headers.get("Location")))
            async with http.head(link, allow_redirects=False) as r:
                answers.append(r.status)
            async with http.get(forged, allow_redirects=False) as r:
                answers.append((r.status, r.headers.get("Location")))
            async with http.get(pixel.rsplit("/", 1)[0] + "/nonsense") as r:
                answers.append((r.status, r.content_type))
            for again in (pixel, link, link.replace("/t/c/", "/t/o/")):
                async with http.get(again, allow_redirects=False) as r:
                    answers.append(r.status)
    finally:
        await runner.cleanup()
    return answers, command


def test_opens_and_clicks_are_recorded_once_and_redirect_to_the_signed_url(
    topology: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fresh topic's first produce can wait for a partition leader longer than a recipient should
    wait for a redirect, so the test gives recording more time than the edge does."""
    s = topology
    monkeypatch.setattr(track, "RECORD_TIMEOUT_S", 30.0)
    answers, command = asyncio.run(
        scenario(s, '<p><a href="https://shop.example.com/o/1?x=1&amp;y=2">o</a></p>')
    )
    assert answers == [
        (200, "image/gif", True, "no-store, max-age=0"),
        200,
        (302, "https://shop.example.com/o/1?x=1&y=2"),
        302,
        (400, None),
        (200, "image/gif"),
        200,
        302,
        200,
    ]
    every = [e for e in decoded(s, names(s).engagement)]
    found = list({e.event_id: e for e in every}.values())
    assert len(every) == 4, (
        "an open and a click, each twice; a click token on the pixel route records nothing"
    )
    assert [type(e) for e in found] == [NotificationOpened, NotificationClicked], "the same event ids again"
    for event in found:
        assert (event.tenant_id, event.recipient_id, event.channel) == ("acme", command.recipient_id, "email")
        assert (event.notification_id, event.delivery_id) == (command.notification_id, command.delivery_id)
    assert found[1].url == "https://shop.example.com/o/1?x=1&y=2"


def test_a_signed_link_no_redirect_can_carry_is_refused_and_records_no_click(
    topology: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A template's `https://h:99999/` is signed like any link; the click was recorded, then building
    the redirect raised and the reader got a 500."""
    s = topology
    monkeypatch.setattr(track, "RECORD_TIMEOUT_S", 30.0)
    answers, _ = asyncio.run(scenario(s, '<p><a href="https://shop.example.com:99999/o">o</a></p>'))
    assert answers[2] == (400, None) and answers[3] == 400
    assert not [e for e in decoded(s, names(s).engagement) if isinstance(e, NotificationClicked)]


def test_tracking_needs_a_secret_of_ones_own_and_is_not_served_without_it(topology: Settings) -> None:
    with pytest.raises(ValidationError, match="TIDINGS_EMAIL_UNSUBSCRIBE_SECRET"):
        EmailSettings(track_clicks=True)

    async def scenario() -> list[int]:
        runner = web.AppRunner(app(topology, EmailSettings(), EdgeSettings()))
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        base = f"http://127.0.0.1:{runner.addresses[0][1]}"
        try:
            async with aiohttp.ClientSession() as http:
                forged = "eyJhbGciOiJIUzI1NiJ9.eyJ1IjoiaHR0cHM6Ly9ldmlsLmV4YW1wbGUifQ.x"
                async with http.get(f"{base}/t/c/{forged}", allow_redirects=False) as r:
                    return [r.status]
        finally:
            await runner.cleanup()

    assert asyncio.run(scenario()) == [404]


def test_unsubscribe_with_the_public_default_secret_is_for_loopback_only(topology: Settings) -> None:
    """Anyone can sign a token with the default secret: it opts the token's address out."""
    with pytest.raises(ValidationError, match="TIDINGS_EMAIL_UNSUBSCRIBE_SECRET"):
        EmailSettings(unsubscribe_url="https://notify.example.com/unsubscribe")
    EmailSettings(
        unsubscribe_url="https://notify.example.com/unsubscribe", unsubscribe_secret=SecretStr("s" * 32)
    )
    EmailSettings(unsubscribe_url="http://localhost:8080/unsubscribe")
    forged = jwt.encode(
        {
            "aud": "tidings:unsubscribe",
            "tenant": "globex",
            "recipient": "r",
            "channel": "email",
            "address": "a@b",
        },
        DEV_SECRET,
        algorithm="HS256",
    )

    async def status(host: str) -> int:
        runner = web.AppRunner(app(topology, EmailSettings(), EdgeSettings(host=host)))
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        try:
            async with aiohttp.ClientSession() as http:
                url = f"http://127.0.0.1:{runner.addresses[0][1]}/unsubscribe/{forged}"
                async with http.get(url) as r:
                    return r.status
        finally:
            await runner.cleanup()

    assert asyncio.run(status("0.0.0.0")) == 404
    assert asyncio.run(status("127.0.0.1")) == 200
