"""Consumes HTTP requests from recipients and providers; produces ProviderFeedback to notifications.feedback.

The HTTP edge (`tidings run edge`). First, the unsubscribe link every non-critical email carries
(`List-Unsubscribe: <{TIDINGS_EMAIL_UNSUBSCRIBE_URL}/{token}>`):

- `POST /unsubscribe/{token}` is RFC 8058's one-click unsubscribe (mail clients post
  `List-Unsubscribe=One-Click`) and also what the confirmation page's button posts. It produces an
  `unsubscribe` feedback for the token's tenant, recipient, category, channel and address; the router
  folds it into the recipient's state (that category's emails stop; its push or SMS messages do not)
  and the recipients projection shows it.
- `GET /unsubscribe/{token}` only shows that page: link scanners and previews fetch URLs from mail, so a
  GET must never unsubscribe anyone.
- Tokens are the email gateway's HS256 JWTs, signed with `TIDINGS_EMAIL_UNSUBSCRIBE_SECRET`. A token
  that does not verify gets 400 and produces nothing; the answer does not say why. With the public
  default secret anyone could sign one, so an edge listening beyond loopback does not serve the route
  until the secret is one's own (and the email gateway refuses to link anywhere but loopback with it).

`GET /t/o/{token}` and `GET /t/c/{token}` record email opens and clicks and answer a pixel or a redirect
(`gateways/track.py`), mounted whenever `TIDINGS_EMAIL_UNSUBSCRIBE_SECRET` is one's own (tracking requires
it: with the public default anyone could mint a click token that redirects anywhere), so links already
in inboxes keep working when the gateway stops tracking.

Then the providers' webhooks, each mounted only when its credential is configured (an unauthenticated
bounce endpoint would let anyone suppress any address), with the tenant in the path:
- `POST /callbacks/sendgrid/{tenant}`: signed Event Webhook batches
  (`TIDINGS_EDGE_SENDGRID_VERIFICATION_KEY`);
- `POST /callbacks/postmark/{tenant}`: Postmark webhooks behind basic auth, put in the webhook URL
  (Postmark does not sign): the user `TIDINGS_EDGE_POSTMARK_USERNAME`, the password the tenant's own,
  derived from `TIDINGS_EDGE_POSTMARK_PASSWORD` (`tidings tenant-key TENANT --for postmark`), so a
  tenant who sees its Postmark settings cannot post bounces into another tenant's path;
- `POST /inbound/twilio/{tenant}` and `GET|POST /inbound/vonage/{tenant}`: inbound SMS, STOP/START
  (`TIDINGS_EDGE_TWILIO_AUTH_TOKEN`, `TIDINGS_EDGE_VONAGE_SIGNATURE_SECRET`). Twilio signs the URL it
  called: behind a proxy set `TIDINGS_EDGE_PUBLIC_URL` to the scheme and host Twilio sees. The opt-out is
  produced once per recipient holding the number, looked up in the recipients projection
  (`gateways/sms/holders.py`), so the router suppresses (or, on START, lifts) it at once.
- `POST /callbacks/twilio/status/{tenant}/{recipient}/{notification}/{delivery}` and `GET|POST
  /callbacks/vonage/status/{tenant}[/{recipient}/{notification}/{delivery}]`: SMS delivery receipts,
  asked for per message when the provider's `status_callback_url` points here
  (`gateways/sms/receipts.py`), under the same credentials as the inbound routes. A receipt at the
  account-wide Vonage path that says the number opted out names no recipient: it is produced once per
  recipient holding the number, as inbound STOP is (without that the router never saw it).
- `POST /callbacks/ses/{tenant}`: SES notifications delivered by Amazon SNS over HTTPS, for the topic
  `TIDINGS_EDGE_SES_TOPIC_ARN` only. The SNS signing certificate is fetched from the message's
  `SigningCertURL` (HTTPS on an `sns.<region>.amazonaws.com` host only) and cached; a subscription
  confirmation is verified the same way and confirmed by visiting its `SubscribeURL` (same host rule).
  A certificate that cannot be fetched gets 503, so SNS retries.
A request that fails its signature or is malformed gets 400 with the reason and produces nothing.

The recipients' own inbox API and WebSocket (`gateways/feed.py`) and their preference centre
(`gateways/prefs.py`) are mounted when `TIDINGS_EDGE_INBOX_JWT_SECRET` is set; the tenants'
server-side API (`gateways/api.py`) when `TIDINGS_EDGE_API_KEYS` is; `/healthz`, `/readyz`,
`/metrics` and `/openapi.json` always (`gateways/ops.py`).

The edge starts whether Kafka answers or not, as an orchestrator expects of a process it restarts and
probes: it connects in the background, and until it is connected `/readyz` names Kafka and every route
that produces answers 503, so a load balancer keeps it out and clients retry.

A report that names one of our deliveries (the providers echo the ids the gateway attached) also
produces that delivery's outcome: `delivered` → DELIVERED, a hard bounce → FAILED (`bounced`), an SMS
receipt saying the carrier could not deliver → FAILED (`undelivered`), so
the delivery-status tables show what happened after the provider accepted the message.

Every response says "done" only after Kafka acknowledged the records, so a 2xx means they are durable
and a provider's retry after an error cannot lose them. A repeated unsubscribe click produces another
event: unsubscribing twice leaves the same state, and an old link clicked after a resubscribe must
take effect again.
"""

from __future__ import annotations

import base64
import hmac
import html
import inspect
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import jwt
from aiohttp import web
from pydantic import Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from gateways import api, api_schema, feed, ops, prefs, track
from gateways.email import callbacks
from gateways.email._message import EmailSettings, loopback, unsubscribe_claims
from gateways.outputs import reported_outcome
from gateways.sms import holders, inbound, receipts, vonage_routes
from tidings.client import tenant_key
from tidings.config import Settings, own_secret
from tidings.errors import InvalidEvent
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
TWIML_EMPTY = '<?xml version="1.0" encoding="UTF-8"?><Response/>'


class EdgeSettings(BaseSettings):
    """Where the edge listens (`TIDINGS_EDGE_*`); the default matches the default unsubscribe URL."""

    model_config = SettingsConfigDict(env_prefix="TIDINGS_EDGE_", frozen=True, hide_input_in_errors=True)

    host: str = "127.0.0.1"
    port: int = 8080
    public_url: str | None = None
    sendgrid_verification_key: str | None = None
    postmark_username: str | None = None
    postmark_password: SecretStr | None = None
    twilio_auth_token: SecretStr | None = None
    vonage_signature_secret: SecretStr | None = None
    vonage_signature_method: inbound.VonageMethod = "md5hash"
    ses_topic_arn: str | None = None
    inbox_jwt_secret: SecretStr | None = Field(default=None, min_length=32)
    api_keys: SecretStr | None = None
    api_rate: float | None = Field(default=None, gt=0, description="Notifications/s per tenant.")

    @field_validator("inbox_jwt_secret", "postmark_password")
    @classmethod
    def _own(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        if value is not None:
            own_secret(value.get_secret_value(), f"TIDINGS_EDGE_{str(info.field_name).upper()}")
        return value

    @field_validator("api_keys")
    @classmethod
    def _keys(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            api.parse_keys(value.get_secret_value())
        return value


Parse = Callable[[web.Request, bytes, str], list[ProviderFeedback] | Awaitable[list[ProviderFeedback]]]
Fetch = Callable[[str], Awaitable[bytes]]
MAX_FETCH_BYTES = 64 * 1024
MAX_CERTIFICATES = 16
"""SNS signing certificates kept; AWS rotates them rarely, so a few cover every real sender."""


class FetchFailed(Exception):
    """An SNS certificate or confirmation URL could not be fetched (the caller should retry)."""


async def fetch_https(url: str) -> bytes:
    """GET an Amazon SNS URL (callers validate it first): 10 s, 64 KiB, no redirects."""
    timeout = aiohttp.ClientTimeout(total=10)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as http,
            http.get(url, allow_redirects=False) as response,
        ):
            body = await response.content.read(MAX_FETCH_BYTES + 1)
            if response.status != 200 or len(body) > MAX_FETCH_BYTES:
                raise FetchFailed(f"{url}: HTTP {response.status}, {len(body)} bytes")
            return body
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise FetchFailed(f"{url}: {exc}") from exc


def sns_url(url: object) -> str:
    parts = urlsplit(str(url))
    if parts.scheme != "https" or not callbacks.SNS_HOST.match(parts.hostname or ""):
        raise InvalidEvent(f"not an Amazon SNS URL: {url!r}")
    return str(url)


def basic_auth_matches(header: str | None, username: str, password: str) -> bool:
    expected = "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()
    offered = (header or "").encode("utf-8", "surrogateescape")
    return header is not None and hmac.compare_digest(offered, expected.encode())


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


def called_url(request: web.Request, public: str | None) -> str:
    """The URL Twilio called, as it signed it: the path and query exactly as sent (`raw_path`: decoding
    `%40` into `@` would change what was signed), behind `public` (scheme and host) if set."""
    return (public.rstrip("/") if public else f"{request.scheme}://{request.host}") + request.raw_path


def parsers(edge: EdgeSettings) -> dict[str, Parse]:
    """Route path → parser, for the providers whose credentials are configured."""
    mounted: dict[str, Parse] = {}
    if (key := edge.sendgrid_verification_key) is not None:
        mounted["/callbacks/sendgrid/{tenant}"] = lambda r, body, tenant: callbacks.sendgrid_events(
            body,
            signature=r.headers.get("X-Twilio-Email-Event-Webhook-Signature", ""),
            timestamp=r.headers.get("X-Twilio-Email-Event-Webhook-Timestamp", ""),
            public_key_pem=key,
            tenant_id=tenant,
        )
    if edge.postmark_username and (password := edge.postmark_password) is not None:
        user = edge.postmark_username

        def postmark(r: web.Request, body: bytes, tenant: str) -> list[ProviderFeedback]:
            expected = tenant_key(password.get_secret_value(), "postmark", tenant)
            if not basic_auth_matches(r.headers.get("Authorization"), user, expected):
                raise InvalidEvent("Postmark webhook without the configured basic auth")
            return callbacks.postmark(body, tenant)

        mounted["/callbacks/postmark/{tenant}"] = postmark
    if (token := edge.twilio_auth_token) is not None:
        public = edge.public_url

        def twilio(r: web.Request, body: bytes, tenant: str) -> list[ProviderFeedback]:
            url = called_url(r, public)
            signature = r.headers.get("X-Twilio-Signature")
            return inbound.twilio(
                body, url=url, signature=signature, auth_token=token.get_secret_value(), tenant_id=tenant
            )

        mounted["/inbound/twilio/{tenant}"] = twilio

        def twilio_receipt(r: web.Request, body: bytes, tenant: str) -> list[ProviderFeedback]:
            return receipts.twilio_status(
                body,
                url=called_url(r, public),
                signature=r.headers.get("X-Twilio-Signature"),
                auth_token=token.get_secret_value(),
                tenant_id=tenant,
                recipient=r.match_info["recipient"],
                notification=r.match_info["notification"],
                delivery=r.match_info["delivery"],
            )

        mounted["/callbacks/twilio/status/{tenant}/{recipient}/{notification}/{delivery}"] = twilio_receipt
    if (secret := edge.vonage_signature_secret) is not None:
        mounted |= vonage_routes.parsers(secret.get_secret_value(), edge.vonage_signature_method)
    return mounted


def ses_route(edge: EdgeSettings, fetch: Fetch) -> Callable[[web.Request, bytes, str], Awaitable[Any]] | None:
    """The SES/SNS parser, asynchronous because it may fetch the certificate and confirm a subscription."""
    if (arn := edge.ses_topic_arn) is None:
        return None
    certificates: dict[str, bytes] = {}

    async def parse(request: web.Request, body: bytes, tenant: str) -> list[ProviderFeedback]:
        url = callbacks.signing_cert_url(body, topic_arn=arn)
        if url not in certificates:
            if len(certificates) >= MAX_CERTIFICATES:
                del certificates[next(iter(certificates))]
            certificates[url] = await fetch(url)
        events = callbacks.ses_sns(body, certificate_pem=certificates[url], tenant_id=tenant, topic_arn=arn)
        envelope = json.loads(body)
        if envelope.get("Type") == "SubscriptionConfirmation":
            await fetch(sns_url(envelope.get("SubscribeURL")))
            log.info("confirmed the SNS subscription to %s", arn)
        return events

    return parse


def app(
    settings: Settings,
    email: EmailSettings | None = None,
    edge: EdgeSettings | None = None,
    fetch: Fetch = fetch_https,
) -> web.Application:
    email, edge = email or EmailSettings(), edge or EdgeSettings()
    feedback_topic, outcomes_topic = names(settings).feedback, names(settings).outcomes
    application = web.Application(client_max_size=1024 * 1024)

    async def publish(request: web.Request, events: list[ProviderFeedback]) -> None:
        producer = request.app[PRODUCER]
        records = [Output.event(feedback_topic, e) for e in events]
        records += [Output.event(outcomes_topic, o) for e in events if (o := reported_outcome(e)) is not None]
        await producer.deliver(*records)

    def webhook(
        parse: Callable[..., Any], answer: Callable[[], web.Response]
    ) -> Callable[..., Awaitable[Any]]:
        async def handle(request: web.Request) -> web.Response:
            body = await request.read()
            try:
                events = parse(request, body, request.match_info["tenant"])
                if inspect.isawaitable(events):
                    events = await events
            except InvalidEvent as exc:
                log.warning("refused %s: %s", request.path, exc)
                return web.Response(status=400, text=str(exc))
            except FetchFailed as exc:
                log.warning("could not check %s: %s", request.path, exc)
                return web.Response(status=503, text="try again later")
            if holders.POOL in request.app:
                events = await holders.resolve(request.app[holders.POOL], events)
            await publish(request, events)
            return answer()

        return handle

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
        await publish(request, [event])
        return page("Unsubscribed", f"You will no longer get {event.category or 'these'} emails.")

    async def producer(application: web.Application) -> Any:
        application[PRODUCER] = AsyncProducer(settings)
        await application[PRODUCER].connect()
        yield
        await application[PRODUCER].stop()

    application.cleanup_ctx.append(producer)
    if not email.dev_secret or loopback(edge.host):
        application.router.add_get("/unsubscribe/{token}", confirm)
        application.router.add_post("/unsubscribe/{token}", unsubscribe)
    else:
        log.warning(
            "unsubscribe links not served: set TIDINGS_EMAIL_UNSUBSCRIBE_SECRET to a secret of your own"
        )
    if not email.dev_secret:
        track.mount(application, settings, email, PRODUCER)
    mounted = parsers(edge)
    if any(path.startswith(("/inbound/", "/callbacks/twilio", "/callbacks/vonage")) for path in mounted):
        holders.attach(application, settings)
    for path, parse in mounted.items():
        twiml = path.startswith("/inbound/twilio")
        answer = (
            (lambda: web.Response(text=TWIML_EMPTY, content_type="text/xml"))
            if twiml
            else (lambda: web.Response(status=204))
        )
        application.router.add_post(path, webhook(parse, answer))
        if path.startswith((vonage_routes.RECEIPTS, vonage_routes.INBOUND)):
            application.router.add_get(path, webhook(parse, answer))
        log.info("mounted %s", path)
    if (ses := ses_route(edge, fetch)) is not None:
        application.router.add_post("/callbacks/ses/{tenant}", webhook(ses, lambda: web.Response(status=204)))
    if (inbox := edge.inbox_jwt_secret) is not None:
        feed.mount(application, settings, inbox.get_secret_value(), PRODUCER)
        prefs.mount(application, settings, inbox.get_secret_value(), PRODUCER)
        ops.add_check(application, "postgresql:inbox", lambda a: ping(a[feed.POOL]))
    if (keys := edge.api_keys) is not None:
        api.mount(application, settings, api.parse_keys(keys.get_secret_value()), PRODUCER, edge.api_rate)
        ops.add_check(application, "postgresql:api", lambda a: ping(a[api.API_POOL]))
    ops.add_check(application, "kafka", lambda a: a[PRODUCER].reachable())
    ops.mount(application, api_schema.Accepted)
    return application


async def ping(pool: Any) -> None:
    async with pool.connection() as conn:
        await conn.execute("SELECT 1")
