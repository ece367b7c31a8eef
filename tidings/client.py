"""Produces NotificationRequested and other events to Kafka: the producer SDK.

Example:

    with Client() as client:
        notification_id = client.send(tenant="acme", recipient="u-42", type="order.shipped",
                                      data={"order": "A-1001"})
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, Required, TypedDict, Unpack
from uuid import UUID

from tidings.broadcasts import BroadcastFields, broadcast_request, membership
from tidings.codec import Codec, default_codec
from tidings.config import Settings
from tidings.config import settings as default_settings
from tidings.erasure import erasure
from tidings.errors import InvalidEvent, TidingsError
from tidings.events import (
    BroadcastCancelled,
    DestinationRemoved,
    DestinationUpdated,
    DeviceRegistered,
    DeviceRemoved,
    Event,
    NotificationCancelled,
    NotificationRequested,
    PreferencesUpdated,
    RecipientUpdated,
    WebhookEndpointUpdated,
    data_json_of,
    validated,
)
from tidings.ids import chosen_id, notification_id_for
from tidings.kafka import EventProducer, Output
from tidings.kafka.producer import closed_after
from tidings.kafka.records import size_checked
from tidings.topics import registry


class RequestFields(TypedDict, total=False):
    """What a notification request can say (`Client.send`, `notification_request`)."""

    tenant: Required[str]
    recipient: Required[str]
    type: Required[str]
    data: Mapping[str, Any] | None
    notification_id: UUID | str | None
    idempotency_key: str | None
    priority: str | None
    channels: Sequence[str] | None
    scheduled_at: datetime | None
    expires_at: datetime | None
    locale: str | None
    to: Mapping[str, str] | None
    actor: str | None


def notification_request(
    *, source: str | None = None, **fields: Unpack[RequestFields]
) -> NotificationRequested:
    """A validated request; its id is a new UUIDv7 unless given or derived from `idempotency_key`."""
    tenant = fields["tenant"]
    nid = chosen_id(
        "notification_id",
        fields.get("notification_id"),
        fields.get("idempotency_key"),
        lambda key: notification_id_for(tenant, key),
    )
    data_json = data_json_of(fields.get("data"))
    channels, to = fields.get("channels"), fields.get("to")
    return validated(
        NotificationRequested,
        tenant_id=tenant,
        notification_id=nid,
        correlation_id=str(nid),
        recipient_id=fields["recipient"],
        notification_type=fields["type"],
        data_json=data_json,
        priority=fields.get("priority"),
        channels=list(channels) if channels is not None else None,
        scheduled_at=fields.get("scheduled_at"),
        expires_at=fields.get("expires_at"),
        locale=fields.get("locale"),
        recipient_overrides=dict(to) if to else None,
        actor_id=fields.get("actor"),
        source=source,
    )


def recipient_update(*, tenant: str, recipient: str, **fields: Any) -> RecipientUpdated:
    """Contact points: email, phone (E.164), locale, timezone, name, properties (dict), unset."""
    if "properties" in fields:
        properties = fields.pop("properties")
        try:
            fields["properties_json"] = (
                json.dumps(properties, allow_nan=False) if properties is not None else None
            )
        except (TypeError, ValueError) as exc:
            raise InvalidEvent(f"properties are not JSON-serialisable: {exc}") from None
    return validated(RecipientUpdated, tenant_id=tenant, recipient_id=recipient, **fields)


def home_topics(settings: Settings) -> dict[str, str]:
    """The topic of every record that has exactly one (from the topic registry)."""
    homes: dict[str, list[str]] = {}
    for spec in registry(settings):
        for record in spec.records:
            homes.setdefault(record, []).append(spec.name)
    return {record: names[0] for record, names in homes.items() if len(names) == 1}


TENANT_KEYS = {"inbox": "tidings inbox token", "postmark": "tidings postmark webhook"}


def tenant_key(master_secret: str, purpose: str, tenant: str) -> str:
    """A tenant's own credential for `purpose` (a key of TENANT_KEYS), derived from one of the edge's
    secrets and the tenant (`tidings tenant-key TENANT --for PURPOSE` prints it): each tenant holds
    only its own, and what it signs or presents is refused for any other tenant."""
    message = TENANT_KEYS[purpose].encode() + b"\x00" + tenant.encode()
    digest = hmac.new(master_secret.encode(), message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def inbox_signing_key(master_secret: str, tenant: str) -> str:
    """The key a tenant's backend signs its end users' inbox tokens with (from
    `TIDINGS_EDGE_INBOX_JWT_SECRET`)."""
    return tenant_key(master_secret, "inbox", tenant)


def inbox_token(signing_key: str, *, tenant: str, recipient: str, ttl_seconds: int = 3600) -> str:
    """An end user's HS256 token for the inbox, the WebSocket and the preference centre."""
    import jwt

    claims = {"tenant": tenant, "sub": recipient, "exp": int(time.time()) + ttl_seconds}
    return jwt.encode(claims, signing_key, algorithm="HS256")


class Client:
    """Sends events with an idempotent producer. `send()` waits for the broker's acknowledgement unless
    `wait=False`; then call `flush()` to wait for everything sent so far."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        source: str | None = None,
        codec: Codec | None = None,
        timeout: float = 30.0,
    ) -> None:
        """`timeout`: how long a waited send, `flush()` and `close()` wait for the broker's
        acknowledgement before `KafkaUnavailable`."""
        self.timeout = timeout
        self.settings = settings or default_settings()
        self.source = source
        self.codec = codec or default_codec()
        self._producer = EventProducer(self.settings)
        self._topics = home_topics(self.settings)

    def send(self, *, wait: bool = True, **fields: Unpack[RequestFields]) -> UUID:
        """Request a notification (`RequestFields`: tenant, recipient, type, data, ...); returns its id
        (a new UUIDv7 unless given or derived from `idempotency_key`). Sending the same id twice is
        harmless: the router drops the duplicate. A failed send's error carries the id
        (`notification_id`): retry with it, and a send that did land after all is not sent twice."""
        event = notification_request(source=self.source, **fields)
        try:
            self.publish(event, wait=wait)
        except TidingsError as exc:
            exc.notification_id = event.notification_id
            raise
        return event.notification_id

    def cancel(
        self,
        *,
        tenant: str,
        recipient: str,
        notification_id: UUID | str,
        reason: str | None = None,
        wait: bool = True,
    ) -> None:
        nid = UUID(str(notification_id))
        self.publish(
            validated(
                NotificationCancelled,
                tenant_id=tenant,
                notification_id=nid,
                correlation_id=str(nid),
                recipient_id=recipient,
                reason=reason,
            ),
            wait=wait,
        )

    def broadcast(self, *, wait: bool = True, **fields: Unpack[BroadcastFields]) -> UUID:
        """Request one notification to every current member of an audience (`BroadcastFields`);
        returns the broadcast id. Each member's notification id is uuid5(broadcast id, recipient). A
        failed broadcast's error carries the id (`broadcast_id`): retry with it (`broadcast_id=`), or a
        broadcast that landed after all is sent to every member twice."""
        event = broadcast_request(source=self.source, **fields)
        try:
            self.publish(event, wait=wait)
        except TidingsError as exc:
            exc.broadcast_id = event.broadcast_id
            raise
        return event.broadcast_id

    def cancel_broadcast(
        self,
        *,
        tenant: str,
        audience: str,
        broadcast_id: UUID | str,
        reason: str | None = None,
        wait: bool = True,
    ) -> None:
        bid = UUID(str(broadcast_id))
        self.publish(
            validated(
                BroadcastCancelled,
                tenant_id=tenant,
                correlation_id=str(bid),
                audience_id=audience,
                broadcast_id=bid,
                reason=reason,
            ),
            wait=wait,
        )

    def add_members(
        self, *, tenant: str, audience: str, recipients: Sequence[str], wait: bool = True
    ) -> None:
        self._publish_all(membership(tenant=tenant, audience=audience, recipients=recipients), wait=wait)

    def remove_members(
        self, *, tenant: str, audience: str, recipients: Sequence[str], wait: bool = True
    ) -> None:
        self._publish_all(
            membership(tenant=tenant, audience=audience, recipients=recipients, remove=True), wait=wait
        )

    def update_recipient(self, *, tenant: str, recipient: str, wait: bool = True, **fields: Any) -> None:
        """Patch contact points: email, phone (E.164), locale, timezone, name, properties (dict), unset."""
        self.publish(recipient_update(tenant=tenant, recipient=recipient, **fields), wait=wait)

    def update_preferences(self, *, tenant: str, recipient: str, wait: bool = True, **fields: Any) -> None:
        """Merge (or `replace`) preferences: muted, rules, quiet_hours, clear_quiet_hours, digest."""
        self.publish(
            validated(PreferencesUpdated, tenant_id=tenant, recipient_id=recipient, **fields), wait=wait
        )

    def register_device(
        self,
        *,
        tenant: str,
        recipient: str,
        device_id: str,
        platform: str,
        token: str,
        keys: Mapping[str, str] | None = None,
        app_id: str | None = None,
        wait: bool = True,
    ) -> None:
        self.publish(
            validated(
                DeviceRegistered,
                tenant_id=tenant,
                recipient_id=recipient,
                device_id=device_id,
                platform=platform,
                token=token,
                keys=dict(keys or {}),
                app_id=app_id,
            ),
            wait=wait,
        )

    def remove_device(self, *, tenant: str, recipient: str, device_id: str, wait: bool = True) -> None:
        self.publish(
            validated(DeviceRemoved, tenant_id=tenant, recipient_id=recipient, device_id=device_id),
            wait=wait,
        )

    def erase_recipient(
        self,
        *,
        tenant: str,
        recipient: str,
        reason: str | None = None,
        audiences: Sequence[str] = (),
        wait: bool = True,
    ) -> None:
        """Forget a recipient (GDPR Art. 17): out of `audiences` (the ones it is in; the API and the CLI
        look them up in the audiences projection), acknowledged before `RecipientErased` is produced.
        What this erases and what it keeps: docs/architecture.md, "Erasure and export"."""
        removals, erased = erasure(tenant=tenant, recipient=recipient, audiences=audiences, reason=reason)
        self._publish_all(removals, wait=True)
        self.publish(erased, wait=wait)

    def set_webhook_endpoint(
        self,
        *,
        tenant: str,
        recipient: str,
        endpoint_id: str,
        url: str,
        secret: str,
        event_types: Sequence[str] = (),
        enabled: bool = True,
        wait: bool = True,
    ) -> None:
        """Create or change an endpoint; `secret` is a Standard Webhooks `whsec_...` secret."""
        self.publish(
            validated(
                WebhookEndpointUpdated,
                tenant_id=tenant,
                recipient_id=recipient,
                endpoint_id=endpoint_id,
                url=url,
                secret=secret,
                event_types=list(event_types),
                enabled=enabled,
            ),
            wait=wait,
        )

    def set_destination(
        self,
        *,
        tenant: str,
        destination_id: str,
        url: str,
        secret: str,
        statuses: Sequence[str] = (),
        engagements: Sequence[str] = (),
        enabled: bool = True,
        wait: bool = True,
    ) -> None:
        """Create or change a tenant's outcome destination: its outcomes (of `statuses`, default all) and
        the engagement of `engagements` (seen, read, archived, opened, clicked; default none) are POSTed
        to `url` as Standard Webhooks signed with `secret` (`whsec_...`; `tidings run relay`)."""
        self.publish(
            validated(
                DestinationUpdated,
                tenant_id=tenant,
                destination_id=destination_id,
                url=url,
                secret=secret,
                statuses=list(statuses),
                engagements=list(engagements),
                enabled=enabled,
            ),
            wait=wait,
        )

    def remove_destination(self, *, tenant: str, destination_id: str, wait: bool = True) -> None:
        self.publish(
            validated(DestinationRemoved, tenant_id=tenant, destination_id=destination_id), wait=wait
        )

    def publish(self, event: Event, *, topic: str | None = None, wait: bool = True) -> None:
        """Produce any event to its topic (from the topic registry unless given)."""
        self._publish_all([event], topic=topic, wait=wait)

    def _publish_all(self, events: Iterable[Event], *, topic: str | None = None, wait: bool) -> None:
        """With `wait`, until each is acknowledged, raising only their own failures: a `flush()` here
        handed out and cleared the failures of records sent before without waiting, whose own `flush()`
        then passed (the refused record lost without a word)."""
        outputs = []
        for event in events:
            name = type(event).__name__
            target = topic or self._topics.get(name)
            if target is None:
                raise InvalidEvent(f"{name} goes to several topics; pass topic=")
            outputs.append(Output.event(target, event, codec=self.codec))
        deliveries = [self._producer.produce(out, waited=wait) for out in size_checked(outputs)]
        for delivery in deliveries if wait else ():
            self._producer.wait(delivery, self.timeout)

    def flush(self, timeout: float | None = None) -> None:
        self._producer.flush(self.timeout if timeout is None else timeout)

    def close(self) -> None:
        self._producer.close(self.timeout)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        """Closing after a failure keeps that failure: a flush timing out on the way out replaced the
        `KafkaUnavailable` naming the notification id, so a retry without `--id` requested it twice."""
        closed_after(self.close, exc, "client")
