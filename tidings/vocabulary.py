"""The words and value checks events share: channel, priority and status vocabularies, identifiers,
UTC millisecond timestamps, JSON objects, E.164 numbers. `tidings.events` re-exports all of them.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import idna
import phonenumbers
from pydantic import AfterValidator, ValidationInfo

Channel = Literal["in_app", "push", "email", "sms", "webhook"]
CHANNELS: tuple[Channel, ...] = ("in_app", "push", "email", "sms", "webhook")
Priority = Literal["low", "normal", "high", "critical"]
Platform = Literal["apns", "fcm", "webpush"]
Engagement = Literal["seen", "read", "clicked"]
EngagementKind = Literal["seen", "read", "archived", "opened", "clicked"]
DigestChoice = Literal["off", "hourly", "daily", "weekly"]
OutcomeStatus = Literal[
    "QUEUED",
    "DEFERRED",
    "SKIPPED",
    "SENT",
    "DELIVERED",
    "RETRYING",
    "FAILED",
    "SUPPRESSED",
    "EXPIRED",
    "CANCELLED",
    "REJECTED",
]
FeedbackKind = Literal[
    "hard_bounce",
    "soft_bounce",
    "complaint",
    "unsubscribe",
    "resubscribe",
    "sms_stop",
    "sms_start",
    "token_invalid",
    "endpoint_disabled",
    "delivered",
    "undelivered",
    "opened",
]
MAX_ID_LENGTH = 256
_CONTROL = re.compile(r"[\x00-\x1f]")
INT32_MAX = 2**31 - 1
"""The largest Avro `int`: Python's encoder writes a larger one as a long, which it reads back, and
Java's and Go's readers refuse."""
MAX_DATA_BYTES = 256 * 1024
MAX_MEMBERS_PER_EVENT = 1000


DECODED = {"decoded": True}
MAX_LOCALE_LENGTH = 64
MAX_SCHEDULE_AHEAD = timedelta(days=400)
"""How far ahead `scheduled_at` may be: a year's reminder with a month to spare. The scheduler's timer
keys hold 13 digits of epoch milliseconds (until 2286), and a notification scheduled years ahead is more
likely a unit mistake (seconds for milliseconds) than a plan."""
_LOCALE = re.compile(r"[A-Za-z]{2,3}(?:[-_][A-Za-z0-9]{1,8})*")


def _made(info: ValidationInfo) -> bool:
    """True where an event is being made, False where it is decoded (`DECODED` context): checks added
    after events were written apply to new events only, so older ones still decode."""
    return not (info.context or {}).get("decoded")


def check_zone(value: str, info: ValidationInfo) -> str:
    if _made(info):
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError, OSError):
            raise ValueError(f"{value!r} is not an IANA time zone, e.g. Europe/Vienna") from None
    return value


def _locale(value: str, info: ValidationInfo) -> str:
    if _made(info) and (len(value) > MAX_LOCALE_LENGTH or not _LOCALE.fullmatch(value)):
        raise ValueError(f"{value!r} is not a locale, e.g. de-AT or en")
    return value


def check_schedule(value: datetime | None, info: ValidationInfo) -> datetime | None:
    if value is not None and _made(info) and value > utcnow() + MAX_SCHEDULE_AHEAD:
        raise ValueError(f"must be at most {MAX_SCHEDULE_AHEAD.days} days ahead")
    return value


TimeZone = Annotated[str, AfterValidator(check_zone)]
Locale = Annotated[str, AfterValidator(_locale)]


def _utc_millis(value: datetime) -> datetime:
    """Aware timestamps in UTC, cut to milliseconds (Avro's timestamp-millis). Every timestamp the router
    builds or decodes is one already; returning it at once saves about 7 µs of the router's 400 per
    request."""
    if value.tzinfo is UTC and not value.microsecond % 1000:
        return value
    if value.tzinfo is None:
        raise ValueError("timestamps must be timezone-aware (UTC)")
    try:
        value = value.astimezone(UTC)
    except OverflowError:
        raise ValueError("timestamp is outside the years 1-9999 in UTC") from None
    return value.replace(microsecond=value.microsecond // 1000 * 1000)


def _identifier(value: str) -> str:
    if not value or len(value) > MAX_ID_LENGTH:
        raise ValueError(f"must be 1..{MAX_ID_LENGTH} characters")
    if _CONTROL.search(value):
        raise ValueError("must not contain control characters")
    return value


def _tenant(value: str) -> str:
    if "/" in _identifier(value):
        raise ValueError("must not contain '/': it separates tenant and recipient in keys")
    return value


def _audience(value: str) -> str:
    if "/" in _identifier(value):
        raise ValueError("must not contain '/': it separates tenant and audience in keys")
    return value


def refuse_json_constant(name: str) -> Any:
    """NaN and Infinity: Python's json reads and writes them, but they are not JSON, and a strict
    consumer of the outcome topic or a webhook receiver would choke on them."""
    raise ValueError(f"{name} is not JSON")


def finite_float(text: str) -> float:
    """A JSON number as a float, refusing one beyond float's range (`1e400`): Python reads it as
    infinity, which it then writes as `Infinity`, not JSON, where the text was valid JSON."""
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"{text[:40]} is beyond the range of a double")
    return number


MAX_JSON_DEPTH = 64
"""JSON data nested deeper than this is refused: the router keeps a digest's items and a recipient's
properties in its stores, and pydantic neither writes nor reads JSON nested past about 200 levels, so a
request nested 250 deep (1.8 KB, valid to `json.loads`) stopped the router's commit, and one 200 deep
its restore, at every start."""


def json_depth(value: Any) -> int:
    """How deep JSON data nests: 1 for `{}`, 2 for `{"a": []}`."""
    deepest, level = 0, [(value, 1)]
    while level:
        item, depth = level.pop()
        deepest = max(deepest, depth)
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        level.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return deepest


def json_object(value: str) -> str:
    if len(value.encode()) > MAX_DATA_BYTES:
        raise ValueError(f"JSON is larger than {MAX_DATA_BYTES} bytes")
    try:
        parsed = json.loads(value, parse_constant=refuse_json_constant, parse_float=finite_float)
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"not valid JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise ValueError("must be a JSON object")
    if value.count("{") + value.count("[") > MAX_JSON_DEPTH and json_depth(parsed) > MAX_JSON_DEPTH:
        raise ValueError(f"nested deeper than {MAX_JSON_DEPTH} levels")
    if SURROGATE_ESCAPE.search(value):
        try:
            json.dumps(parsed, ensure_ascii=False).encode()
        except UnicodeEncodeError:
            raise ValueError("holds a lone UTF-16 surrogate (\\ud800-\\udfff not in a pair)") from None
    return value


SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
"""`"\\ud800"` is JSON's syntax but no character: Python reads it as a lone surrogate, which no UTF-8
encoder, PostgreSQL's jsonb or pydantic's serializer takes. It went through the API and the SDK, and the
recipients projection, folding the properties, stopped on it at every restart."""


def _e164(value: str) -> str:
    try:
        number = phonenumbers.parse(value, None)
    except phonenumbers.NumberParseException:
        raise ValueError(
            f"{value!r} is not an E.164 phone number: + and the country code, then the number, "
            "e.g. +4915112345678"
        ) from None
    formatted = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    if formatted != value or not phonenumbers.is_possible_number(number):
        raise ValueError(f"not an E.164 phone number (expected like {formatted})")
    return value


EMAIL_PATTERN = r"^[^@\s]+@[^@\s]+$"


def _webhook_secrets(value: str, info: ValidationInfo) -> str:
    """Standard Webhooks secrets, space-separated while rotating: `whsec_` and the key in base64, padded
    or not (as the `standardwebhooks` signer reads it). A key the pattern let through but base64 cannot
    decode (17 characters) failed every send to the endpoint instead of being refused here."""
    for secret in value.split(" ") if _made(info) else ():
        key = secret.removeprefix("whsec_")
        try:
            base64.b64decode(key + "=" * (-len(key) % 4), validate=True)
        except binascii.Error as exc:
            raise ValueError(f"a webhook secret is whsec_ and a base64 key: {exc}") from None
    return value


def check_overrides(
    value: dict[str, str] | None, info: ValidationInfo | None = None
) -> dict[str, str] | None:
    """A request's own addresses, checked like the recipient's contact points: an address with a space
    in it missed the suppression of the address the provider then sent to (`U1@x.com ` is `u1@x.com`).
    Not where a request is decoded (older ones still decode for rebuilds and audits): the router checks
    again when it plans, and REJECTs."""
    if info is not None and not _made(info):
        return value
    for channel, address in (value or {}).items():
        if channel == "email":
            if not re.fullmatch(EMAIL_PATTERN, address):
                raise ValueError(f"recipient_overrides email {address[:80]!r} is not an email address")
        elif channel == "sms":
            try:
                _e164(address)
            except ValueError as exc:
                raise ValueError(f"recipient_overrides sms: {exc}") from None
        else:
            raise ValueError(
                f"recipient_overrides names {channel[:40]!r}: only email and sms addresses can be given "
                "(push and in_app reach the recipient's devices and inbox, and a webhook needs an endpoint "
                "registered with its signing secret: WebhookEndpointUpdated, Client.set_webhook_endpoint)"
            )
    return value


Millis = Annotated[datetime, AfterValidator(_utc_millis)]
Identifier = Annotated[str, AfterValidator(_identifier)]
TenantId = Annotated[str, AfterValidator(_tenant)]
AudienceId = Annotated[str, AfterValidator(_audience)]
JsonObject = Annotated[str, AfterValidator(json_object)]
PhoneNumber = Annotated[str, AfterValidator(_e164)]
WebhookSecrets = Annotated[str, AfterValidator(_webhook_secrets)]


def utcnow() -> datetime:
    return _utc_millis(datetime.now(UTC))


def email_key(address: str) -> str:
    """An email address as suppressions are keyed: lower-cased, an internationalised domain in one
    Unicode form (UTS #46 mapped, as the gateways map it when they send it in IDNA: `ann@xn--bcher-kva.de`,
    `ann@Bücher.de` and a decomposed `ü` all key as `ann@bücher.de`). Providers report bounces and
    complaints for the IDNA form the gateways send: keyed as reported, they never matched the
    recipient's address, and a complainer kept getting mail."""
    lowered = address.lower()
    local, at, domain = lowered.rpartition("@")
    if not at or (domain.isascii() and "xn--" not in domain):
        return lowered
    try:
        return f"{local}@{idna.decode(idna.encode(domain, uts46=True))}"
    except idna.IDNAError:
        return lowered
