"""SMS delivery receipts: which receipts become DELIVERED, FAILED and dead-number feedback, and that a
receipt is tied to its delivery only when its ids and number agree."""

from typing import Any
from urllib.parse import urlencode
from uuid import uuid4

import pytest

from gateways.outputs import reported_outcome
from gateways.sms.inbound import vonage_params_of
from gateways.sms.receipts import receipt_url, twilio_status, vonage_receipt
from tests.servers.sms import sms_command
from tests.servers.sms_receipts import twilio_signed, vonage_signed
from tidings.errors import InvalidEvent
from tidings.ids import delivery_id

TOKEN = "twilio-auth-token"
SECRET = "vonage-signature-secret"
NUMBER = "+447700900123"
NID = uuid4()
DID = delivery_id(NID, "sms", NUMBER)
BASE = "https://edge.example.com/callbacks/twilio/status"
URL = f"{BASE}/acme/ada/{NID}/{DID}"


def twilio(status: str, error: str | None = None, *, to: str = NUMBER, url: str = URL, **ids: Any) -> Any:
    params = {"MessageSid": "SM1", "AccountSid": "AC1", "To": to, "MessageStatus": status}
    if error:
        params["ErrorCode"] = error
    found = twilio_status(
        urlencode(params).encode(),
        url=url,
        signature=twilio_signed(url, params, TOKEN),
        auth_token=TOKEN,
        tenant_id="acme",
        **({"recipient": "ada", "notification": str(NID), "delivery": str(DID)} | ids),
    )
    assert all(f.recipient_id == "ada" for f in found)
    return [(f.kind, f.address, f.notification_id, f.delivery_id) for f in found], found


def vonage(status: str, error: str = "0", *, secret: str = SECRET, **extra: str) -> dict[str, str]:
    params = {
        "msisdn": NUMBER.removeprefix("+"),
        "to": "Tidings",
        "messageId": "0B00000127FDBC63",
        "status": status,
        "err-code": error,
        "client-ref": str(DID),
        "message-timestamp": "2026-11-26 12:10:29",
        "timestamp": "1795000000",
        "nonce": "abc",
    } | extra
    params["sig"] = vonage_signed(params, secret)
    return params


def test_the_receipt_url_names_tenant_recipient_notification_and_delivery() -> None:
    command = sms_command().model_copy(update={"tenant_id": "acme@eu", "recipient_id": "user/42"})
    url = receipt_url(BASE + "/", command)
    assert url == f"{BASE}/acme%40eu/user%2F42/{command.notification_id}/{command.delivery_id}"


def test_twilio_delivered_becomes_delivered_feedback_and_outcome() -> None:
    kinds, [feedback] = twilio("delivered")
    assert kinds == [("delivered", NUMBER, NID, DID)]
    outcome = reported_outcome(feedback)
    assert outcome is not None and (outcome.status, outcome.reason) == ("DELIVERED", "delivered")
    assert outcome.delivery_id == DID and outcome.channel == "sms"


def test_twilio_undelivered_fails_the_delivery_and_dead_numbers_are_suppressed() -> None:
    kinds, found = twilio("undelivered", "30003")
    assert kinds == [("undelivered", NUMBER, NID, DID)]
    outcome = reported_outcome(found[0])
    assert outcome is not None and (outcome.status, outcome.reason) == ("FAILED", "undelivered")
    assert outcome.detail == "twilio delivery receipt: undelivered, error 30003"
    kinds, found = twilio("failed", "30005")
    assert [k for k, *_ in kinds] == ["undelivered", "hard_bounce"]
    assert "unknown destination handset" in (found[1].detail or "")
    assert reported_outcome(found[1]) is None, "the undelivered receipt is the delivery's one outcome"
    kinds, found = twilio("undelivered", "21610")
    assert [k for k, *_ in kinds] == ["undelivered", "sms_stop"]
    assert "recipient replied STOP" in (found[1].detail or "")
    kinds, found = twilio("failed", "21635")
    assert [k for k, *_ in kinds] == ["undelivered", "hard_bounce"], "a landline (split from 21614)"


@pytest.mark.parametrize("status", ["queued", "sending", "sent", "accepted", "read", ""])
def test_twilio_intermediate_statuses_yield_nothing(status: str) -> None:
    assert twilio(status)[0] == []


def test_twilio_receipt_for_another_number_or_notification_is_refused() -> None:
    with pytest.raises(InvalidEvent, match="does not belong"):
        twilio("delivered", to="+447700900999")
    with pytest.raises(InvalidEvent, match="does not belong"):
        twilio("delivered", notification=str(uuid4()))


def test_twilio_signature_covers_the_ids_in_the_url() -> None:
    params = {"MessageSid": "SM1", "To": NUMBER, "MessageStatus": "delivered"}
    other = f"{BASE}/acme/ada/{NID}/{uuid4()}"
    with pytest.raises(InvalidEvent, match="signature does not match"):
        twilio_status(
            urlencode(params).encode(),
            url=other,
            signature=twilio_signed(URL, params, TOKEN),
            auth_token=TOKEN,
            tenant_id="acme",
            notification=str(NID),
            delivery=str(DID),
        )


def test_vonage_receipts_in_every_webhook_method_parse_alike() -> None:
    params = vonage("delivered")
    for parsed in (
        vonage_params_of(params, b"", ""),
        vonage_params_of({}, urlencode(params).encode(), "application/x-www-form-urlencoded"),
        vonage_params_of({}, __import__("json").dumps(params).encode(), "application/json"),
    ):
        [feedback] = vonage_receipt(
            parsed, tenant_id="acme", signature_secret=SECRET, notification=str(NID), delivery=str(DID)
        )
        assert (feedback.kind, feedback.address, feedback.delivery_id) == ("delivered", NUMBER, DID)
        assert feedback.provider_timestamp is not None and feedback.provider_timestamp.year == 2026


@pytest.mark.parametrize(
    ("status", "error", "kinds"),
    [
        ("failed", "2", ["undelivered"]),
        ("rejected", "6", ["undelivered"]),
        ("expired", "1", ["undelivered"]),
        ("failed", "3", ["undelivered", "hard_bounce"]),
        ("failed", "4", ["undelivered", "sms_stop"]),
        ("failed", "9", ["undelivered", "sms_stop"]),
        ("accepted", "0", []),
        ("buffered", "0", []),
        ("unknown", "1", []),
    ],
)
def test_vonage_statuses_and_error_codes(status: str, error: str, kinds: list[str]) -> None:
    found = vonage_receipt(
        vonage(status, error),
        tenant_id="acme",
        signature_secret=SECRET,
        notification=str(NID),
        delivery=str(DID),
    )
    assert [f.kind for f in found] == kinds


def test_vonage_refuses_unsigned_forged_or_mismatched_receipts() -> None:
    ids = {"notification": str(NID), "delivery": str(DID)}
    with pytest.raises(InvalidEvent, match="signature does not match"):
        vonage_receipt(vonage("delivered", secret="other"), tenant_id="acme", signature_secret=SECRET, **ids)
    unsigned = {k: v for k, v in vonage("delivered").items() if k != "sig"}
    with pytest.raises(InvalidEvent, match="not signed"):
        vonage_receipt(unsigned, tenant_id="acme", signature_secret=SECRET, **ids)
    other = vonage("delivered", **{"client-ref": str(uuid4())})
    with pytest.raises(InvalidEvent, match="client-ref"):
        vonage_receipt(other, tenant_id="acme", signature_secret=SECRET, **ids)


def test_a_receipt_at_the_bare_tenant_path_names_no_delivery_but_still_suppresses() -> None:
    found = vonage_receipt(vonage("failed", "3"), tenant_id="acme", signature_secret=SECRET)
    assert [(f.kind, f.delivery_id, f.recipient_id) for f in found] == [
        ("undelivered", None, None),
        ("hard_bounce", None, None),
    ]
    named = vonage_receipt(
        vonage("failed", "3"),
        tenant_id="acme",
        signature_secret=SECRET,
        recipient="ada",
        notification=str(NID),
        delivery=str(DID),
    )
    assert [(f.kind, f.recipient_id) for f in named] == [("undelivered", "ada"), ("hard_bounce", "ada")]
    assert reported_outcome(found[0]) is None


def test_the_vonage_callback_fits_the_100_characters_vonage_takes() -> None:
    """The full receipt path holds two UUIDs (74 characters): Vonage refused every message asking for it."""
    from gateways.sms.vonage import MAX_CALLBACK, vonage_callback
    from tests.servers.sms import sms_command

    command = sms_command(address=NUMBER).model_copy(update={"tenant_id": "acme", "recipient_id": "ada"})
    assert vonage_callback("https://e.io/v", command) == receipt_url("https://e.io/v", command)
    base = "https://edge.example.com/callbacks/vonage/status"
    assert vonage_callback(base, command) == f"{base}/acme"
    long_tenant = command.model_copy(update={"tenant_id": "t" * 60})
    assert vonage_callback(base, long_tenant) is None
    for c in (command, long_tenant):
        assert len(vonage_callback("https://e.io/v", c) or "") <= MAX_CALLBACK
