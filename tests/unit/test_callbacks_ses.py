"""Callback parsers: SNS-delivered SES notifications.

Signatures are made here the way the vendors document them (SNS: "Key\\nValue\\n" pairs in a fixed order,
RSA PKCS#1 v1.5 with SHA1 or SHA256; SendGrid: ECDSA P-256 SHA256 over timestamp + body), with keys made
for the test, so a parser that builds the wrong string or skips the check fails.
"""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from gateways.email import callbacks
from gateways.email.ses import email_tags
from tests.servers.email_apis import email_command
from tidings.errors import InvalidEvent

TOPIC = "arn:aws:sns:eu-west-1:123456789012:ses-feedback"
CERT_URL = "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-0123456789abcdef.pem"
DELIVERY = uuid.uuid4()
NOTIFICATION = uuid.uuid4()
IDS = {"delivery_id": str(DELIVERY), "notification_id": str(NOTIFICATION), "recipient_id": "user-42"}


def certificate(key: rsa.RSAPrivateKey, *, expired: bool = False) -> bytes:
    now = datetime.now(UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.amazonaws.com")])
    start, end = now - timedelta(days=3 if expired else 1), now + timedelta(days=-1 if expired else 1)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def cert(rsa_key: rsa.RSAPrivateKey) -> bytes:
    return certificate(rsa_key)


def sns(
    key: rsa.RSAPrivateKey, message: dict[str, Any] | str, *, version: str = "1", **extra: str
) -> dict[str, str]:
    envelope = {
        "Type": "Notification",
        "MessageId": str(uuid.uuid4()),
        "TopicArn": TOPIC,
        "Message": message if isinstance(message, str) else json.dumps(message),
        "Timestamp": "2026-11-25T17:00:00.000Z",
        "SignatureVersion": version,
        "SigningCertURL": CERT_URL,
        "UnsubscribeURL": "https://sns.eu-west-1.amazonaws.com/?Action=Unsubscribe",
        **extra,
    }
    if envelope["Type"] == "Notification":
        order = ["Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"]
    else:
        order = ["Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"]
    signed = "".join(f"{k}\n{envelope[k]}\n" for k in order if k in envelope).encode()
    digest = hashes.SHA1() if version == "1" else hashes.SHA256()
    envelope["Signature"] = base64.b64encode(key.sign(signed, padding.PKCS1v15(), digest)).decode()
    return envelope


def ses_bounce(bounce_type: str, *addresses: str, tags: bool = True) -> dict[str, Any]:
    mail: dict[str, Any] = {
        "timestamp": "2026-11-25T16:59:58.000Z",
        "messageId": "0102019abc-ses",
        "commonHeaders": {"messageId": f"<{DELIVERY}@tidings.localhost>"},
    }
    if tags:
        mail["tags"] = {"ses:configuration-set": ["tidings"]} | {k: [v] for k, v in IDS.items()}
    recipients = [
        {"emailAddress": a, "action": "failed", "status": "5.1.1", "diagnosticCode": f"smtp; 550 {a} unknown"}
        for a in addresses
    ]
    return {
        "notificationType": "Bounce",
        "bounce": {
            "bounceType": bounce_type,
            "bounceSubType": "General",
            "bouncedRecipients": recipients,
            "timestamp": "2026-11-25T16:59:59.500Z",
            "feedbackId": "0102-feedback",
        },
        "mail": mail,
    }


def parse_sns(envelope: dict[str, str], cert: bytes | None, **kwargs: Any) -> list[Any]:
    return callbacks.ses_sns(json.dumps(envelope).encode(), certificate_pem=cert, tenant_id="acme", **kwargs)


@pytest.mark.parametrize("version", ["1", "2"])
def test_ses_permanent_bounce_is_one_hard_bounce_per_recipient(
    rsa_key: rsa.RSAPrivateKey, cert: bytes, version: str
) -> None:
    got = parse_sns(
        sns(rsa_key, ses_bounce("Permanent", "a@example.com", "b@example.com"), version=version), cert
    )
    assert [(f.kind, f.address) for f in got] == [("hard_bounce", f"{a}@example.com") for a in "ab"]
    first = got[0]
    assert (first.tenant_id, first.provider, first.channel) == ("acme", "ses", "email")
    assert (first.delivery_id, first.notification_id, first.recipient_id) == (
        DELIVERY,
        NOTIFICATION,
        "user-42",
    )
    assert first.provider_timestamp == datetime(2026, 11, 25, 16, 59, 59, 500000, tzinfo=UTC)
    assert first.detail == "smtp; 550 a@example.com unknown"


@pytest.mark.parametrize("bounce_type", ["Transient", "Undetermined"])
def test_ses_other_bounces_are_soft(rsa_key: rsa.RSAPrivateKey, cert: bytes, bounce_type: str) -> None:
    got = parse_sns(sns(rsa_key, ses_bounce(bounce_type, "a@example.com")), cert)
    assert [f.kind for f in got] == ["soft_bounce"]


def test_ses_without_tags_ties_back_through_the_original_message_id(
    rsa_key: rsa.RSAPrivateKey, cert: bytes
) -> None:
    (got,) = parse_sns(sns(rsa_key, ses_bounce("Permanent", "a@example.com", tags=False)), cert)
    assert (got.delivery_id, got.notification_id, got.recipient_id) == (DELIVERY, None, None)


def test_ses_tags_written_by_the_provider_come_back(rsa_key: rsa.RSAPrivateKey, cert: bytes) -> None:
    command = email_command().model_copy(update={"recipient_id": "user@acme/7", "tenant_id": "acme-eu"})
    note = ses_bounce("Permanent", "a@example.com", tags=False)
    note["mail"]["tags"] = {t["Name"]: [t["Value"]] for t in email_tags(command)}
    assert "recipient_id_b64" in note["mail"]["tags"]
    (got,) = parse_sns(sns(rsa_key, note), cert)
    assert (got.tenant_id, got.recipient_id) == ("acme-eu", "user@acme/7")
    assert (got.delivery_id, got.notification_id) == (command.delivery_id, command.notification_id)


def test_ses_ids_too_long_for_one_tag_come_back_in_pieces(rsa_key: rsa.RSAPrivateKey, cert: bytes) -> None:
    """A tag value holds 256 characters: a tenant id over about 190 bytes was dropped, and its bounces
    went to the tenant of the callback URL."""
    tenant, recipient = "東京都港区" * 13, "r" * 200 + "/ü"
    command = email_command().model_copy(update={"recipient_id": recipient, "tenant_id": tenant})
    tags = email_tags(command)
    assert all(len(t["Value"]) <= 256 for t in tags) and "tenant_id_b64_1" in {t["Name"] for t in tags}
    note = ses_bounce("Permanent", "a@example.com", tags=False)
    note["mail"]["tags"] = {t["Name"]: [t["Value"]] for t in reversed(tags)}
    (got,) = parse_sns(sns(rsa_key, note), cert)
    assert (got.tenant_id, got.recipient_id) == (tenant, recipient)


def test_ses_complaint_and_delivery_events(rsa_key: rsa.RSAPrivateKey, cert: bytes) -> None:
    recipients = [{"emailAddress": "c@example.com"}]
    feedback = {
        "complainedRecipients": recipients,
        "complaintFeedbackType": "abuse",
        "timestamp": "2026-11-25T17:01Z",
    }
    complaint = {
        "notificationType": "Complaint",
        "complaint": feedback,
        "mail": {"tags": {"delivery_id": [str(DELIVERY)]}},
    }
    delivered = {"recipients": ["d@example.com"], "smtpResponse": "250 2.6.0 Message received"}
    delivery = {"eventType": "Delivery", "delivery": delivered, "mail": {}}
    (c,) = parse_sns(sns(rsa_key, complaint), cert)
    (d,) = parse_sns(sns(rsa_key, delivery, version="2", Subject="Amazon SES Email Event Notification"), cert)
    assert (c.kind, c.address, c.detail, c.delivery_id) == ("complaint", "c@example.com", "abuse", DELIVERY)
    not_spam = {**complaint, "complaint": {**feedback, "complaintFeedbackType": "not-spam"}}
    assert parse_sns(sns(rsa_key, not_spam), cert) == [], "a not-spam report is no complaint (RFC 6430)"
    assert (d.kind, d.address, d.detail) == ("delivered", "d@example.com", "250 2.6.0 Message received")


def test_ses_events_of_no_interest_and_confirmations_yield_nothing(
    rsa_key: rsa.RSAPrivateKey, cert: bytes
) -> None:
    assert parse_sns(sns(rsa_key, {"eventType": "Open", "open": {}, "mail": {}}), cert) == []
    confirmation = sns(
        rsa_key,
        "You have chosen to subscribe to the topic.",
        Type="SubscriptionConfirmation",
        Token="2336412f37",
        SubscribeURL="https://sns.eu-west-1.amazonaws.com/?Action=ConfirmSubscription&Token=2336412f37",
    )
    assert parse_sns(confirmation, cert) == []
    confirmation["Token"] = "forged"
    with pytest.raises(InvalidEvent, match="does not match"):
        parse_sns(confirmation, cert)


@pytest.mark.parametrize("field", ["Message", "Subject", "TopicArn", "Timestamp"])
def test_ses_tampered_notification_is_refused(rsa_key: rsa.RSAPrivateKey, cert: bytes, field: str) -> None:
    envelope = sns(rsa_key, ses_bounce("Permanent", "a@example.com"), Subject="bounce")
    envelope[field] = envelope[field].replace("a@example.com", "z@example.com") + (
        "" if field == "Message" else "x"
    )
    with pytest.raises(InvalidEvent, match="does not match"):
        parse_sns(envelope, cert)


def test_ses_refuses_without_a_valid_certificate(rsa_key: rsa.RSAPrivateKey, cert: bytes) -> None:
    envelope = sns(rsa_key, ses_bounce("Permanent", "a@example.com"))
    with pytest.raises(InvalidEvent, match="no signing certificate"):
        parse_sns(envelope, None)
    other = certificate(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    with pytest.raises(InvalidEvent, match="does not match"):
        parse_sns(envelope, other)
    with pytest.raises(InvalidEvent, match="not valid now"):
        parse_sns(envelope, certificate(rsa_key, expired=True))
    with pytest.raises(InvalidEvent, match="unreadable"):
        parse_sns(envelope, b"not a certificate")
    with pytest.raises(InvalidEvent, match="SignatureVersion"):
        parse_sns({**envelope, "SignatureVersion": "3"}, cert)
    with pytest.raises(InvalidEvent, match="unexpected topic"):
        parse_sns(envelope, cert, topic_arn="arn:aws:sns:eu-west-1:123456789012:other")
    assert len(parse_sns(envelope, cert, topic_arn=TOPIC)) == 1


def test_ses_malformed_bodies_are_refused(rsa_key: rsa.RSAPrivateKey, cert: bytes) -> None:
    with pytest.raises(InvalidEvent, match="not JSON"):
        callbacks.ses_sns(b"{", certificate_pem=cert, tenant_id="acme")
    with pytest.raises(InvalidEvent, match="not JSON"):
        callbacks.ses_sns(b"[" * 100_000, certificate_pem=cert, tenant_id="acme")
    with pytest.raises(InvalidEvent, match="not a JSON object"):
        callbacks.ses_sns(b"[]", certificate_pem=cert, tenant_id="acme")
    with pytest.raises(InvalidEvent, match="SES notification is not JSON"):
        parse_sns(sns(rsa_key, "not json"), cert)
    with pytest.raises(InvalidEvent, match="unknown SNS message type"):
        parse_sns({**sns(rsa_key, {}), "Type": "Other"}, cert)


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        (CERT_URL, True),
        ("https://sns.cn-north-1.amazonaws.com.cn/SimpleNotificationService-1.pem", True),
        ("http://sns.eu-west-1.amazonaws.com/SimpleNotificationService-1.pem", False),
        ("https://sns.eu-west-1.amazonaws.com.evil.example/SimpleNotificationService-1.pem", False),
        ("https://evil.example/sns.eu-west-1.amazonaws.com/x.pem", False),
        ("https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-1.txt", False),
        (CERT_URL + "?v=1", False),
        (CERT_URL + "#1", False),
        (CERT_URL.replace("https://", "https://x@"), False),
        (CERT_URL.replace(".com/", ".com:8443/"), False),
    ],
    ids=[
        "sns",
        "sns-china",
        "http",
        "suffix-host",
        "path",
        "not-pem",
        "query",
        "fragment",
        "userinfo",
        "port",
    ],
)
def test_signing_cert_url_only_trusts_sns_hosts(url: str, ok: bool) -> None:
    body = json.dumps({"Type": "Notification", "SigningCertURL": url}).encode()
    if ok:
        assert callbacks.signing_cert_url(body) == url
    else:
        with pytest.raises(InvalidEvent):
            callbacks.signing_cert_url(body)


def test_a_message_from_another_topic_is_refused_before_its_certificate_is_fetched() -> None:
    body = json.dumps({"Type": "Notification", "SigningCertURL": CERT_URL, "TopicArn": "arn:other"}).encode()
    with pytest.raises(InvalidEvent, match="unexpected topic"):
        callbacks.signing_cert_url(body, topic_arn="arn:aws:sns:eu-west-1:1:ses")
