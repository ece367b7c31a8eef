"""The delivery events: the command a channel gateway carries out, and what became of a notification."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from pydantic import Field

from tidings.envelope import Event, Record
from tidings.ids import outcome_id
from tidings.vocabulary import (
    INT32_MAX,
    Channel,
    Engagement,
    Identifier,
    JsonObject,
    Millis,
    OutcomeStatus,
    Priority,
)


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
    template_version: int | None = Field(default=None, le=INT32_MAX)
    attempt: int = Field(default=0, ge=0, le=INT32_MAX)
    not_before: Millis | None = None
    expires_at: Millis | None = None
    unless: Engagement | None = None
    requested_at: Millis | None = None

    @property
    def request_time(self) -> datetime:
        """When the request was made; a command from before v3 only knows when it was planned."""
        return self.requested_at or self.occurred_at


class DeliveryOutcome(Event):
    notification_id: UUID
    delivery_id: UUID | None = None
    recipient_id: str | None = None
    channel: Channel | None = None
    status: OutcomeStatus
    reason: str | None = None
    provider: str | None = None
    provider_message_id: str | None = None
    attempt: int = Field(default=0, ge=0, le=INT32_MAX)
    template_version: int | None = Field(default=None, le=INT32_MAX)
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
