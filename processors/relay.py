"""Consumes notifications.outcomes, .engagement, .feedback and the tenants' destinations
(notifications.destinations); produces a webhook DeliveryCommand per outcome or engagement and matching
destination, and a destination disabled when the gateway gives up on its endpoint, exactly once.

Outcome destinations are the tenant-level answer to "tell my systems what happened": each tenant can
register http(s) endpoints (`DestinationUpdated`: url, `whsec_` secret, the statuses it wants) and receives
its outcomes there as Standard Webhooks events, `{"type": "delivery.sent", "timestamp": ..., "data":
{...}}`. The relay does not send anything itself: it turns each outcome into an ordinary command on
`notifications.delivery.webhook`, so the webhook gateway delivers it with everything it already does
(signature, SSRF guard, retry tiers, circuit breaker, endpoint disabling, DLQ, dedupe on the
delivery id). Ids are derived (notification id = uuid5(outcome event id, destination)), so a replayed
outcome yields the same delivery id and the receiver's `webhook-id` dedupes it.

The gateway reports on these deliveries like on any other, on the outcomes topic; their recipient id is
`tidings:destination:<id>` (`RELAY_RECIPIENT`), and the relay never relays an outcome about such a
recipient, so it cannot feed on itself. Recipient ids starting with `tidings:` are reserved for this.
When the gateway disables such an endpoint (410 Gone, or failure sustained past its limits: an
`endpoint_disabled` feedback), the relay produces the destination again with `enabled: false`, so the
tenant sees it off and can re-enable it, rather than every outcome failing there.

The destinations are a global table (every relay reads the whole compacted topic and follows it between
batches). A new relay group starts at the end of the outcomes topic: deploying it, or adding a
destination, does not replay the past (30 days) to anyone; from then on its committed offsets carry it
through restarts. A destination receives the outcomes the relay processes while it exists and is
enabled. Outcomes older than `max_age` when processed (a relay stopped for a long time) are dropped
rather than delivered late, and each command expires `max_age` after its outcome reached the log (a
provider's report carries the provider's own, older time).

Engagement (seen, read, archived in the inbox; push and email opened; clicked) is relayed only to
destinations that list its kind in `engagements` (none by default, so existing destinations see no new
traffic), as `{"type": "engagement.read", ...}` with the notification, delivery, recipient, channel and,
for a click, the URL. Marking an item unread and taking it out of the archive are not relayed: they are
the recipient tidying an inbox, not engagement with a notification.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from uuid import uuid5

from tidings.codec import Codec, default_codec
from tidings.config import Settings
from tidings.errors import InvalidEvent
from tidings.events import (
    RELAY_RECIPIENT,
    DeliveryCommand,
    DeliveryOutcome,
    DestinationRemoved,
    DestinationUpdated,
    EngagementKind,
    Event,
    InboxItemArchived,
    InboxItemMarkedUnread,
    InboxItemRead,
    InboxItemSeen,
    InboxItemUnarchived,
    NotificationClicked,
    NotificationOpened,
    ProviderFeedback,
    RenderedContent,
    utcnow,
)
from tidings.ids import command_id, delivery_id
from tidings.kafka import Incoming, Output, TopicFollower, TransactionalLoop, default_slot
from tidings.kafka.records import log_time, table_events
from tidings.metrics import Sample
from tidings.topics import names

log = logging.getLogger(__name__)
GROUP = "tidings.relay"
OUTCOME_TYPE = "tidings.outcome"
MAX_AGE = timedelta(days=1)
ENGAGEMENTS: dict[type[Event], EngagementKind] = {
    InboxItemSeen: "seen",
    InboxItemRead: "read",
    InboxItemArchived: "archived",
    NotificationOpened: "opened",
    NotificationClicked: "clicked",
}
Engaged = InboxItemSeen | InboxItemRead | InboxItemArchived | NotificationOpened | NotificationClicked


@dataclass
class Destinations:
    """The latest version of every destination, by tenant, in topic order (one partition)."""

    tenants: dict[str, dict[str, DestinationUpdated]] = field(default_factory=dict)

    def apply(self, event: DestinationUpdated | DestinationRemoved) -> None:
        table = self.tenants.setdefault(event.tenant_id, {})
        if isinstance(event, DestinationUpdated):
            table[event.destination_id] = event
        else:
            table.pop(event.destination_id, None)

    def follow(self, records: Iterable[Incoming], codec: Codec) -> None:
        """Apply the topic's records (undecodable ones skipped, see `table_events`)."""
        for event in table_events(records, codec, "destination"):
            if isinstance(event, DestinationUpdated | DestinationRemoved):
                self.apply(event)

    def get(self, tenant: str, destination: str) -> DestinationUpdated | None:
        return self.tenants.get(tenant, {}).get(destination)

    def matching(self, outcome: DeliveryOutcome) -> list[DestinationUpdated]:
        found = self.tenants.get(outcome.tenant_id, {}).values()
        return [d for d in found if d.enabled and (not d.statuses or outcome.status in d.statuses)]

    def engaged(self, tenant: str, kind: EngagementKind) -> list[DestinationUpdated]:
        return [d for d in self.tenants.get(tenant, {}).values() if d.enabled and kind in d.engagements]

    def __len__(self) -> int:
        return sum(len(t) for t in self.tenants.values())


OUTCOME_FIELDS = {
    "event_id",
    "notification_id",
    "delivery_id",
    "recipient_id",
    "channel",
    "status",
    "reason",
    "provider",
    "provider_message_id",
    "attempt",
    "template_version",
    "detail",
    "occurred_at",
}
ENGAGEMENT_FIELDS = {
    "event_id",
    "notification_id",
    "delivery_id",
    "recipient_id",
    "channel",
    "url",
    "occurred_at",
}


def standard_event(type_: str, event: Event, fields: set[str], **extra: str) -> str:
    """A Standard Webhooks event body: `{"type", "timestamp", "data"}` with the event's `fields`."""
    data = event.model_dump(mode="json", include=fields) | extra
    body = {"type": type_, "timestamp": data["occurred_at"], "data": data}
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False)


def payload(outcome: DeliveryOutcome) -> str:
    """An outcome's event body: its fields, no address, no content."""
    return standard_event(f"delivery.{outcome.status.lower()}", outcome, OUTCOME_FIELDS)


def engagement_payload(event: Engaged) -> str:
    """An engagement's event body: its kind, time, ids, channel and clicked URL."""
    kind = ENGAGEMENTS[type(event)]
    return standard_event(f"engagement.{kind}", event, ENGAGEMENT_FIELDS, kind=kind)


def _command(
    source: Event, notification: str, d: DestinationUpdated, body: str, now: datetime, since: datetime
) -> DeliveryCommand:
    """`since`: when the source reached the log; the command expires `MAX_AGE` after it."""
    nid = uuid5(source.event_id, f"destination/{d.destination_id}")
    did = delivery_id(nid, "webhook", d.url)
    return DeliveryCommand(
        event_id=command_id(did),
        tenant_id=source.tenant_id,
        occurred_at=now,
        correlation_id=notification,
        delivery_id=did,
        notification_id=nid,
        recipient_id=RELAY_RECIPIENT + d.destination_id,
        notification_type=OUTCOME_TYPE,
        category=OUTCOME_TYPE,
        channel="webhook",
        priority="normal",
        address=d.url,
        address_params={"secret": d.secret},
        content=RenderedContent(data_json=body),
        expires_at=since,
    )


def relay(
    outcome: DeliveryOutcome,
    destinations: Destinations,
    now: datetime,
    max_age: timedelta = MAX_AGE,
    logged: datetime | None = None,
) -> list[DeliveryCommand]:
    """The commands that deliver `outcome` to its tenant's matching destinations. Its age counts from
    when it reached the log (`logged`), not its `occurred_at`: a provider's report carries the
    provider's time, and a bounce reported a day late was dropped, or relayed to expire within the hour."""
    at = logged or outcome.occurred_at
    if (outcome.recipient_id or "").startswith(RELAY_RECIPIENT) or at < now - max_age:
        return []
    body = payload(outcome)
    notification = str(outcome.notification_id)
    return [
        _command(outcome, notification, d, body, now, at + max_age) for d in destinations.matching(outcome)
    ]


def relay_engagement(
    event: Engaged,
    destinations: Destinations,
    now: datetime,
    max_age: timedelta = MAX_AGE,
    logged: datetime | None = None,
) -> list[DeliveryCommand]:
    """The commands that deliver an engagement to the tenant's destinations that asked for its kind."""
    at = logged or event.occurred_at
    if at < now - max_age:
        return []
    wanting = destinations.engaged(event.tenant_id, ENGAGEMENTS[type(event)])
    body = engagement_payload(event) if wanting else ""
    notification = str(event.notification_id)
    return [_command(event, notification, d, body, now, at + max_age) for d in wanting]


def disabled(
    feedback: ProviderFeedback, destinations: Destinations, now: datetime
) -> DestinationUpdated | None:
    """The destination, disabled, when the webhook gateway gave up on its endpoint (410 Gone, or failure
    sustained past its limits), so its owner sees it off (and can re-enable it) instead of every outcome
    failing there; None for any other feedback, and for one older than the destination's last
    update: an old give-up read after its owner re-enabled it turned it off again, unseen."""
    recipient = feedback.recipient_id or ""
    if feedback.kind != "endpoint_disabled" or not recipient.startswith(RELAY_RECIPIENT):
        return None
    current = destinations.get(feedback.tenant_id, recipient.removeprefix(RELAY_RECIPIENT))
    if current is None or not current.enabled or current.url != feedback.address:
        return None
    if current.occurred_at > feedback.at:
        return None
    update = {
        "event_id": uuid5(feedback.event_id, "destination-disabled"),
        "occurred_at": now,
        "enabled": False,
    }
    return current.model_copy(update=update)


class Relay:
    def __init__(
        self,
        settings: Settings,
        *,
        instance: str | None = None,
        group_id: str | None = None,
        from_beginning: bool = False,
        max_age: timedelta = MAX_AGE,
    ) -> None:
        """`from_beginning`: a new group reads the outcomes kept (tests); by default it starts at the end."""
        self.names = names(settings)
        self.codec = default_codec()
        self.max_age = max_age
        self.destinations = Destinations()
        self.follower = TopicFollower(settings, self.names.destinations)
        self.relayed = 0
        self.disabled = 0
        group_id = group_id or settings.topic_prefix + GROUP
        slot = instance or default_slot()
        self.loop = TransactionalLoop(
            settings,
            group_id=group_id,
            topics=[self.names.outcomes, self.names.engagement, self.names.feedback],
            handle=self.handle,
            transactional_id=f"{group_id}-{slot}",
            static_membership=instance is not None,
            before_batch=self.refresh,
            consumer_overrides={"auto.offset.reset": "earliest" if from_beginning else "latest"},
        )

    def refresh(self) -> None:
        self.destinations.follow(self.follower.poll(), self.codec)

    def handle(self, record: Incoming) -> list[Output]:
        """Not applied to the table here: the committed event comes back through the follower, so an
        aborted batch leaves nothing behind and its retry disables again."""
        event = record.decode(self.codec)
        if isinstance(event, ProviderFeedback):
            off = disabled(event, self.destinations, utcnow())
            self.disabled += off is not None
            return [Output.event(self.names.destinations, off, codec=self.codec)] if off else []
        logged = log_time(record)
        if isinstance(event, Engaged):
            commands = relay_engagement(event, self.destinations, utcnow(), self.max_age, logged)
        elif isinstance(event, DeliveryOutcome):
            commands = relay(event, self.destinations, utcnow(), self.max_age, logged)
        elif isinstance(event, InboxItemMarkedUnread | InboxItemUnarchived):
            commands = []
        else:
            raise InvalidEvent(f"{type(event).__name__} does not belong on {record.topic}")
        self.relayed += len(commands)
        target = self.names.delivery("webhook")
        return [Output.event(target, c, codec=self.codec) for c in commands]

    def samples(self) -> list[Sample]:
        return [
            *self.loop.samples(),
            Sample("outcomes_relayed", self.relayed, help="outcome webhooks made"),
            Sample("destinations_disabled", self.disabled, help="destinations whose endpoint was given up"),
        ]

    def run(self, *, idle_exit_after: float | None = None) -> None:
        self.destinations.follow(self.follower.catch_up(), self.codec)
        log.info("relay starting with %d destinations", len(self.destinations))
        try:
            self.loop.run(idle_exit_after=idle_exit_after)
        finally:
            self.follower.close()

    def stop(self) -> None:
        self.loop.stop()
