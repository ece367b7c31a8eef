"""The HTTP edge on the real stack: an email's one-click unsubscribe link opts the recipient out."""

import asyncio
import base64
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlencode

import aiohttp
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from pydantic import SecretStr

from gateways.edge import EdgeSettings, FetchFailed, app
from gateways.email._message import EmailSettings, headers
from gateways.sms.inbound import twilio_signature
from tests.integration.conftest import read_all
from tests.integration.test_router import commands, decoded, publish_catalog, run_router
from tests.unit.test_callbacks_sendgrid_postmark import DELIVERY as GRID_DELIVERY
from tests.unit.test_callbacks_sendgrid_postmark import bounce, sendgrid_event, sendgrid_public, sendgrid_sign
from tests.unit.test_callbacks_ses import CERT_URL, TOPIC, certificate, ses_bounce, sns
from tests.unit.test_callbacks_ses import DELIVERY as SES_DELIVERY
from tests.unit.test_sms_inbound import TOKEN as TWILIO_TOKEN
from tests.unit.test_sms_inbound import VONAGE_SECRET, twilio_form, vonage_body
from tidings.client import Client, tenant_key
from tidings.config import Settings
from tidings.events import DeliveryOutcome, ProviderFeedback
from tidings.topics import names

EMAIL = EmailSettings()


async def serving(
    s: Settings, scenario: Callable[[str], Awaitable[Any]], edge: EdgeSettings | None = None, **kwargs: Any
) -> Any:
    runner = web.AppRunner(app(s, EMAIL, edge or EdgeSettings(), **kwargs))
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
    assert skipped == [("email", "opted_out", "unsubscribed from orders email")]
    assert [c.channel for c in commands(s) if c.notification_id == invoice] == ["email"]


FORM = "application/x-www-form-urlencoded"
PM_SECRET = "pm-secret-of-at-least-32-characters"


def test_provider_webhooks_become_feedback_only_when_authentic(topology: Settings) -> None:
    s, key = topology, ec.generate_private_key(ec.SECP256R1())
    edge = EdgeSettings(
        sendgrid_verification_key=sendgrid_public(key),
        postmark_username="pm",
        postmark_password=SecretStr(PM_SECRET),
        twilio_auth_token=SecretStr(TWILIO_TOKEN),
        vonage_signature_secret=SecretStr(VONAGE_SECRET),
    )
    grid = json.dumps([sendgrid_event("bounce"), sendgrid_event("spamreport", "b@example.com")]).encode()
    signed = sendgrid_sign(key, grid)
    grid_headers = {
        "X-Twilio-Email-Event-Webhook-Signature": signed["signature"],
        "X-Twilio-Email-Event-Webhook-Timestamp": signed["timestamp"],
    }
    forged = grid_headers | {"X-Twilio-Email-Event-Webhook-Timestamp": str(int(signed["timestamp"]) - 1)}
    postmark_body = bounce("HardBounce")

    def postmark_auth(password: str) -> dict[str, str]:
        return {"Authorization": "Basic " + base64.b64encode(f"pm:{password}".encode()).decode()}

    acmes = tenant_key(PM_SECRET, "postmark", "acme")
    stop = vonage_body("STOP", sign="md5hash", timestamp=str(int(time.time()) - 3600))  # retried an hour late
    form_stop = json.loads(vonage_body("stop", msisdn="447700900666", sign="md5hash"))
    query_stop = json.loads(vonage_body("STOP", msisdn="447700900777", sign="md5hash"))

    async def calls(base: str) -> list[tuple[int, str]]:
        form = twilio_form("STOP", sender="+447700900555")
        twilio_url = f"{base}/inbound/twilio/acme"
        requests: list[tuple[str, bytes, dict[str, str]]] = [
            ("/callbacks/sendgrid/acme", grid, grid_headers),
            ("/callbacks/sendgrid/acme", grid, forged),
            ("/callbacks/postmark/acme", postmark_body, postmark_auth(acmes)),
            ("/callbacks/postmark/acme", postmark_body, {"Authorization": "Basic cG06d3Jvbmc="}),
            ("/callbacks/postmark/acme", postmark_body, postmark_auth(PM_SECRET)),
            ("/callbacks/postmark/globex", postmark_body, postmark_auth(acmes)),
            (
                "/inbound/twilio/acme",
                urlencode(form).encode(),
                {
                    "X-Twilio-Signature": twilio_signature(twilio_url, form, TWILIO_TOKEN),
                    "Content-Type": "application/x-www-form-urlencoded",
                },
            ),
            ("/inbound/vonage/acme", stop, {"Content-Type": "application/json"}),
            ("/inbound/vonage/acme", urlencode(form_stop).encode(), {"Content-Type": FORM}),
        ]
        answers = []
        async with aiohttp.ClientSession() as http:
            for path, body, extra in requests:
                async with http.post(base + path, data=body, headers=extra) as r:
                    answers.append((r.status, await r.text()))
            async with http.get(f"{base}/inbound/vonage/acme", params=query_stop) as r:
                answers.append((r.status, await r.text()))
        return answers

    statuses = [status for status, _ in asyncio.run(serving(s, calls, edge))]
    assert statuses == [204, 400, 204, 400, 400, 400, 200, 204, 204, 204], "Vonage's GET and form methods too"
    found = [f for f in decoded(s, names(s).feedback) if isinstance(f, ProviderFeedback)]
    assert sorted((f.provider, f.kind, f.channel, f.address) for f in found) == [
        ("postmark", "hard_bounce", "email", "a@example.com"),
        ("sendgrid", "complaint", "email", "b@example.com"),
        ("sendgrid", "hard_bounce", "email", "a@example.com"),
        ("twilio", "sms_stop", "sms", "+447700900555"),
        ("vonage", "sms_stop", "sms", "+447700900123"),
        ("vonage", "sms_stop", "sms", "+447700900666"),
        ("vonage", "sms_stop", "sms", "+447700900777"),
    ]
    assert {f.tenant_id for f in found} == {"acme"}
    bounced = [o for o in decoded(s, names(s).outcomes) if isinstance(o, DeliveryOutcome)]
    assert {(o.delivery_id, o.status, o.reason) for o in bounced} == {(GRID_DELIVERY, "FAILED", "bounced")}
    assert len({o.event_id for o in bounced}) == 1, "SendGrid and Postmark reported the same bounce"

    async def unconfigured(base: str) -> int:
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"{base}/callbacks/sendgrid/acme", data=grid) as r,
        ):
            return r.status

    assert asyncio.run(serving(s, unconfigured, EdgeSettings())) == 404


def test_ses_notifications_via_sns_are_verified_with_the_fetched_certificate(topology: Settings) -> None:
    s, key = topology, rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem, fetched = certificate(key), []
    subscribe = "https://sns.eu-west-1.amazonaws.com/?Action=ConfirmSubscription&Token=2336412f37"

    async def aws(url: str) -> bytes:
        fetched.append(url)
        if url == CERT_URL:
            return pem
        if url == subscribe:
            return b"<ConfirmSubscriptionResponse/>"
        raise FetchFailed(url)

    confirmation = sns(
        key, "subscribe?", Type="SubscriptionConfirmation", Token="2336412f37", SubscribeURL=subscribe
    )
    hard = sns(key, ses_bounce("Permanent", "gone@example.com"))
    tampered = {**hard, "Message": hard["Message"].replace("gone@", "other@")}
    unreachable = sns(
        key, ses_bounce("Permanent", "x@example.com"), SigningCertURL=CERT_URL.replace("0123", "9999")
    )
    elsewhere = sns(key, ses_bounce("Permanent", "y@example.com"), TopicArn=TOPIC + "-other")

    async def calls(base: str) -> list[int]:
        async with aiohttp.ClientSession() as http:
            statuses = []
            for envelope in (confirmation, hard, tampered, unreachable, elsewhere):
                async with http.post(f"{base}/callbacks/ses/acme", data=json.dumps(envelope)) as r:
                    statuses.append(r.status)
            return statuses

    edge = EdgeSettings(ses_topic_arn=TOPIC)
    assert asyncio.run(serving(s, calls, edge, fetch=aws)) == [204, 204, 400, 503, 400]
    assert fetched.count(CERT_URL) == 1 and subscribe in fetched
    found = [f for f in decoded(s, names(s).feedback) if isinstance(f, ProviderFeedback)]
    assert [(f.provider, f.kind, f.address) for f in found] == [("ses", "hard_bounce", "gone@example.com")]
    [failed] = [o for o in decoded(s, names(s).outcomes) if isinstance(o, DeliveryOutcome)]
    assert (failed.delivery_id, failed.status, failed.provider) == (SES_DELIVERY, "FAILED", "ses")
