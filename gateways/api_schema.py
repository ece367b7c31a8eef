"""Consumes HTTP API bodies; produces validated request models, problem documents and read views.

The shapes of the server-side API (`gateways/api.py`) and the preference centre (`gateways/prefs.py`):
pydantic models that refuse unknown fields (a typo must not be silently ignored), RFC 9457 problem
responses, and the redacted recipient view.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, TypeVar
from uuid import UUID

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from processors.recipients import RecipientState, address_key
from tidings.events import (
    Channel,
    DigestChoice,
    EngagementKind,
    OutcomeStatus,
    Platform,
    PreferenceRule,
    Priority,
    QuietHours,
    finite_float,
    refuse_json_constant,
)

B = TypeVar("B", bound=BaseModel)
MAX_BATCH = 100
MAX_MEMBERS_PER_CALL = 10_000


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NotificationBody(Body):
    recipient: str = Field(description="The recipient's id in your system.")
    type: str = Field(description="A notification type of the catalog, e.g. order.shipped.")
    data: dict[str, Any] = Field(default={}, description="The template variables.")
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=255)
    priority: Priority | None = None
    channels: list[Channel] | None = Field(default=None, description="Only these of the type's channels.")
    scheduled_at: datetime | None = None
    expires_at: datetime | None = None
    locale: str | None = None
    to: dict[str, str] | None = Field(default=None, description="Addresses that override the recipient's.")
    actor: str | None = None


class Batch(Body):
    notifications: list[NotificationBody] = Field(min_length=1, max_length=MAX_BATCH)


class CancelBody(Body):
    recipient: str
    reason: str | None = Field(default=None, max_length=500)


class RecipientBody(Body):
    email: str | None = None
    phone: str | None = Field(default=None, description="E.164, e.g. +4915112345678.")
    locale: str | None = None
    timezone: str | None = Field(default=None, description="An IANA zone, e.g. Europe/Vienna.")
    name: str | None = None
    properties: dict[str, Any] | None = None
    unset: list[str] = Field(default=[], description="Fields to clear.")


class PreferencesBody(Body):
    replace: bool = Field(default=False, description="Replace all preferences instead of merging.")
    muted: bool | None = None
    rules: list[PreferenceRule] = []
    quiet_hours: QuietHours | None = None
    clear_quiet_hours: bool = False
    digest: dict[str, DigestChoice] = {}


class DeviceBody(Body):
    platform: Platform
    token: str = Field(min_length=1)
    keys: dict[str, str] = Field(default={}, description="Web Push: p256dh and auth.")
    app_id: str | None = None


class WebhookBody(Body):
    url: str
    secret: str = Field(description="A Standard Webhooks secret, whsec_...")
    event_types: list[str] = []
    enabled: bool = True


class DestinationBody(Body):
    url: str = Field(description="Where the tenant's outcomes are POSTed (http or https).")
    secret: str = Field(description="Standard Webhooks secret(s), whsec_..., space-separated while rotating.")
    statuses: list[OutcomeStatus] = Field(
        default=[], description="Only outcomes of these statuses; all if empty."
    )
    enabled: bool = True
    engagements: list[EngagementKind] = Field(
        default=[],
        description="Engagement to relay too (seen, read, archived, opened, clicked); none if empty.",
    )


class BroadcastBody(Body):
    audience: str = Field(description="The audience's id in your system.")
    type: str = Field(description="A notification type of the catalog.")
    data: dict[str, Any] = Field(default={}, description="The template variables, the same for every member.")
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=255)
    priority: Priority | None = None
    channels: list[Channel] | None = Field(default=None, description="Only these of the type's channels.")
    scheduled_at: datetime | None = None
    expires_at: datetime | None = None
    actor: str | None = None


class MembersBody(Body):
    add: list[str] = Field(default=[], max_length=MAX_MEMBERS_PER_CALL, description="Recipients who join.")
    remove: list[str] = Field(
        default=[], max_length=MAX_MEMBERS_PER_CALL, description="Recipients who leave (after the adds)."
    )


class LiftBody(Body):
    channel: Channel
    address: str = Field(min_length=1, max_length=2048, description="The suppressed address or token.")
    reason: str | None = Field(default=None, max_length=500, description="Kept in the feedback's detail.")


class BroadcastCancelBody(Body):
    reason: str | None = Field(default=None, max_length=500)


class Accepted(BaseModel):
    notification_id: UUID | None = None
    notification_ids: list[UUID] | None = None
    broadcast_id: UUID | None = None
    event_id: UUID | None = None
    event_ids: list[UUID] | None = None


def problem_document(status: int, title: str, detail: str | None = None, **extra: Any) -> dict[str, Any]:
    """An RFC 9457 problem document."""
    document = {"type": "about:blank", "title": title, "status": status, **extra}
    if detail is not None:
        document["detail"] = detail
    return document


def problem(status: int, title: str, detail: str | None = None, **extra: Any) -> web.Response:
    document = problem_document(status, title, detail, **extra)
    return web.json_response(document, status=status, content_type="application/problem+json")


class Problem(Exception):
    def __init__(self, response: web.Response) -> None:
        self.response = response


async def body(request: web.Request, model: type[B]) -> B:
    try:
        raw = json.loads(
            await request.read() or b"{}", parse_constant=refuse_json_constant, parse_float=finite_float
        )
    except (ValueError, RecursionError) as exc:
        raise Problem(problem(400, "Body is not JSON", str(exc)[:300])) from None
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        errors = [{"field": ".".join(map(str, e["loc"])), "message": e["msg"]} for e in exc.errors()]
        raise Problem(problem(422, "Invalid fields", errors=errors)) from None


def recipient_view(state: RecipientState) -> dict[str, Any]:
    """What a tenant's backend may read back: no push tokens, Web Push keys or webhook secrets."""
    return {
        "contacts": {f: getattr(state, f) for f in ("email", "phone", "locale", "timezone", "name")},
        "properties": state.properties,
        "preferences": {
            "muted": state.muted,
            "rules": state.rules,
            "quiet_hours": state.quiet_hours.model_dump() if state.quiet_hours else None,
            "digest": state.digest,
        },
        "devices": {
            d: {"platform": v.platform, "app_id": v.app_id, "registered_at": v.registered_at.isoformat()}
            for d, v in state.devices.items()
        },
        "webhooks": {
            e: {"url": v.url, "event_types": v.event_types, "enabled": v.enabled}
            for e, v in state.webhooks.items()
        },
        "suppressions": visible_suppressions(state),
        "unsubscribed": {k: v.isoformat() for k, v in state.unsubscribed_categories.items()},
    }


def visible_suppressions(state: RecipientState) -> dict[str, Any]:
    """Suppressions by address; a dead push token is named by the device that holds it (or left out
    when none does), as the view never shows tokens."""
    holders = {address_key("push", d.token): f"push:device/{i}" for i, d in state.devices.items()}
    shown: dict[str, Any] = {}
    for key, suppression in state.suppressions.items():
        name = holders.get(key) if key.startswith("push:") else key
        if name is not None:
            shown[name] = suppression.model_dump(mode="json")
    return shown


def jsonable(row: dict[str, Any]) -> dict[str, Any]:
    return {
        k: v.isoformat() if isinstance(v, datetime) else str(v) if isinstance(v, UUID) else v
        for k, v in row.items()
        if k != "status_rank"
    }
