"""The events of tidings as frozen pydantic models, one per Avro record in `schemas/`.

Field names, order and optionality mirror the current `.avsc` of the same name (a unit test checks it).
Models validate what Avro cannot say: identifiers, channel and status vocabularies, JSON fields,
UTC millisecond timestamps. Vocabularies are strings on the wire, not Avro enums, so adding a channel or a
status never breaks an old reader at the Avro level; the model is where unknown words are refused.
The envelope (`tidings.envelope`) and the delivery events (`tidings.deliveries`) are re-exported here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, TypeVar
from uuid import UUID

from pydantic import Field, ValidationError, ValidationInfo, field_validator

from tidings.deliveries import DeliveryCommand, DeliveryOutcome, RenderedContent
from tidings.envelope import Event, Record
from tidings.errors import InvalidEvent
from tidings.vocabulary import (
    CHANNELS,
    EMAIL_PATTERN,
    INT32_MAX,
    MAX_DATA_BYTES,
    MAX_ID_LENGTH,
    MAX_MEMBERS_PER_EVENT,
    AudienceId,
    Channel,
    DigestChoice,
    Engagement,
    EngagementKind,
    FeedbackKind,
    Identifier,
    JsonObject,
    Locale,
    Millis,
    OutcomeStatus,
    PhoneNumber,
    Platform,
    Priority,
    TenantId,
    TimeZone,
    WebhookSecrets,
    check_overrides,
    check_schedule,
    check_zone,
    finite_float,
    refuse_json_constant,
    utcnow,
)

__all__ = [
    "CHANNELS",
    "MAX_DATA_BYTES",
    "MAX_ID_LENGTH",
    "MAX_MEMBERS_PER_EVENT",
    "AudienceId",
    "AudienceMembersAdded",
    "AudienceMembersRemoved",
    "BroadcastCancelled",
    "BroadcastRequested",
    "Channel",
    "ChannelTemplate",
    "DeliveryCommand",
    "DeliveryOutcome",
    "DestinationRemoved",
    "DestinationUpdated",
    "DeviceRegistered",
    "DeviceRemoved",
    "DigestChoice",
    "Engagement",
    "EngagementKind",
    "Event",
    "FeedbackKind",
    "Identifier",
    "InboxItemArchived",
    "InboxItemMarkedUnread",
    "InboxItemRead",
    "InboxItemSeen",
    "InboxItemUnarchived",
    "JsonObject",
    "Locale",
    "Millis",
    "NotificationCancelled",
    "NotificationClicked",
    "NotificationOpened",
    "NotificationRequested",
    "NotificationTypePublished",
    "OutcomeStatus",
    "PhoneNumber",
    "Platform",
    "PreferenceRule",
    "PreferencesUpdated",
    "Priority",
    "ProviderFeedback",
    "QuietHours",
    "RecipientErased",
    "RecipientUpdated",
    "Record",
    "RenderedContent",
    "TenantId",
    "TimeZone",
    "WebhookEndpointRemoved",
    "WebhookEndpointUpdated",
    "data_json_of",
    "finite_float",
    "refuse_json_constant",
    "utcnow",
    "validated",
]


UNIX_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
FEEDBACK_UNTIL = datetime(3000, 1, 1, tzinfo=UTC)
"""Feedback is dated when we received it; outside 1970 to this, its `occurred_at` is not a time we
received anything, and the folds' arithmetic on it overflowed at the ends of the calendar."""


class NotificationRequested(Event):
    notification_id: UUID
    recipient_id: Identifier
    notification_type: Identifier
    data_json: JsonObject = "{}"
    priority: Priority | None = None
    channels: list[Channel] | None = None
    scheduled_at: Millis | None = None
    expires_at: Millis | None = None
    locale: Locale | None = None
    recipient_overrides: dict[str, str] | None = None
    actor_id: str | None = None
    broadcast_id: UUID | None = None
    source: str | None = None
    digest_of: list[UUID] | None = None

    @field_validator("scheduled_at")
    @classmethod
    def _not_too_far(cls, value: datetime | None, info: ValidationInfo) -> datetime | None:
        return check_schedule(value, info)

    @field_validator("recipient_overrides")
    @classmethod
    def _addresses(cls, value: dict[str, str] | None, info: ValidationInfo) -> dict[str, str] | None:
        return check_overrides(value, info)

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
    email: str | None = Field(default=None, pattern=EMAIL_PATTERN)
    phone: PhoneNumber | None = None
    locale: Locale | None = None
    timezone: TimeZone | None = None
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

    @field_validator("quiet_hours")
    @classmethod
    def _quiet_zone(cls, value: QuietHours | None, info: ValidationInfo) -> QuietHours | None:
        """Checked here, not on QuietHours: recipients' stored states hold QuietHours written before."""
        if value is not None and value.timezone is not None:
            check_zone(value.timezone, info)
        return value


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
    secret: WebhookSecrets = Field(pattern=r"^whsec_[A-Za-z0-9+/=]{16,}$")
    event_types: list[str] = []
    enabled: bool = True


class WebhookEndpointRemoved(Event):
    recipient_id: Identifier
    endpoint_id: Identifier
    reason: str | None = None


class RecipientErased(Event):
    recipient_id: Identifier
    reason: str | None = Field(default=None, max_length=500)


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
    version: int = Field(ge=1, le=INT32_MAX)
    category: Identifier
    priority: Priority = "normal"
    critical: bool = False
    default_channels: list[Channel]
    templates: list[ChannelTemplate] = []
    expires_after_seconds: int | None = Field(default=None, ge=1)
    digest_json: JsonObject | None = None
    escalation_json: JsonObject | None = None
    throttle_json: JsonObject | None = None
    conditions_json: JsonObject | None = None

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


class InboxItemMarkedUnread(_InboxItemEvent):
    pass


class InboxItemUnarchived(_InboxItemEvent):
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

    @field_validator("occurred_at")
    @classmethod
    def _received(cls, value: datetime) -> datetime:
        if not UNIX_EPOCH <= value < FEEDBACK_UNTIL:
            raise ValueError(f"feedback dated {value.isoformat()}: received between 1970 and 3000")
        return value

    @property
    def at(self) -> datetime:
        """When the feedback happened, by which suppressions fold it: the provider's time, unless that
        is before 1970 or over a day after we received it (a provider clock gone wrong, or a callback
        dated 9999-12-31): then when we received it. The folds add and subtract windows and a
        millisecond to it; at the ends of the calendar that overflowed, and every later change to the
        recipient's address was dead-lettered."""
        stated = self.provider_timestamp
        if stated is None or stated < UNIX_EPOCH or stated - self.occurred_at > timedelta(days=1):
            return self.occurred_at
        return stated


class _AudienceEvent(Event):
    audience_id: AudienceId

    @property
    def key(self) -> str:
        """`tenant/audience`: an audience's membership and broadcasts stay in one ordered partition."""
        return f"{self.tenant_id}/{self.audience_id}"


class _MembersEvent(_AudienceEvent):
    recipient_ids: list[Identifier] = Field(min_length=1, max_length=MAX_MEMBERS_PER_EVENT)


class AudienceMembersAdded(_MembersEvent):
    pass


class AudienceMembersRemoved(_MembersEvent):
    pass


class BroadcastRequested(_AudienceEvent):
    broadcast_id: UUID
    notification_type: Identifier
    data_json: JsonObject = "{}"
    priority: Priority | None = None
    channels: list[Channel] | None = None
    scheduled_at: Millis | None = None
    expires_at: Millis | None = None
    actor_id: str | None = None
    source: str | None = None

    @field_validator("scheduled_at")
    @classmethod
    def _not_too_far(cls, value: datetime | None, info: ValidationInfo) -> datetime | None:
        """As for its members' requests, which the audience processor could not make otherwise."""
        return check_schedule(value, info)


class BroadcastCancelled(_AudienceEvent):
    broadcast_id: UUID
    reason: str | None = None


RELAY_RECIPIENT = "tidings:destination:"
"""The recipient id of the relay's webhook deliveries to a destination is this and the destination id."""


class _DestinationEvent(Event):
    destination_id: Identifier = Field(max_length=MAX_ID_LENGTH - len(RELAY_RECIPIENT))
    """At most 236 characters, so the relay's recipient id for it is an identifier: a longer one was
    taken, and every outcome for the tenant was then dead-lettered, its other destinations' too."""

    @property
    def key(self) -> str:
        return f"{self.tenant_id}/{self.destination_id}"


class DestinationUpdated(_DestinationEvent):
    url: str = Field(pattern=r"^https?://\S+$")
    secret: WebhookSecrets = Field(pattern=r"^whsec_[A-Za-z0-9+/=]{16,}( whsec_[A-Za-z0-9+/=]{16,})*$")
    statuses: list[OutcomeStatus] = []
    enabled: bool = True
    engagements: list[EngagementKind] = []


class DestinationRemoved(_DestinationEvent):
    pass


for _abstract in ("_InboxItemEvent", "_AudienceEvent", "_MembersEvent", "_DestinationEvent"):
    Event.registry.pop(_abstract, None)


E = TypeVar("E", bound=Event)


def validated(model: type[E], **fields: Any) -> E:
    """`model(**fields)`, or InvalidEvent naming every field that is wrong."""
    try:
        return model(**fields)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise InvalidEvent(f"invalid {model.__name__}: {problems}") from None


def data_json_of(data: Mapping[str, Any] | None) -> str:
    """`data` as the compact JSON object text of a `data_json` field. Keys must be strings: json writes
    `{1: "a", "1": "b"}` as an object with the key "1" twice, whose reader keeps one of them."""
    try:
        _string_keys(data or {})
        return json.dumps(dict(data or {}), separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise InvalidEvent(f"data is not JSON-serialisable: {exc}") from None


def _string_keys(value: Any) -> None:
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"keys must be strings, not {type(key).__name__} ({key!r})")
            _string_keys(item)
    elif isinstance(value, list | tuple):
        for item in value:
            _string_keys(item)
