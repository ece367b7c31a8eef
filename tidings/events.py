"""The events of tidings as frozen pydantic models, one per Avro record in `schemas/`.

Field names, order and optionality mirror the current `.avsc` of the same name (a unit test checks it).
Models validate what Avro cannot say: identifiers, channel and status vocabularies, JSON fields,
UTC millisecond timestamps. Vocabularies are strings on the wire, not Avro enums, so adding a channel or a
status never breaks an old reader at the Avro level; the model is where unknown words are refused.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Literal
from uuid import UUID, uuid4

import phonenumbers
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from tidings.ids import outcome_id

Channel = Literal["in_app", "push", "email", "sms", "webhook"]
CHANNELS: tuple[Channel, ...] = ("in_app", "push", "email", "sms", "webhook")
Priority = Literal["low", "normal", "high", "critical"]
Platform = Literal["apns", "fcm", "webpush"]
Engagement = Literal["seen", "read", "clicked"]
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
    "opened",
]
MAX_ID_LENGTH = 256
_CONTROL = re.compile(r"[\x00-\x1f]")
MAX_DATA_BYTES = 256 * 1024


def _utc_millis(value: datetime) -> datetime:
    """Aware timestamps in UTC, cut to milliseconds (Avro's timestamp-millis). Every timestamp the router
    builds or decodes is one already; returning it at once saves about 7 µs of the router's 400 per
    request."""
    if value.tzinfo is UTC and not value.microsecond % 1000:
        return value
    if value.tzinfo is None:
        raise ValueError("timestamps must be timezone-aware (UTC)")
    value = value.astimezone(UTC)
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


def refuse_json_constant(name: str) -> Any:
    """NaN and Infinity: Python's json reads and writes them, but they are not JSON, and a strict
    consumer of the outcome topic or a webhook receiver would choke on them."""
    raise ValueError(f"{name} is not JSON")


def _json_object(value: str) -> str:
    if len(value.encode()) > MAX_DATA_BYTES:
        raise ValueError(f"JSON is larger than {MAX_DATA_BYTES} bytes")
    try:
        parsed = json.loads(value, parse_constant=refuse_json_constant)
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"not valid JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise ValueError("must be a JSON object")
    return value


def _e164(value: str) -> str:
    try:
        number = phonenumbers.parse(value, None)
    except phonenumbers.NumberParseException as exc:
        raise ValueError(f"not an E.164 phone number: {exc}") from None
    formatted = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    if formatted != value or not phonenumbers.is_possible_number(number):
        raise ValueError(f"not an E.164 phone number (expected like {formatted})")
    return value


Millis = Annotated[datetime, AfterValidator(_utc_millis)]
Identifier = Annotated[str, AfterValidator(_identifier)]
TenantId = Annotated[str, AfterValidator(_tenant)]
JsonObject = Annotated[str, AfterValidator(_json_object)]
PhoneNumber = Annotated[str, AfterValidator(_e164)]


def utcnow() -> datetime:
    return _utc_millis(datetime.now(UTC))


class Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    def to_avro(self) -> dict[str, Any]:
        return self.model_dump()


class Event(Record):
    """The envelope every event carries; subclasses register themselves by class name."""

    registry: ClassVar[dict[str, type[Event]]] = {}

    event_id: UUID = Field(default_factory=uuid4)
    tenant_id: TenantId
    occurred_at: Millis = Field(default_factory=utcnow)
    correlation_id: str | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        Event.registry[cls.__name__] = cls

    @property
    def key(self) -> str:
        """The Kafka key: `tenant/recipient` for per-recipient events."""
        recipient = getattr(self, "recipient_id", None)
        return f"{self.tenant_id}/{recipient}" if recipient else self.tenant_id


class NotificationRequested(Event):
    notification_id: UUID
    recipient_id: Identifier
    notification_type: Identifier
    data_json: JsonObject = "{}"
    priority: Priority | None = None
    channels: list[Channel] | None = None
    scheduled_at: Millis | None = None
    expires_at: Millis | None = None
    locale: str | None = None
    recipient_overrides: dict[str, str] | None = None
    actor_id: str | None = None
    broadcast_id: UUID | None = None
    source: str | None = None
    digest_of: list[UUID] | None = None

    @property
    def data(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.data_json)
        return result


class NotificationCancelled(Event):
    notification_id: UUID
    recipient_id: Identifier
    reason: str | None = None


class RecipientUpdated(Event):
    recipient_id: Identifier
    email: str | None = Field(default=None, pattern=r"^[^@\s]+@[^@\s]+$")
    phone: PhoneNumber | None = None
    locale: str | None = None
    timezone: str | None = None
    name: str | None = None
    properties_json: JsonObject | None = None
    unset: list[str] = []


class PreferenceRule(Record):
    scope: Literal["category", "type"]
    key: Identifier
    channel: Channel | None = None
    enabled: bool


class QuietHours(Record):
    start: str = Field(pattern=r"^([01]\d|2[0-3]):[0-5]\d$")
    end: str = Field(pattern=r"^([01]\d|2[0-3]):[0-5]\d$")
    timezone: str | None = None


class PreferencesUpdated(Event):
    recipient_id: Identifier
    replace: bool = False
    muted: bool | None = None
    rules: list[PreferenceRule] = []
    quiet_hours: QuietHours | None = None
    clear_quiet_hours: bool = False
    digest: dict[str, DigestChoice] = {}


class DeviceRegistered(Event):
    recipient_id: Identifier
    device_id: Identifier
    platform: Platform
    token: str = Field(min_length=1)
    keys: dict[str, str] = {}
    app_id: str | None = None


class DeviceRemoved(Event):
    recipient_id: Identifier
    device_id: Identifier
    reason: str | None = None


class WebhookEndpointUpdated(Event):
    recipient_id: Identifier
    endpoint_id: Identifier
    url: str = Field(pattern=r"^https?://\S+$")
    secret: str = Field(pattern=r"^whsec_[A-Za-z0-9+/=]{16,}$")
    event_types: list[str] = []
    enabled: bool = True


class WebhookEndpointRemoved(Event):
    recipient_id: Identifier
    endpoint_id: Identifier
    reason: str | None = None


class ChannelTemplate(Record):
    channel: Channel
    locale: str
    subject: str | None = None
    title: str | None = None
    body: str | None = None
    html: str | None = None
    data_json: str | None = None  # a template that must render to a JSON object


class NotificationTypePublished(Event):
    notification_type: Identifier
    version: int = Field(ge=1)
    category: Identifier
    priority: Priority = "normal"
    critical: bool = False
    default_channels: list[Channel]
    templates: list[ChannelTemplate] = []
    expires_after_seconds: int | None = Field(default=None, ge=1)
    digest_json: JsonObject | None = None
    escalation_json: JsonObject | None = None
    throttle_json: JsonObject | None = None

    @property
    def key(self) -> str:
        return f"{self.tenant_id}/{self.notification_type}"


class _InboxItemEvent(Event):
    recipient_id: Identifier
    notification_id: UUID
    delivery_id: UUID


class InboxItemSeen(_InboxItemEvent):
    pass


class InboxItemRead(_InboxItemEvent):
    pass


class InboxItemArchived(_InboxItemEvent):
    pass


class NotificationOpened(_InboxItemEvent):
    channel: Channel


class NotificationClicked(_InboxItemEvent):
    channel: Channel
    url: str | None = None


class ProviderFeedback(Event):
    kind: FeedbackKind
    channel: Channel
    address: str = Field(min_length=1)
    recipient_id: str | None = None
    notification_id: UUID | None = None
    delivery_id: UUID | None = None
    provider: str | None = None
    provider_timestamp: Millis | None = None
    category: str | None = None
    detail: str | None = None


class RenderedContent(Record):
    subject: str | None = None
    title: str | None = None
    body: str | None = None
    html: str | None = None
    data_json: JsonObject | None = None


class DeliveryCommand(Event):
    delivery_id: UUID
    notification_id: UUID
    recipient_id: Identifier
    notification_type: Identifier
    category: str | None = None
    channel: Channel
    priority: Priority
    address: str = Field(min_length=1)
    address_params: dict[str, str] = {}
    content: RenderedContent
    locale: str | None = None
    template_version: int | None = None
    attempt: int = Field(default=0, ge=0)
    not_before: Millis | None = None
    expires_at: Millis | None = None
    unless: Engagement | None = None


class DeliveryOutcome(Event):
    notification_id: UUID
    delivery_id: UUID | None = None
    recipient_id: str | None = None
    channel: Channel | None = None
    status: OutcomeStatus
    reason: str | None = None
    provider: str | None = None
    provider_message_id: str | None = None
    attempt: int = Field(default=0, ge=0)
    template_version: int | None = None
    detail: str | None = None

    @property
    def key(self) -> str:
        return str(self.notification_id)

    @classmethod
    def decided(
        cls,
        notification_id: UUID,
        status: OutcomeStatus,
        reason: str | None,
        *,
        channel: Channel | None = None,
        delivery_id: UUID | None = None,
        id_reason: str | None = None,
        **fields: Any,
    ) -> DeliveryOutcome:
        """An outcome whose event id derives from what it says (`id_reason`, default `reason`, names the
        decision), so re-emitting the same decision yields the same event id."""
        return cls(
            event_id=outcome_id(
                notification_id, status, channel, delivery_id, reason if id_reason is None else id_reason
            ),
            correlation_id=str(notification_id),
            notification_id=notification_id,
            delivery_id=delivery_id,
            channel=channel,
            status=status,
            reason=reason,
            **fields,
        )

    @classmethod
    def of_command(
        cls,
        command: DeliveryCommand,
        status: OutcomeStatus,
        reason: str | None,
        *,
        id_reason: str,
        **fields: Any,
    ) -> DeliveryOutcome:
        """What became of one delivery command."""
        return cls.decided(
            command.notification_id,
            status,
            reason,
            channel=command.channel,
            delivery_id=command.delivery_id,
            id_reason=id_reason,
            tenant_id=command.tenant_id,
            recipient_id=command.recipient_id,
            template_version=command.template_version,
            **fields,
        )


Event.registry.pop("_InboxItemEvent", None)
