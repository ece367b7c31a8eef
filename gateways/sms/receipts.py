"""Turns SMS delivery receipts into ProviderFeedback (pure: request parts in, feedback out).

The provider accepting a text (HTTP 201 from Twilio, status 0 from Vonage) only means it was queued;
the carrier reports later whether the handset got it. The SMS providers ask for that report on every
message when `status_callback_url` is set, at
`{status_callback_url}/{tenant}/{recipient}/{notification}/{delivery}`, and the edge mounts these parsers
there; the recipient id in the feedback lets the router suppress the number in that recipient's state.
A receipt becomes:

* delivered: `delivered` feedback, which the edge turns into the delivery's DELIVERED outcome;
* not delivered: `undelivered` feedback (the delivery's FAILED outcome, reason `undelivered`, with the
  provider's error in the detail), plus feedback that suppresses the number when the error says it is
  dead: `hard_bounce` when it cannot receive texts (lifted by an operator, or by the number set again),
  `sms_stop` when its owner refused them (lifted by the owner's START), as the senders' errors do;
* anything else (queued, sent, accepted, buffered, read, unknown): nothing.

The ids come from the URL and are checked against the number the receipt names: the delivery id is
`uuid5(notification, "sms/" + number)` (`tidings.ids.delivery_id`), so a receipt cannot be pointed at
another notification's delivery, even on an unsigned route. A Vonage receipt at the bare `/{tenant}`
path (the account-wide receipt URL, or the sender's when the full path does not fit the 100 characters
Vonage takes) names its delivery by `client-ref`, looked up in the delivery-status projection
(`vonage_routes`); one not found there still suppresses dead numbers, for every recipient holding the
number (`holders`), but names no delivery.

* `twilio_status`: the form-encoded status callback (`MessageStatus`, `ErrorCode`, `To`), signed like
  every Twilio webhook (`inbound.verified_twilio_form`). Dead: 30005 (unknown handset), 30006 (landline
  or unreachable carrier), 21211 (invalid number), 21614 (not a mobile), 21635 (landline); refused: 21610
  (STOP).
* `vonage_receipt`: the DLR (`status`, `err-code`, `msisdn`, `client-ref`, `message-timestamp`) as a
  query string (GET), form or JSON body (POST), signed (`inbound.verify_vonage`) when the secret is set.
  `client-ref` is the delivery id the sender set and must match the URL's. Statuses `failed`,
  `rejected` and `expired` are undelivered; dead: err-code 3 (absent subscriber, permanent); refused:
  4 (barred by the user), 9 (the user asked not to receive the service's messages). A concatenated text
  gets one receipt per part; they carry the same ids, so their outcomes have the same event ids.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from urllib.parse import quote
from uuid import UUID

from gateways.sms.inbound import (
    VonageMethod,
    sms_feedback,
    verified_twilio_form,
    verify_vonage,
    vonage_time,
)
from tidings.errors import InvalidEvent
from tidings.events import DeliveryCommand, FeedbackKind, ProviderFeedback
from tidings.ids import delivery_id

Dead = tuple[FeedbackKind, str]
TWILIO_DEAD: dict[str, Dead] = {
    "30005": ("hard_bounce", "unknown destination handset"),
    "30006": ("hard_bounce", "landline or unreachable carrier"),
    "21610": ("sms_stop", "recipient replied STOP"),
    "21211": ("hard_bounce", "invalid 'To' number"),
    "21614": ("hard_bounce", "not a mobile number"),
    "21635": ("hard_bounce", "landline, not a mobile number"),
}
TWILIO_UNDELIVERED = frozenset({"undelivered", "failed"})
VONAGE_DEAD: dict[str, Dead] = {
    "3": ("hard_bounce", "absent subscriber (permanent)"),
    "4": ("sms_stop", "call barred by the user"),
    "9": ("sms_stop", "the user asked not to receive these messages"),
}
VONAGE_UNDELIVERED = frozenset({"failed", "rejected", "expired"})


def receipt_url(base: str, command: DeliveryCommand) -> str:
    """Where a provider should report this message's delivery: the edge's receipt route for its ids."""
    tenant, recipient = quote(command.tenant_id, safe=""), quote(command.recipient_id, safe="")
    return f"{base.rstrip('/')}/{tenant}/{recipient}/{command.notification_id}/{command.delivery_id}"


def _ids(notification: str | None, delivery: str | None, number: str) -> tuple[UUID, UUID] | None:
    if notification is None and delivery is None:
        return None
    try:
        nid, did = UUID(str(notification)), UUID(str(delivery))
    except ValueError:
        raise InvalidEvent("delivery receipt URL does not name a notification and delivery") from None
    if delivery_id(nid, "sms", number) != did:
        raise InvalidEvent(f"delivery receipt for {number} does not belong to delivery {did}")
    return nid, did


def _receipt(
    status: str,
    dead: Dead | None,
    error: str,
    number: str,
    ids: tuple[UUID, UUID] | None,
    *,
    tenant_id: str,
    recipient: str | None,
    provider: str,
    at: datetime | None,
) -> list[ProviderFeedback]:
    def one(kind: FeedbackKind, detail: str) -> ProviderFeedback:
        event = sms_feedback(kind, number, tenant_id=tenant_id, provider=provider, at=at, detail=detail)
        if ids is None:
            return event
        named = {"notification_id": ids[0], "delivery_id": ids[1], "recipient_id": recipient}
        return event.model_copy(update=named)

    if status == "delivered":
        return [one("delivered", f"{provider} delivery receipt: delivered")]
    out = [one("undelivered", f"{provider} delivery receipt: {status}, error {error or 'none'}")]
    if dead is not None:
        out.append(one(dead[0], f"{provider} delivery receipt: {dead[1]} (error {error})"))
    return out


def twilio_status(
    body: bytes,
    *,
    url: str,
    signature: str | None,
    auth_token: str,
    tenant_id: str,
    recipient: str | None = None,
    notification: str | None = None,
    delivery: str | None = None,
) -> list[ProviderFeedback]:
    fields = verified_twilio_form(body, url=url, signature=signature, auth_token=auth_token)
    status = fields.get("MessageStatus", "").lower()
    if status != "delivered" and status not in TWILIO_UNDELIVERED:
        return []
    number = fields.get("To", "")
    ids = _ids(notification, delivery, number)
    error = fields.get("ErrorCode", "")
    dead = TWILIO_DEAD.get(error)
    return _receipt(
        status, dead, error, number, ids, tenant_id=tenant_id, recipient=recipient, provider="twilio", at=None
    )


def vonage_receipt(
    params: Mapping[str, str],
    *,
    tenant_id: str,
    signature_secret: str | None = None,
    signature_method: VonageMethod = "md5hash",
    recipient: str | None = None,
    notification: str | None = None,
    delivery: str | None = None,
) -> list[ProviderFeedback]:
    if signature_secret is not None:
        verify_vonage(params, signature_secret, signature_method, None, None, "Vonage delivery receipt")
    status = params.get("status", "").lower()
    if status != "delivered" and status not in VONAGE_UNDELIVERED:
        return []
    number = "+" + params.get("msisdn", "").removeprefix("+")
    if delivery is not None and params.get("client-ref", delivery) != delivery:
        raise InvalidEvent("Vonage delivery receipt's client-ref is not the delivery in its URL")
    ids = _ids(notification, delivery, number)
    error = params.get("err-code", "")
    at = vonage_time(params.get("message-timestamp", ""))
    dead = VONAGE_DEAD.get(error)
    return _receipt(
        status, dead, error, number, ids, tenant_id=tenant_id, recipient=recipient, provider="vonage", at=at
    )
