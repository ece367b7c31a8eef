"""Parses the email providers' delivery callbacks into ProviderFeedback events (pure: bytes in, events out).

* `ses_sns`: an Amazon SNS HTTP(S) delivery (not raw message delivery) of an SES notification, either an
  identity notification (`notificationType`) or a configuration-set event (`eventType`). The SNS
  signature is verified first (SignatureVersion 1 = SHA1withRSA, 2 = SHA256withRSA, over the canonical
  string AWS documents) with the signing certificate the caller fetched from `signing_cert_url(body)`.
  Bounce Permanent -> hard_bounce, Transient and Undetermined -> soft_bounce (SES could not tell, so it
  must not suppress for good); one event per bounced, complained or delivered recipient.
* `sendgrid_events`: a signed Event Webhook batch (ECDSA P-256 over timestamp + body, base64 DER
  signature). bounce -> hard_bounce, blocked -> soft_bounce, dropped "Bounced Address" -> hard_bounce,
  spamreport -> complaint, (group_)unsubscribe -> unsubscribe, group_resubscribe -> resubscribe,
  delivered -> delivered; other events are ignored.
* `postmark`: one Postmark webhook (Bounce, SpamComplaint, SubscriptionChange, Delivery). Postmark does
  not sign webhooks: the caller authenticates them (basic auth on the URL, a password per tenant), so
  the body cannot name another tenant than the credentials' (anyone holding one tenant's password could
  otherwise suppress or lift another tenant's addresses).

The ids the providers attached when sending (SendGrid `custom_args`, SES `EmailTags`, Postmark `Metadata`)
fill delivery, notification and recipient ids, and the tenant (the `tenant_id` argument is the default).
Provider unsubscribes are address-level (no category): category opt-outs come from our own one-click link.
Bad signatures and malformed bodies raise InvalidEvent; a well-formed event of no interest yields nothing.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from functools import partial
from typing import Any
from urllib.parse import urlsplit
from uuid import UUID

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from pydantic import ValidationError

from tidings.errors import InvalidEvent
from tidings.events import FeedbackKind, ProviderFeedback

SNS_HOST = re.compile(r"^sns\.[a-z0-9-]+\.amazonaws\.com(\.cn)?$")
SNS_FIELDS = {
    "Notification": ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    "SubscriptionConfirmation": (
        "Message",
        "MessageId",
        "SubscribeURL",
        "Timestamp",
        "Token",
        "TopicArn",
        "Type",
    ),
}
SNS_FIELDS["UnsubscribeConfirmation"] = SNS_FIELDS["SubscriptionConfirmation"]
SNS_HASHES: dict[str, type[hashes.HashAlgorithm]] = {"1": hashes.SHA1, "2": hashes.SHA256}
MESSAGE_ID = re.compile(r"^<([0-9a-fA-F-]{36})@[^>]+>$")
SES_PIECE = re.compile(r"(.+)_b64_([0-9]{1,2})")
POSTMARK_KINDS: dict[str, FeedbackKind] = {
    "HardBounce": "hard_bounce",
    "BadEmailAddress": "hard_bounce",
    "ManuallyDeactivated": "hard_bounce",
    "SoftBounce": "soft_bounce",
    "Transient": "soft_bounce",
    "DnsError": "soft_bounce",
    "InboxFull": "soft_bounce",
    "Blocked": "soft_bounce",
    "DMARCPolicy": "soft_bounce",
    "SpamComplaint": "complaint",
    "Unsubscribe": "unsubscribe",
}
"""Postmark's bounce types that say something of the address. `Subscribe` is not among them: it
classifies a reply asking to be added to a list, and as a resubscribe it lifted hard bounces."""
SENDGRID_KINDS: dict[str, FeedbackKind] = {
    "spamreport": "complaint",
    "unsubscribe": "unsubscribe",
    "group_unsubscribe": "unsubscribe",
    "group_resubscribe": "resubscribe",
    "delivered": "delivered",
}


def _json(body: bytes, what: str) -> Any:
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise InvalidEvent(f"{what} is not JSON: {exc}") from None


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidEvent(f"{what} is not a JSON object")
    return value


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _time(value: Any) -> datetime | None:
    try:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return datetime.fromtimestamp(value, UTC)
        parsed = datetime.fromisoformat(str(value))
    except (TypeError, ValueError, OverflowError, OSError):
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _uuid(value: Any) -> UUID | None:
    try:
        return UUID(str(value)) if value else None
    except ValueError:
        return None


def _feedback(
    kind: FeedbackKind,
    address: Any,
    ids: Mapping[str, Any],
    *,
    tenant_id: str,
    provider: str,
    at: Any,
    detail: str | None,
) -> ProviderFeedback | None:
    if not isinstance(address, str) or not address.strip():
        return None
    fields: dict[str, Any] = {
        "kind": kind,
        "channel": "email",
        "address": address.strip(),
        "recipient_id": str(ids["recipient_id"]) if ids.get("recipient_id") else None,
        "notification_id": _uuid(ids.get("notification_id")),
        "delivery_id": _uuid(ids.get("delivery_id")),
        "provider": provider,
        "provider_timestamp": _time(at),
        "detail": detail[:500] if detail else None,
    }
    try:
        return ProviderFeedback(tenant_id=str(ids.get("tenant_id") or tenant_id), **fields)
    except ValidationError:
        try:
            return ProviderFeedback(tenant_id=tenant_id, **fields)
        except ValidationError as exc:
            raise InvalidEvent(f"{provider} {kind} for {address!r} is not valid feedback: {exc}") from None


def signing_cert_url(body: bytes, topic_arn: str | None = None) -> str:
    """The certificate URL the caller must fetch for `ses_sns`: HTTPS on an SNS host, a `.pem` path, no
    query, fragment, credentials or port. With `topic_arn`, a message from another topic is refused
    before anything is fetched. The edge caches certificates by URL, and before these checks anyone
    could make it fetch and keep one more per request, varying only the query or fragment."""
    envelope = _object(_json(body, "SNS message"), "SNS message")
    if topic_arn is not None and envelope.get("TopicArn") != topic_arn:
        raise InvalidEvent(f"SNS message from unexpected topic {envelope.get('TopicArn')!r}")
    url = str(envelope.get("SigningCertURL", ""))
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise InvalidEvent(f"SNS SigningCertURL does not parse: {url!r}") from None
    odd = parts.query or parts.fragment or "@" in parts.netloc or port not in (None, 443) or "#" in url
    if (
        parts.scheme != "https"
        or not SNS_HOST.match(parts.hostname or "")
        or not parts.path.endswith(".pem")
        or odd
    ):
        raise InvalidEvent(f"SNS SigningCertURL is not an Amazon SNS certificate: {url!r}")
    return url


def sns_string_to_sign(envelope: Mapping[str, Any]) -> bytes:
    fields = SNS_FIELDS.get(str(envelope.get("Type")))
    if fields is None:
        raise InvalidEvent(f"unknown SNS message type {envelope.get('Type')!r}")
    missing = [f for f in fields if f != "Subject" and not isinstance(envelope.get(f), str)]
    if missing:
        raise InvalidEvent(f"SNS message lacks {', '.join(missing)}")
    return "".join(f"{f}\n{envelope[f]}\n" for f in fields if envelope.get(f) is not None).encode()


def _verify_sns(envelope: Mapping[str, Any], certificate_pem: bytes | None) -> None:
    if certificate_pem is None:
        raise InvalidEvent("SNS message refused: no signing certificate to verify it with")
    algorithm = SNS_HASHES.get(str(envelope.get("SignatureVersion")))
    if algorithm is None:
        raise InvalidEvent(f"unsupported SNS SignatureVersion {envelope.get('SignatureVersion')!r}")
    try:
        cert = x509.load_pem_x509_certificate(certificate_pem)
        signature = base64.b64decode(str(envelope.get("Signature", "")), validate=True)
    except (ValueError, binascii.Error) as exc:
        raise InvalidEvent(f"SNS signature or certificate unreadable: {exc}") from None
    if not cert.not_valid_before_utc <= datetime.now(UTC) <= cert.not_valid_after_utc:
        raise InvalidEvent("SNS signing certificate is not valid now")
    key = cert.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        raise InvalidEvent("SNS signing certificate does not hold an RSA key")
    try:
        key.verify(signature, sns_string_to_sign(envelope), padding.PKCS1v15(), algorithm())
    except InvalidSignature:
        raise InvalidEvent("SNS signature does not match the message") from None


def _b64(value: str) -> str | None:
    try:
        return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None


def _ses_ids(mail: Mapping[str, Any]) -> dict[str, str]:
    """The ids the sender tagged: as they are, `<name>_b64`, or pieces `<name>_b64_<i>` (`ses.email_tags`)."""
    ids: dict[str, str] = {}
    pieces: dict[str, dict[int, str]] = {}
    tags = _dict(mail.get("tags"))
    for name, values in tags.items():
        value = values[0] if isinstance(values, list) and values else values
        if (piece := SES_PIECE.fullmatch(name)) is not None:
            pieces.setdefault(piece.group(1), {})[int(piece.group(2))] = str(value)
        elif name.endswith("_b64"):
            if (decoded := _b64(str(value))) is not None:
                ids[name[:-4]] = decoded
        elif isinstance(value, str):
            ids[name] = value
    for name, parts in pieces.items():
        if sorted(parts) == list(range(len(parts))) and (
            decoded := _b64("".join(parts[i] for i in sorted(parts)))
        ):
            ids[name] = decoded
    common = _dict(mail.get("commonHeaders"))
    found = MESSAGE_ID.match(str(common.get("messageId", "")))
    if "delivery_id" not in ids and found:
        ids["delivery_id"] = found.group(1)
    return ids


def ses_sns(
    body: bytes, *, certificate_pem: bytes | None, tenant_id: str, topic_arn: str | None = None
) -> list[ProviderFeedback]:
    """Verified SNS delivery -> feedback; confirmations verify and yield nothing (the caller visits
    SubscribeURL). `topic_arn`, when given, must match: AWS advises refusing unexpected topics."""
    envelope = _object(_json(body, "SNS message"), "SNS message")
    _verify_sns(envelope, certificate_pem)
    if topic_arn is not None and envelope.get("TopicArn") != topic_arn:
        raise InvalidEvent(f"SNS message from unexpected topic {envelope.get('TopicArn')!r}")
    if envelope["Type"] != "Notification":
        return []
    note = _object(_json(str(envelope["Message"]).encode(), "SES notification"), "SES notification")
    kind_name = str(note.get("notificationType") or note.get("eventType") or "")
    mail = _dict(note.get("mail"))
    ids = _ses_ids(mail)
    make = partial(_feedback, tenant_id=tenant_id, provider="ses")
    out: list[ProviderFeedback | None] = []
    if kind_name == "Bounce":
        bounce = _object(note.get("bounce"), "SES bounce")
        kind: FeedbackKind = "hard_bounce" if bounce.get("bounceType") == "Permanent" else "soft_bounce"
        for r in bounce.get("bouncedRecipients") or []:
            r = _dict(r)
            why = r.get("diagnosticCode") or f"{bounce.get('bounceType')}/{bounce.get('bounceSubType')}"
            out.append(make(kind, r.get("emailAddress"), ids, at=bounce.get("timestamp"), detail=why))
    elif kind_name == "Complaint":
        complaint = _object(note.get("complaint"), "SES complaint")
        why = complaint.get("complaintFeedbackType") or complaint.get("complaintSubType")
        if why == "not-spam":  # RFC 6430: the reporter says the message is not spam
            return []
        for r in complaint.get("complainedRecipients") or []:
            address = _dict(r).get("emailAddress")
            out.append(make("complaint", address, ids, at=complaint.get("timestamp"), detail=why))
    elif kind_name == "Delivery":
        delivery = _object(note.get("delivery"), "SES delivery")
        why = delivery.get("smtpResponse")
        for address in delivery.get("recipients") or []:
            out.append(make("delivered", address, ids, at=delivery.get("timestamp"), detail=why))
    return [f for f in out if f is not None]


def _sendgrid_key(public_key_pem: str) -> ec.EllipticCurvePublicKey:
    """SendGrid shows the key as bare base64 DER; a PEM is accepted too."""
    text = public_key_pem.strip()
    try:
        if text.startswith("-----BEGIN"):
            key = serialization.load_pem_public_key(text.encode())
        else:
            key = serialization.load_der_public_key(base64.b64decode(text, validate=True))
    except (ValueError, binascii.Error) as exc:
        raise InvalidEvent(f"SendGrid verification key unreadable: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise InvalidEvent("SendGrid verification key is not an EC P-256 key")
    return key


def sendgrid_events(
    body: bytes,
    *,
    signature: str,
    timestamp: str,
    public_key_pem: str,
    tenant_id: str,
    max_age: float | None = 600.0,
    now: float | None = None,
) -> list[ProviderFeedback]:
    """`signature` and `timestamp` are the X-Twilio-Email-Event-Webhook-Signature/-Timestamp headers.
    A batch signed more than `max_age` seconds away from `now` is refused, so a captured request cannot
    be replayed later (a replayed bounce would suppress an address that has recovered)."""
    if max_age is not None:
        try:
            skew = abs((time.time() if now is None else now) - float(timestamp))
        except ValueError:
            raise InvalidEvent("SendGrid event webhook timestamp is not a number") from None
        if skew > max_age:
            raise InvalidEvent(f"SendGrid event webhook timestamp is {skew:.0f}s away from now")
    key = _sendgrid_key(public_key_pem)
    try:
        key.verify(
            base64.b64decode(signature, validate=True), timestamp.encode() + body, ec.ECDSA(hashes.SHA256())
        )
    except (InvalidSignature, binascii.Error, ValueError):
        raise InvalidEvent("SendGrid event webhook signature does not match") from None
    events = _json(body, "SendGrid events")
    if not isinstance(events, list):
        raise InvalidEvent("SendGrid events are not a JSON array")
    make = partial(_feedback, tenant_id=tenant_id, provider="sendgrid")
    out: list[ProviderFeedback | None] = []
    for event in events:
        event = _object(event, "SendGrid event")
        name = event.get("event")
        kind: FeedbackKind | None = SENDGRID_KINDS.get(str(name))
        if name == "bounce":
            kind = "soft_bounce" if event.get("type") == "blocked" else "hard_bounce"
        elif name == "dropped" and event.get("reason") == "Bounced Address":
            kind = "hard_bounce"
        if kind is None:
            continue
        group = event.get("asm_group_id")
        parts = [event.get("reason"), event.get("status"), f"group {group}" if group else None]
        detail = " ".join(str(p) for p in parts if p) or None
        out.append(make(kind, event.get("email"), event, at=event.get("timestamp"), detail=detail))
    return [f for f in out if f is not None]


def postmark(body: bytes, tenant_id: str) -> list[ProviderFeedback]:
    record = _object(_json(body, "Postmark webhook"), "Postmark webhook")
    ids = _dict(record.get("Metadata"))
    named = ids.get("tenant_id")
    if named is not None and str(named) != tenant_id:
        raise InvalidEvent(
            f"the Postmark webhook's Metadata names tenant {str(named)[:100]!r}, "
            f"its credentials {tenant_id!r}"
        )
    record_type = record.get("RecordType")
    kind: FeedbackKind | None = None
    if record_type in ("Bounce", "SpamComplaint"):
        kind = POSTMARK_KINDS.get(str(record.get("Type")))
        if record_type == "SpamComplaint":
            kind = "complaint"
        detail = " ".join(str(record[k]) for k in ("Type", "Description", "Details") if record.get(k)) or None
        address, at = record.get("Email"), record.get("BouncedAt")
    elif record_type == "SubscriptionChange":
        suppress = record.get("SuppressSending")
        if not isinstance(suppress, bool):
            raise InvalidEvent("Postmark SubscriptionChange lacks a boolean SuppressSending")
        reason = str(record.get("SuppressionReason") or "")
        kind = "resubscribe" if not suppress else POSTMARK_KINDS.get(reason, "unsubscribe")
        address, at, detail = record.get("Recipient"), record.get("ChangedAt"), reason or record.get("Origin")
    elif record_type == "Delivery":
        kind, address, at = "delivered", record.get("Recipient"), record.get("DeliveredAt")
        detail = record.get("Details")
    elif record_type is None:
        raise InvalidEvent("Postmark webhook has no RecordType")
    if kind is None:
        return []
    detail = str(detail) if detail else None
    found = _feedback(kind, address, ids, tenant_id=tenant_id, provider="postmark", at=at, detail=detail)
    return [found] if found is not None else []
