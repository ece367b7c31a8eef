"""Inbound SMS webhooks -> opt-out feedback: Twilio and Vonage signatures (checked against the vendors'
published test vectors, then verified and refused when tampered with) and the STOP/START keywords."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import pytest

from gateways.sms.inbound import keyword_kind, twilio, twilio_signature, vonage, vonage_signature
from tidings.errors import InvalidEvent

TOKEN = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"
URL = "https://hooks.example.com/sms/twilio?tenant=acme"
STOP_WORDS = ["STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "OPTOUT", "REVOKE"]
START_WORDS = ["START", "YES", "UNSTOP", "OPTIN"]
VONAGE_SECRET = "vonage-signature-secret"


def twilio_form(text: str, sender: str = "+447700900123", **extra: str) -> list[tuple[str, str]]:
    return [
        ("ToCountry", "GB"),
        ("SmsMessageSid", "SM0123456789abcdef0123456789abcdef"),
        ("NumMedia", "0"),
        ("Body", text),
        ("To", "+447700900999"),
        ("MessageSid", "SM0123456789abcdef0123456789abcdef"),
        ("AccountSid", "AC0123456789abcdef0123456789abcdef"),
        ("From", sender),
        ("ApiVersion", "2010-04-01"),
        *extra.items(),
    ]


def twilio_request(text: str, **extra: str) -> tuple[bytes, str]:
    form = twilio_form(text, **extra)
    return urlencode(form).encode(), twilio_signature(URL, form, TOKEN)


def vonage_body(text: str, *, msisdn: str = "447700900123", sign: str | None = None, **extra: Any) -> bytes:
    params: dict[str, Any] = {
        "msisdn": msisdn,
        "to": "447700900999",
        "messageId": "0A0000000123ABCD1",
        "text": text,
        "type": "text",
        "keyword": text.strip().split(" ")[0].upper() if text.strip() else "",
        "api-key": "abcd1234",
        "message-timestamp": "2024-05-01 09:30:00",
        **extra,
    }
    if sign is not None:
        params["timestamp"] = params.get("timestamp", "1714555800")
        params["nonce"] = "7a3c1f0e-63b4-4bb3-9d0e-1f2a3b4c5d6e"
        params["sig"] = vonage_signature(params, VONAGE_SECRET, sign)  # type: ignore[arg-type]
    return json.dumps(params).encode()


def test_twilio_signature_matches_twilios_published_vectors() -> None:
    uri = "https://mycompany.com/myapp.php?foo=1&bar=2"
    params = {
        "CallSid": "CA1234567890ABCDE",
        "Caller": "+14158675309",
        "Digits": "1234",
        "From": "+14158675309",
        "To": "+18005551212",
    }
    assert twilio_signature(uri, params.items(), "12345") == "RSOYDt4T1cUTdK1PDd93/VVr8B8="
    repeated = [("Sid", "CA123"), ("SidAccount", "AC123"), ("Digits", "5678"), ("Digits", "1234")]
    assert twilio_signature(uri, [*repeated, ("Digits", "1234")], "12345") == "IK+Dwps556ElfBT0I3Rgjkr1wJU="


def test_vonage_signature_matches_the_sdks_published_vectors() -> None:
    assert vonage_signature({"a": "1", "b": "2", "timestamp": "1461605396"}, "secret") == (
        "6af838ef94998832dbfc29020b564830"
    )
    params = {"param1": "value1", "param2": "value2", "timestamp": "1234567890"}
    assert vonage_signature(params, "signature_secret", "sha256") == (
        "280c4320703dbc98bfa22db676655ed2acfbfe8792b062ff7622e67f1183c287"
    )
    assert vonage_signature(params, "signature_secret", "md5") == "724c2bf6ca423c36e20631b11d1c5753"
    special = {"param1": "value&1", "param2": "value=2", "timestamp": "1234567890"}
    assert vonage_signature(special, "signature_secret", "md5") == "2bbf0abafb2c55e5af6231513896a2ac"


def test_twilio_stop_becomes_sms_stop_feedback() -> None:
    body, signature = twilio_request("  Stop ")
    (feedback,) = twilio(body, url=URL, signature=signature, auth_token=TOKEN, tenant_id="acme")
    assert (feedback.kind, feedback.channel, feedback.address) == ("sms_stop", "sms", "+447700900123")
    assert (feedback.tenant_id, feedback.provider, feedback.recipient_id) == ("acme", "twilio", None)
    assert feedback.detail is not None and "SM0123456789abcdef0123456789abcdef" in feedback.detail


@pytest.mark.parametrize(
    "tamper",
    [
        lambda body, sig: (body.replace(b"Body=HELLO", b"Body=START"), sig),
        lambda body, sig: (body + b"&Extra=1", sig),
        lambda body, sig: (body, sig[:-2] + ("A=" if sig[-2] != "A" else "B=")),
        lambda body, sig: (body, ""),
    ],
    ids=["body changed", "parameter added", "signature changed", "no signature"],
)
def test_twilio_refuses_a_tampered_request(tamper: Any) -> None:
    body, signature = tamper(*twilio_request("HELLO"))
    with pytest.raises(InvalidEvent):
        twilio(body, url=URL, signature=signature, auth_token=TOKEN, tenant_id="acme")


def test_undecodable_signatures_and_values_are_refused_not_crashed_on() -> None:
    body, _ = twilio_request("STOP")
    with pytest.raises(InvalidEvent, match="signature does not match"):
        twilio(body, url=URL, signature="\udcff\udcfe", auth_token=TOKEN, tenant_id="acme")
    with pytest.raises(InvalidEvent, match="signature does not match"):
        twilio(body, url=URL + "\udcff", signature="abc", auth_token=TOKEN, tenant_id="acme")
    lone = json.dumps({"msisdn": "447700900123", "text": "STOP\ud800", "sig": "00"}).encode()
    with pytest.raises(InvalidEvent, match="signature does not match"):
        vonage(lone, tenant_id="acme", signature_secret="secret")


def test_twilio_refuses_another_token_or_url() -> None:
    body, signature = twilio_request("STOP")
    with pytest.raises(InvalidEvent, match="signature"):
        twilio(body, url=URL, signature=signature, auth_token="another-auth-token", tenant_id="acme")
    with pytest.raises(InvalidEvent, match="signature"):
        twilio(
            body,
            url=URL.replace("tenant=acme", "tenant=beta"),
            signature=signature,
            auth_token=TOKEN,
            tenant_id="acme",
        )


def test_twilio_signature_with_or_without_the_default_port_verifies() -> None:
    form = twilio_form("STOP")
    with_port = URL.replace("example.com/", "example.com:443/")
    signed_with_port = twilio_signature(with_port, form, TOKEN)
    assert signed_with_port != twilio_signature(URL, form, TOKEN)
    body = urlencode(form).encode()
    assert twilio(body, url=URL, signature=signed_with_port, auth_token=TOKEN, tenant_id="acme")
    assert twilio(
        body, url=with_port, signature=twilio_signature(URL, form, TOKEN), auth_token=TOKEN, tenant_id="acme"
    )


def test_twilio_advanced_opt_out_type_decides_over_the_keyword_list() -> None:
    body, signature = twilio_request("ARRET", OptOutType="STOP")
    (feedback,) = twilio(body, url=URL, signature=signature, auth_token=TOKEN, tenant_id="acme")
    assert feedback.kind == "sms_stop"
    body, signature = twilio_request("help", OptOutType="HELP")
    assert twilio(body, url=URL, signature=signature, auth_token=TOKEN, tenant_id="acme") == []


def test_twilio_ordinary_reply_yields_nothing() -> None:
    body, signature = twilio_request("Stop sending me these at night please")
    assert twilio(body, url=URL, signature=signature, auth_token=TOKEN, tenant_id="acme") == []


def test_a_keyword_from_a_sender_that_is_not_e164_is_refused() -> None:
    form = twilio_form("STOP", sender="12345")
    with pytest.raises(InvalidEvent, match=r"E\.164"):
        twilio(
            urlencode(form).encode(),
            url=URL,
            signature=twilio_signature(URL, form, TOKEN),
            auth_token=TOKEN,
            tenant_id="acme",
        )


@pytest.mark.parametrize(
    ("text", "kind"),
    [(w, "sms_stop") for w in STOP_WORDS]
    + [(w, "sms_start") for w in START_WORDS]
    + [(" stop\n", "sms_stop"), ("Unsubscribe", "sms_stop"), ("\toptIn ", "sms_start"), ("yes", "sms_start")]
    + [("STOP please", None), ("stop.", None), ("HELP", None), ("", None), ("NO", None), ("STARTED", None)],
)
def test_keywords(text: str, kind: str | None) -> None:
    assert keyword_kind(text) == kind


@pytest.mark.parametrize("word", ["stopall", "Revoke", "UNSTOP"])
def test_keywords_reach_feedback_through_both_webhooks(word: str) -> None:
    expected = keyword_kind(word)
    body, signature = twilio_request(word)
    assert [
        f.kind for f in twilio(body, url=URL, signature=signature, auth_token=TOKEN, tenant_id="acme")
    ] == [expected]
    assert [f.kind for f in vonage(vonage_body(word), tenant_id="acme")] == [expected]


def test_vonage_unsigned_stop_becomes_sms_stop_feedback() -> None:
    (feedback,) = vonage(vonage_body(" stop "), tenant_id="acme")
    assert (feedback.kind, feedback.channel, feedback.address) == ("sms_stop", "sms", "+447700900123")
    assert (feedback.provider, feedback.tenant_id) == ("vonage", "acme")
    assert feedback.provider_timestamp == datetime(2024, 5, 1, 9, 30, tzinfo=UTC)
    assert feedback.detail is not None and "0A0000000123ABCD1" in feedback.detail


@pytest.mark.parametrize("method", ["md5hash", "md5", "sha1", "sha256", "sha512"])
def test_vonage_signed_message_verifies_with_each_method(method: str) -> None:
    body = vonage_body("START", sign=method)
    (feedback,) = vonage(body, tenant_id="acme", signature_secret=VONAGE_SECRET, signature_method=method)  # type: ignore[arg-type]
    assert feedback.kind == "sms_start"


def test_vonage_accepts_an_uppercase_hmac_signature() -> None:
    record = json.loads(vonage_body("STOP", sign="sha256"))
    record["sig"] = record["sig"].upper()
    found = vonage(
        json.dumps(record).encode(),
        tenant_id="acme",
        signature_secret=VONAGE_SECRET,
        signature_method="sha256",
    )
    assert [f.kind for f in found] == ["sms_stop"]


def test_vonage_refuses_tampered_or_unsigned_messages_when_a_secret_is_set() -> None:
    record = json.loads(vonage_body("HELLO", sign="sha256"))
    record["text"] = "STOP"
    with pytest.raises(InvalidEvent, match="signature"):
        vonage(
            json.dumps(record).encode(),
            tenant_id="acme",
            signature_secret=VONAGE_SECRET,
            signature_method="sha256",
        )
    with pytest.raises(InvalidEvent, match="signature"):
        vonage(
            vonage_body("STOP", sign="sha256"),
            tenant_id="acme",
            signature_secret="another",
            signature_method="sha256",
        )
    with pytest.raises(InvalidEvent, match="not signed"):
        vonage(vonage_body("STOP"), tenant_id="acme", signature_secret=VONAGE_SECRET)


def test_vonage_max_age_refuses_an_old_timestamp() -> None:
    body = vonage_body("STOP", sign="md5hash", timestamp="1714555800")
    options: dict[str, Any] = {"tenant_id": "acme", "signature_secret": VONAGE_SECRET}
    assert vonage(body, **options, max_age=300, now=1714555800 + 299)
    assert vonage(body, **options)
    with pytest.raises(InvalidEvent, match="timestamp"):
        vonage(body, **options, max_age=300, now=1714555800 + 301)


def test_vonage_concatenated_part_and_ordinary_text_yield_nothing() -> None:
    assert (
        vonage(vonage_body("STOP", concat="true", **{"concat-part": "2", "concat-total": "2"}), tenant_id="a")
        == []
    )
    assert vonage(vonage_body("Thanks, see you at 5"), tenant_id="acme") == []


@pytest.mark.parametrize("body", [b"not json", b"[1, 2]", b""])
def test_vonage_malformed_body_is_refused(body: bytes) -> None:
    with pytest.raises(InvalidEvent):
        vonage(body, tenant_id="acme")


def test_vonage_keyword_from_an_impossible_number_is_refused() -> None:
    with pytest.raises(InvalidEvent, match=r"E\.164"):
        vonage(vonage_body("STOP", msisdn="999"), tenant_id="acme")


def test_vonage_bodies_that_are_not_json_objects_are_refused() -> None:
    for body in (b"{", b"[]", b"[" * 100_000):
        with pytest.raises(InvalidEvent, match="Vonage inbound message is not"):
            vonage(body, tenant_id="acme")
