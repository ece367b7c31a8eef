"""Consumes HTTP requests from recipients; produces ProviderFeedback to notifications.feedback.

The first part of the HTTP edge (`tidings run edge`): the unsubscribe link every non-critical email
carries (`List-Unsubscribe: <{TIDINGS_EMAIL_UNSUBSCRIBE_URL}/{token}>`).

- `POST /unsubscribe/{token}` is RFC 8058's one-click unsubscribe (mail clients post
  `List-Unsubscribe=One-Click`) and also what the confirmation page's button posts. It produces an
  `unsubscribe` feedback for the token's tenant, recipient, category and address; the router folds it
  into the recipient's state (that category is opted out on every channel from then on) and the
  recipients projection shows it.
- `GET /unsubscribe/{token}` only shows that page: link scanners and previews fetch URLs from mail, so a
  GET must never unsubscribe anyone.
- Tokens are the email gateway's HS256 JWTs, signed with `TIDINGS_EMAIL_UNSUBSCRIBE_SECRET`. A token
  that does not verify gets 400 and produces nothing; the answer does not say why.

The response says "done" only after Kafka acknowledged the feedback, so a 200 means the opt-out is
durable. A repeated click produces another event: unsubscribing twice leaves the same state, and an
old link clicked after a resubscribe must take effect again.
"""

from __future__ import annotations

import html
import logging
from typing import Any

import jwt
from aiohttp import web
from pydantic_settings import BaseSettings, SettingsConfigDict

from gateways.email._message import EmailSettings, unsubscribe_claims
from tidings.config import Settings
from tidings.events import ProviderFeedback
from tidings.kafka import Output
from tidings.kafka.aio import AsyncProducer
from tidings.topics import names

log = logging.getLogger(__name__)
PRODUCER: web.AppKey[AsyncProducer] = web.AppKey("producer", AsyncProducer)
PAGE = """<!doctype html><html lang="en"><meta charset="utf-8"><title>{title}</title>
<body style="font-family:sans-serif;max-width:32em;margin:4em auto">
<h1>{title}</h1><p>{text}</p>{form}</body></html>"""
FORM = '<form method="post"><button name="List-Unsubscribe" value="One-Click">Unsubscribe</button></form>'


class EdgeSettings(BaseSettings):
    """Where the edge listens (`TIDINGS_EDGE_*`); the default matches the default unsubscribe URL."""

    model_config = SettingsConfigDict(env_prefix="TIDINGS_EDGE_", frozen=True)

    host: str = "127.0.0.1"
    port: int = 8080


def page(title: str, text: str, form: str = "", status: int = 200) -> web.Response:
    body = PAGE.format(title=html.escape(title), text=html.escape(text), form=form)
    return web.Response(status=status, text=body, content_type="text/html")


def feedback_of(claims: dict[str, Any]) -> ProviderFeedback:
    category = claims.get("category")
    return ProviderFeedback(
        tenant_id=str(claims["tenant"]),
        kind="unsubscribe",
        channel=claims.get("channel") or "email",
        address=str(claims["address"]),
        recipient_id=claims.get("recipient"),
        provider="edge",
        category=category,
        detail=f"one-click unsubscribe from {category or 'every category'}",
    )


def app(settings: Settings, email: EmailSettings | None = None) -> web.Application:
    email = email or EmailSettings()
    feedback_topic = names(settings).feedback
    application = web.Application(client_max_size=4096)

    def verified(request: web.Request) -> dict[str, Any] | None:
        try:
            return unsubscribe_claims(request.match_info["token"], email)
        except (jwt.InvalidTokenError, KeyError) as exc:
            log.info("refused an unsubscribe token: %s", exc)
            return None

    async def confirm(request: web.Request) -> web.Response:
        found = verified(request)
        if found is None:
            return page("Link not valid", "This unsubscribe link is not valid.", status=400)
        category = found.get("category") or "these"
        return page("Unsubscribe", f"Stop {category} emails to {found.get('address')}?", FORM)

    async def unsubscribe(request: web.Request) -> web.Response:
        found = verified(request)
        if found is None:
            return page("Link not valid", "This unsubscribe link is not valid.", status=400)
        try:
            event = feedback_of(found)
        except (ValueError, KeyError) as exc:
            log.warning("unsubscribe token with unusable claims: %s", exc)
            return page("Link not valid", "This unsubscribe link is not valid.", status=400)
        future = await request.app[PRODUCER].send(Output.event(feedback_topic, event))
        await future
        return page("Unsubscribed", f"You will no longer get {event.category or 'these'} emails.")

    async def producer(application: web.Application) -> Any:
        application[PRODUCER] = AsyncProducer(settings)
        await application[PRODUCER].start()
        yield
        await application[PRODUCER].stop()

    application.cleanup_ctx.append(producer)
    application.router.add_get("/unsubscribe/{token}", confirm)
    application.router.add_post("/unsubscribe/{token}", unsubscribe)
    return application
