"""Callback parsers: the signed SendGrid Event Webhook and Postmark webhooks.

Signatures are made here the way the vendors document them (SNS: "Key\\nValue\\n" pairs in a fixed order,
RSA PKCS#1 v1.5 with SHA1 or SHA256; SendGrid: ECDSA P-256 SHA256 over timestamp + body), with keys made
for the test, so a parser that builds the wrong string or skips the check fails.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gateways.email import callbacks
from gateways.email.postmark import metadata
from gateways.email.sendgrid import custom_args
from tests.servers.email_apis import email_command
from tidings.errors import InvalidEvent

DELIVERY = uuid.uuid4()
NOTIFICATION = uuid.uuid4()
IDS = {"delivery_id": str(DELIVERY), "notification_id": str(NOTIFICATION), "recipient_id": "user-42"}


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def sendgrid_public(key: ec.EllipticCurvePrivateKey, *, pem: bool = False) -> str:
    public = key.public_key()
    info = serialization.PublicFormat.SubjectPublicKeyInfo
    if pem:
        return public.public_bytes(serialization.Encoding.PEM, info).decode()
    return base64.b64encode(public.public_bytes(serialization.Encoding.DER, info)).decode()


def sendgrid_sign(
    key: ec.EllipticCurvePrivateKey, body: bytes, timestamp: str | None = None
) -> dict[str, str]:
    timestamp = timestamp or str(int(time.time()))
    signature = key.sign(timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    return {"signature": base64.b64encode(signature).decode(), "timestamp": timestamp}


def sendgrid_event(event: str, email: str = "a@example.com", **fields: Any) -> dict[str, Any]:
    return {"email": email, "timestamp": 1764090000, "event": event, "sg_event_id": "e1", **IDS, **fields}


def parse_sendgrid(key: ec.EllipticCurvePrivateKey, events: Any, *, pem: bool = False) -> list[Any]:
    body = json.dumps(events).encode()
    return callbacks.sendgrid_events(
        body, **sendgrid_sign(key, body), public_key_pem=sendgrid_public(key, pem=pem), tenant_id="acme"
    )


@pytest.mark.parametrize("pem", [False, True])
def test_sendgrid_events_map_to_feedback(ec_key: ec.EllipticCurvePrivateKey, pem: bool) -> None:
    events = [
        sendgrid_event("bounce", type="bounce", reason="550 5.1.1 no such user", status="5.1.1"),
        sendgrid_event("bounce", type="blocked", reason="550 blocked by policy"),
        sendgrid_event("dropped", reason="Bounced Address"),
        sendgrid_event("dropped", reason="Invalid SMTPAPI header"),
        sendgrid_event("spamreport"),
        sendgrid_event("unsubscribe"),
        sendgrid_event("group_unsubscribe", asm_group_id=12),
        sendgrid_event("group_resubscribe", asm_group_id=12),
        sendgrid_event("delivered", response="250 OK"),
        sendgrid_event("open"),
        sendgrid_event("processed"),
        sendgrid_event("deferred"),
    ]
    got = parse_sendgrid(ec_key, events, pem=pem)
    expected = "hard_bounce soft_bounce hard_bounce complaint unsubscribe unsubscribe resubscribe delivered"
    assert [f.kind for f in got] == expected.split()
    assert got[0].detail == "550 5.1.1 no such user 5.1.1"
    assert got[5].detail == "group 12"
    assert all(f.category is None for f in got)
    assert {(f.delivery_id, f.notification_id, f.recipient_id, f.tenant_id) for f in got} == {
        (DELIVERY, NOTIFICATION, "user-42", "acme")
    }
    assert got[0].provider_timestamp == datetime.fromtimestamp(1764090000, UTC)


def test_sendgrid_custom_args_written_by_the_provider_come_back(ec_key: ec.EllipticCurvePrivateKey) -> None:
    command = email_command().model_copy(update={"tenant_id": "globex"})
    (got,) = parse_sendgrid(ec_key, [{**sendgrid_event("spamreport"), **custom_args(command)}])
    assert (got.tenant_id, got.recipient_id) == ("globex", command.recipient_id)
    assert (got.delivery_id, got.notification_id) == (command.delivery_id, command.notification_id)
    (fallback,) = parse_sendgrid(
        ec_key, [sendgrid_event("spamreport", tenant_id="bad/tenant", delivery_id="x")]
    )
    assert (fallback.tenant_id, fallback.delivery_id) == ("acme", None)


def test_sendgrid_refuses_bad_signatures(ec_key: ec.EllipticCurvePrivateKey) -> None:
    body = json.dumps([sendgrid_event("bounce", type="bounce")]).encode()
    signed = sendgrid_sign(ec_key, body)
    public = sendgrid_public(ec_key)
    assert len(callbacks.sendgrid_events(body, **signed, public_key_pem=public, tenant_id="acme")) == 1
    tampered = body.replace(b"a@example.com", b"z@example.com")
    other = sendgrid_public(ec.generate_private_key(ec.SECP256R1()))
    p384 = sendgrid_public(ec.generate_private_key(ec.SECP384R1()))
    cases = [
        (tampered, signed, public, "does not match"),
        (body, {**signed, "timestamp": str(int(signed["timestamp"]) + 1)}, public, "does not match"),
        (body, signed, other, "does not match"),
        (body, {**signed, "signature": "!!not base64"}, public, "does not match"),
        (body, signed, "not a key", "unreadable"),
        (body, signed, p384, "P-256"),
    ]
    for payload, headers, key, message in cases:
        with pytest.raises(InvalidEvent, match=message):
            callbacks.sendgrid_events(payload, **headers, public_key_pem=key, tenant_id="acme")


def test_sendgrid_refuses_stale_or_future_batches(ec_key: ec.EllipticCurvePrivateKey) -> None:
    body = json.dumps([sendgrid_event("bounce", type="bounce")]).encode()
    public = sendgrid_public(ec_key)
    for skew in (-3600, 3600):
        signed = sendgrid_sign(ec_key, body, str(int(time.time()) + skew))
        with pytest.raises(InvalidEvent, match="away from now"):
            callbacks.sendgrid_events(body, **signed, public_key_pem=public, tenant_id="acme")
        kept = callbacks.sendgrid_events(
            body, **signed, public_key_pem=public, tenant_id="acme", max_age=None
        )
        assert len(kept) == 1
    with pytest.raises(InvalidEvent, match="not a number"):
        callbacks.sendgrid_events(
            body, signature="x", timestamp="soon", public_key_pem=public, tenant_id="acme"
        )


def test_sendgrid_malformed_signed_bodies_are_refused(ec_key: ec.EllipticCurvePrivateKey) -> None:
    with pytest.raises(InvalidEvent, match="not a JSON array"):
        parse_sendgrid(ec_key, {"event": "bounce"})
    with pytest.raises(InvalidEvent, match="not a JSON object"):
        parse_sendgrid(ec_key, ["bounce"])
    body = b"[{"
    with pytest.raises(InvalidEvent, match="not JSON"):
        callbacks.sendgrid_events(
            body, **sendgrid_sign(ec_key, body), public_key_pem=sendgrid_public(ec_key), tenant_id="acme"
        )


WHO = {"Recipient": "u@example.com"}


def postmark_record(record_type: str, **fields: Any) -> bytes:
    return json.dumps(
        {"RecordType": record_type, "MessageStream": "outbound", "Metadata": IDS, **fields}
    ).encode()


def bounce(kind: str) -> bytes:
    return postmark_record(
        "Bounce",
        Type=kind,
        Email="a@example.com",
        BouncedAt="2026-11-25T16:33:54.9070259Z",
        Description="The server was unable to deliver your message",
        Details="smtp;550 5.1.1 user unknown",
    )


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("HardBounce", "hard_bounce"),
        ("BadEmailAddress", "hard_bounce"),
        ("SoftBounce", "soft_bounce"),
        ("Transient", "soft_bounce"),
        ("SpamComplaint", "complaint"),
        ("AutoResponder", None),
        ("OpenRelayTest", None),
        ("Subscribe", None),
    ],
)
def test_postmark_bounce_types(kind: str, expected: str | None) -> None:
    got = callbacks.postmark(bounce(kind), "acme")
    assert [f.kind for f in got] == ([expected] if expected else [])
    if got:
        assert (got[0].address, got[0].delivery_id) == ("a@example.com", DELIVERY)
        assert got[0].recipient_id == "user-42"
        assert got[0].provider_timestamp == datetime(2026, 11, 25, 16, 33, 54, 907000, tzinfo=UTC)
        assert got[0].detail is not None and "550 5.1.1" in got[0].detail


def test_postmark_spam_complaint_subscription_change_and_delivery() -> None:
    def change(suppress: bool, reason: str | None = None) -> bytes:
        at = "2026-11-25T17:05:00-05:00"
        fields = {"SuppressionReason": reason} if reason else {}
        return postmark_record("SubscriptionChange", SuppressSending=suppress, ChangedAt=at, **fields, **WHO)

    cases = [
        (postmark_record("SpamComplaint", Type="SpamComplaint", Email="u@example.com"), "complaint"),
        (change(True, "ManualSuppression"), "unsubscribe"),
        (change(True, "HardBounce"), "hard_bounce"),
        (change(True, "SpamComplaint"), "complaint"),
        (change(False, "ManualSuppression"), "resubscribe"),
        (
            postmark_record("Delivery", DeliveredAt="2026-11-25T17:06:00Z", Details="250 OK", **WHO),
            "delivered",
        ),
    ]
    for body, kind in cases:
        (got,) = callbacks.postmark(body, "acme")
        assert (got.kind, got.address, got.provider, got.category) == (
            kind,
            "u@example.com",
            "postmark",
            None,
        )
    (unsubscribed,) = callbacks.postmark(cases[1][0], "acme")
    assert unsubscribed.provider_timestamp == datetime(2026, 11, 25, 22, 5, tzinfo=UTC)
    assert callbacks.postmark(postmark_record("Open", **WHO), "acme") == []


def test_postmark_metadata_written_by_the_provider_comes_back() -> None:
    command = email_command()
    body = postmark_record("Bounce", Type="HardBounce", Email=command.address, Metadata=metadata(command))
    (got,) = callbacks.postmark(body, command.tenant_id)
    assert (got.tenant_id, got.recipient_id) == (command.tenant_id, command.recipient_id)
    assert got.delivery_id == command.delivery_id


def test_postmark_metadata_cannot_name_a_tenant_other_than_the_credentials() -> None:
    """Postmark does not sign its body: the basic-auth credentials are the tenant's, and a body naming
    another tenant would suppress, lift or report that tenant's addresses and deliveries."""
    command = email_command()
    other = metadata(command) | {"tenant_id": "globex"}
    for body in (
        postmark_record("Bounce", Type="HardBounce", Email=command.address, Metadata=other),
        postmark_record(
            "SubscriptionChange", Recipient=command.address, SuppressSending=False, Metadata=other
        ),
    ):
        with pytest.raises(InvalidEvent, match="names tenant 'globex', its credentials 'acme'"):
            callbacks.postmark(body, "acme")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"not json", "not JSON"),
        (b"[]", "not a JSON object"),
        (b'{"Type": "HardBounce"}', "no RecordType"),
        (b'{"RecordType": "SubscriptionChange", "Recipient": "u@example.com"}', "SuppressSending"),
    ],
)
def test_postmark_malformed_bodies_are_refused(body: bytes, message: str) -> None:
    with pytest.raises(InvalidEvent, match=message):
        callbacks.postmark(body, "acme")
