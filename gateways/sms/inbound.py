"""Turns inbound SMS webhooks into opt-out feedback (pure: request parts in, ProviderFeedback out).

A recipient who texts a keyword back opts out of (or into) every SMS from our numbers: the whole
message, trimmed and case-insensitive, STOP, STOPALL, UNSUBSCRIBE, CANCEL, END, QUIT, OPTOUT or REVOKE
is `sms_stop`; START, YES, UNSTOP or OPTIN is `sms_start` (the carriers' and Twilio's default words). Any
other message yields nothing. The feedback's address is the sender in E.164. Carriers make honouring STOP
mandatory, so the vendors also block further sends themselves (Twilio 21610, Vonage status 7). Inbound
messages carry no recipient id: the edge produces the feedback once per recipient holding the number
(`gateways/sms/holders.py`), so the router's per-recipient state takes it too.

* `twilio`: the form-encoded Messaging webhook. `X-Twilio-Signature` is verified first: base64
  HMAC-SHA1, keyed with the auth token, over the webhook URL exactly as configured in Twilio followed by
  every POST parameter's name and value, sorted by name (then value). Like Twilio's own validator, the
  URL is also tried without its port and with the scheme's default port, because Twilio's signing is
  inconsistent there. An `OptOutType` parameter (Advanced Opt-Out: Twilio matched the message against
  the messaging service's own keywords, in any language) decides over our keyword list.
* `vonage`: the inbound-message webhook (`msisdn`, `text`, ...) as the account's webhook method sends it:
  a query string (GET), a form or a JSON body (POST; `vonage_params_of`). When `signature_secret` is given,
  the signed-webhook `sig` is verified with the account's method: `md5hash` (MD5 of the sorted
  `&name=value` string followed by the secret, `&` and `=` in values replaced by `_`) or an HMAC (`md5`,
  `sha1`, `sha256`, `sha512`) of that string keyed with the secret. Vonage signs only when support has
  enabled signed webhooks; without a secret the caller must authenticate the request itself (basic
  auth in the webhook URL, or the source address). The parts of a concatenated message (`concat`) are
  never a whole keyword message and yield nothing.

Replay: Twilio signatures carry no time, so a captured request verifies forever; for Vonage `max_age`
can refuse a `timestamp` too far from now, but it is off by default because a refused STOP that the
vendor retries with its original timestamp would be lost, and losing an opt-out is the worse failure.
Bad signatures and malformed bodies raise InvalidEvent.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from pydantic import TypeAdapter, ValidationError

from tidings.errors import InvalidEvent
from tidings.events import FeedbackKind, PhoneNumber, ProviderFeedback

STOP = frozenset({"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "OPTOUT", "REVOKE"})
START = frozenset({"START", "YES", "UNSTOP", "OPTIN"})
TWILIO_OPT_OUT: dict[str, FeedbackKind] = {"STOP": "sms_stop", "START": "sms_start"}
DEFAULT_PORTS = {"https": 443, "http": 80}
E164 = TypeAdapter(PhoneNumber)
VonageMethod = Literal["md5hash", "md5", "sha1", "sha256", "sha512"]


def keyword_kind(text: str) -> FeedbackKind | None:
    word = text.strip().upper()
    if word in STOP:
        return "sms_stop"
    if word in START:
        return "sms_start"
    return None


def sms_feedback(
    kind: FeedbackKind, sender: str, *, tenant_id: str, provider: str, at: datetime | None, detail: str
) -> ProviderFeedback:
    try:
        address = E164.validate_python(sender)
    except ValidationError:
        raise InvalidEvent(f"{provider} {kind} from {sender!r}, which is not an E.164 number") from None
    return ProviderFeedback(
        tenant_id=tenant_id,
        kind=kind,
        channel="sms",
        address=address,
        provider=provider,
        provider_timestamp=at,
        detail=detail[:500],
    )


def twilio_signature(url: str, params: Iterable[tuple[str, str]], auth_token: str) -> str:
    data = url + "".join(name + value for name, value in sorted(set(params)))
    digest = hmac.new(auth_token.encode(), data.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def _url_variants(url: str) -> set[str]:
    parts = urlsplit(url)
    userinfo, _, _ = parts.netloc.rpartition("@")
    prefix = f"{userinfo}@" if userinfo else ""
    host = f"[{parts.hostname}]" if parts.hostname and ":" in parts.hostname else parts.hostname or ""
    port = parts.port or DEFAULT_PORTS.get(parts.scheme)
    with_port = f"{prefix}{host}:{port}" if port else f"{prefix}{host}"
    return {
        url,
        urlunsplit(parts._replace(netloc=prefix + host)),
        urlunsplit(parts._replace(netloc=with_port)),
    }


def verified_twilio_form(body: bytes, *, url: str, signature: str | None, auth_token: str) -> dict[str, str]:
    """The parameters of a Twilio webhook whose signature verifies; raises InvalidEvent otherwise.
    `url` is the webhook URL as configured in Twilio (scheme, host, path and query as Twilio called it,
    which behind a proxy is not the URL the server saw); `signature` the X-Twilio-Signature header."""
    try:
        params = parse_qsl(body.decode(), keep_blank_values=True, strict_parsing=bool(body))
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidEvent(f"Twilio webhook is not a form body: {exc}") from None
    if not signature:
        raise InvalidEvent("Twilio webhook has no X-Twilio-Signature")
    try:
        matched = signature.isascii() and any(
            hmac.compare_digest(twilio_signature(u, params, auth_token).encode(), signature.encode())
            for u in _url_variants(url)
        )
    except UnicodeEncodeError:
        matched = False
    if not matched:
        raise InvalidEvent("Twilio webhook signature does not match")
    return dict(params)


def twilio(
    body: bytes, *, url: str, signature: str | None, auth_token: str, tenant_id: str
) -> list[ProviderFeedback]:
    fields = verified_twilio_form(body, url=url, signature=signature, auth_token=auth_token)
    text = fields.get("Body", "")
    opt_out = fields.get("OptOutType", "").upper()
    kind = TWILIO_OPT_OUT.get(opt_out) if opt_out else keyword_kind(text)
    if kind is None:
        return []
    detail = f"{opt_out or text.strip().upper()} from MessageSid {fields.get('MessageSid')}"
    sender = fields.get("From", "")
    return [sms_feedback(kind, sender, tenant_id=tenant_id, provider="twilio", at=None, detail=detail)]


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(value, separators=(",", ":"))


def vonage_signature(params: Mapping[str, str], secret: str, method: VonageMethod = "md5hash") -> str:
    data = "".join(
        f"&{name}={value.replace('&', '_').replace('=', '_')}"
        for name, value in sorted(params.items())
        if name != "sig"
    )
    if method == "md5hash":
        return hashlib.md5((data + secret).encode()).hexdigest()
    return hmac.new(secret.encode(), data.encode(), method).hexdigest()


def vonage_time(value: str) -> datetime | None:
    try:
        return datetime.strptime(value, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
    except ValueError:
        return None


def vonage(
    body: bytes,
    *,
    tenant_id: str,
    signature_secret: str | None = None,
    signature_method: VonageMethod = "md5hash",
    max_age: float | None = None,
    now: float | None = None,
    query: Mapping[str, str] | None = None,
    content_type: str = "application/json",
) -> list[ProviderFeedback]:
    """`query` and `content_type` are the request's: only the JSON method was read, so an account set to
    GET or form POST (Vonage's default) had every STOP refused, and after a day of retries lost."""
    params = vonage_params_of(query or {}, body, content_type, "Vonage inbound message")
    if signature_secret is not None:
        verify_vonage(params, signature_secret, signature_method, max_age, now)
    if params.get("concat") == "true":
        return []
    kind = keyword_kind(params.get("text", ""))
    if kind is None:
        return []
    detail = f"{params['text'].strip().upper()} from messageId {params.get('messageId')}"
    at = vonage_time(params.get("message-timestamp", ""))
    sender = "+" + params.get("msisdn", "").removeprefix("+")
    return [sms_feedback(kind, sender, tenant_id=tenant_id, provider="vonage", at=at, detail=detail)]


def vonage_params_of(
    query: Mapping[str, str], body: bytes, content_type: str, what: str = "Vonage delivery receipt"
) -> dict[str, str]:
    """A Vonage webhook's parameters, wherever the account's webhook method put them."""
    if not body:
        if not query:
            raise InvalidEvent(f"{what} has no parameters (no body, no query string)")
        return dict(query)
    if content_type == "application/x-www-form-urlencoded":
        try:
            return dict(parse_qsl(body.decode(), keep_blank_values=True, strict_parsing=True))
        except (UnicodeDecodeError, ValueError) as exc:
            raise InvalidEvent(f"{what} is not a form body: {exc}") from None
    return vonage_params(body, what)


def vonage_params(body: bytes, what: str) -> dict[str, str]:
    """A Vonage webhook's JSON object as the strings its signature is computed over."""
    try:
        record = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise InvalidEvent(f"{what} is not JSON: {exc}") from None
    if not isinstance(record, dict):
        raise InvalidEvent(f"{what} is not a JSON object")
    return {str(k): _text(v) for k, v in record.items()}


def verify_vonage(
    params: Mapping[str, str],
    secret: str,
    method: VonageMethod,
    max_age: float | None,
    now: float | None,
    what: str = "Vonage inbound message",
) -> None:
    signature = params.get("sig", "")
    if not signature:
        raise InvalidEvent(f"{what} is not signed (no sig)")
    try:
        expected = vonage_signature(params, secret, method)
        matched = signature.isascii() and hmac.compare_digest(expected.encode(), signature.lower().encode())
    except UnicodeEncodeError:
        matched = False
    if not matched:
        raise InvalidEvent(f"{what} signature does not match")
    if max_age is not None:
        try:
            skew = abs((time.time() if now is None else now) - float(params.get("timestamp", "")))
        except ValueError:
            raise InvalidEvent(f"{what} timestamp is not a number") from None
        if skew > max_age:
            raise InvalidEvent(f"{what} timestamp is {skew:.0f}s away from now")
