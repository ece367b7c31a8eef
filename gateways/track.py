"""Consumes recipients' email opens and clicks over HTTP; produces NotificationOpened and
NotificationClicked to notifications.engagement.

`GET /t/o/{token}` answers a 1x1 GIF (never cached) and records an open; `GET /t/c/{token}` records a
click and redirects (302) to the URL inside the signed token (`gateways/email/tracking.py`). A token that
does not verify records nothing: the pixel is still answered, so a mail client shows no broken image,
while a click gets 400 and no redirect.

Recording is best effort, unlike the edge's other routes: the recipient's browser must not wait on
Kafka or get an error page for a link in an email, so when Kafka does not acknowledge within
`RECORD_TIMEOUT_S` the open or click is logged and dropped. `HEAD` requests (link scanners probing)
are answered without being recorded. An open's or a click's event id is derived from the delivery (and
the URL): a pixel loaded again or a link followed twice is the same event, which the relay's webhooks and
the gateway's dedupe take once, so whoever holds one email cannot flood a tenant's destinations; a click
token on the pixel route records nothing. Opens are a weak signal (Apple Mail Privacy Protection loads every
image; many clients load none) and security scanners follow links: treat both as engagement hints.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from typing import Any
from uuid import UUID, uuid5

import jwt
from aiohttp import web

from gateways.email._message import EmailSettings
from gateways.email.tracking import tracking_claims
from tidings.config import Settings
from tidings.errors import KafkaUnavailable
from tidings.events import Event, NotificationClicked, NotificationOpened
from tidings.kafka import Output
from tidings.kafka.aio import AsyncProducer
from tidings.topics import names

log = logging.getLogger(__name__)
PIXEL = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")
RECORD_TIMEOUT_S = 2.0
NO_STORE = {"Cache-Control": "no-store, max-age=0", "Pragma": "no-cache"}


def mount(
    application: web.Application,
    settings: Settings,
    email: EmailSettings,
    producer: web.AppKey[AsyncProducer],
) -> None:
    engagement = names(settings).engagement
    secret = email.unsubscribe_secret.get_secret_value()

    def verified(request: web.Request) -> dict[str, Any] | None:
        try:
            claims = tracking_claims(request.match_info["token"], secret)
            UUID(claims["n"]), UUID(claims["d"])
        except (jwt.InvalidTokenError, KeyError, ValueError, TypeError) as exc:
            log.info("refused a tracking token: %s", exc)
            return None
        return claims

    async def record(request: web.Request, event: Event) -> None:
        if request.method != "GET":
            return
        try:
            await asyncio.wait_for(
                request.app[producer].deliver(Output.event(engagement, event)), RECORD_TIMEOUT_S
            )
        except (KafkaUnavailable, TimeoutError) as exc:
            log.warning("dropped a %s: %s", type(event).__name__, str(exc) or "Kafka did not answer in time")

    def fields(claims: dict[str, Any]) -> dict[str, Any]:
        return {
            "tenant_id": claims["t"],
            "recipient_id": claims["r"],
            "notification_id": UUID(claims["n"]),
            "delivery_id": UUID(claims["d"]),
            "correlation_id": claims["n"],
            "channel": "email",
        }

    async def opened(request: web.Request) -> web.Response:
        claims = verified(request)
        if claims is not None and "u" not in claims:
            delivery = UUID(claims["d"])
            await record(request, NotificationOpened(event_id=uuid5(delivery, "opened"), **fields(claims)))
        return web.Response(body=PIXEL, content_type="image/gif", headers=NO_STORE)

    async def clicked(request: web.Request) -> web.Response:
        claims = verified(request)
        url = claims.get("u") if claims is not None else None
        if claims is None or not isinstance(url, str) or not url.lower().startswith(("https://", "http://")):
            return web.Response(status=400, text="This link is not valid.", headers=NO_STORE)
        try:
            redirect = web.HTTPFound(url, headers=NO_STORE)
        except ValueError:
            return web.Response(status=400, text="This link's address is not valid.", headers=NO_STORE)
        delivery = UUID(claims["d"])
        clicked = NotificationClicked(event_id=uuid5(delivery, f"clicked/{url}"), **fields(claims), url=url)
        await record(request, clicked)
        raise redirect

    application.router.add_get("/t/o/{token}", opened)
    application.router.add_get("/t/c/{token}", clicked)
