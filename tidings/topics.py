"""The registry of every Kafka topic: name, key, records, partitions, cleanup policy, retention.

Topics are created by `tidings topics apply` from this registry, never by broker auto-creation.
Every per-recipient topic has the same partition count and the default partitioner, so a recipient's
requests, profile, feedback and commands land on partitions with the same number (co-partitioning).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

from tidings.config import Settings
from tidings.events import CHANNELS

DAY_MS = 24 * 3600 * 1000
FOREVER = -1

REQUESTED = "notifications.requested"
RECIPIENTS = "notifications.recipients"
CATALOG = "notifications.catalog"
ENGAGEMENT = "notifications.engagement"
FEEDBACK = "notifications.feedback"
SCHEDULED = "notifications.scheduled"
OUTCOMES = "notifications.outcomes"
DLQ = "notifications.dlq"
DLQ_REPLAYED = "notifications.dlq.replayed"
BROADCASTS = "notifications.broadcasts"
DESTINATIONS = "notifications.destinations"


def delivery(channel: str, *, urgent: bool = False) -> str:
    return f"notifications.delivery.{channel}" + (".urgent" if urgent else "")


def retry(channel: str, tier: str) -> str:
    return f"notifications.delivery.{channel}.retry.{tier}"


def changelog(component: str, store: str) -> str:
    return f"tidings.{component}.{store}.changelog"


@dataclass(frozen=True)
class Names:
    """Topic names under an optional prefix (`TIDINGS_TOPIC_PREFIX`, e.g. `staging.`), so several
    environments or test runs share one cluster without seeing each other's records."""

    prefix: str = ""

    @property
    def requested(self) -> str:
        return self.prefix + REQUESTED

    @property
    def recipients(self) -> str:
        return self.prefix + RECIPIENTS

    @property
    def catalog(self) -> str:
        return self.prefix + CATALOG

    @property
    def engagement(self) -> str:
        return self.prefix + ENGAGEMENT

    @property
    def feedback(self) -> str:
        return self.prefix + FEEDBACK

    @property
    def scheduled(self) -> str:
        return self.prefix + SCHEDULED

    @property
    def outcomes(self) -> str:
        return self.prefix + OUTCOMES

    @property
    def dlq(self) -> str:
        return self.prefix + DLQ

    @property
    def dlq_replayed(self) -> str:
        return self.prefix + DLQ_REPLAYED

    @property
    def broadcasts(self) -> str:
        return self.prefix + BROADCASTS

    @property
    def destinations(self) -> str:
        return self.prefix + DESTINATIONS

    def delivery(self, channel: str, *, urgent: bool = False) -> str:
        return self.prefix + delivery(channel, urgent=urgent)

    def retry(self, channel: str, tier: str) -> str:
        return self.prefix + retry(channel, tier)

    def changelog(self, component: str, store: str) -> str:
        return self.prefix + changelog(component, store)


def names(settings: Settings) -> Names:
    return Names(settings.topic_prefix)


_TIER = re.compile(r"^(\d+)([smhd])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def tier_seconds(tier: str) -> int:
    match = _TIER.match(tier)
    if not match:
        raise ValueError(f"{tier!r} is not a duration like 10s, 1m, 6h or 2d")
    return int(match[1]) * _UNIT_SECONDS[match[2]]


def parse_tiers(text: str) -> list[str]:
    tiers = [t.strip() for t in text.split(",") if t.strip()]
    seconds = [tier_seconds(t) for t in tiers]
    if seconds != sorted(seconds) or len(set(seconds)) != len(seconds):
        raise ValueError(f"retry tiers must grow strictly: {text!r}")
    return tiers


@dataclass(frozen=True)
class TopicSpec:
    name: str
    key: str
    records: tuple[str, ...]
    cleanup_policy: str = "delete"
    retention_ms: int = 7 * DAY_MS
    per_recipient: bool = True
    partitions: int | None = None
    extra_config: dict[str, str] = field(default_factory=dict)
    forwarded: tuple[str, ...] = ()
    """Records a processor also forwards here; clients publish them to their own home topic."""
    personal: bool = True
    """Whether TIDINGS_PERSONAL_DATA_DAYS caps the retention (see `capped`)."""

    def config(self) -> dict[str, str]:
        conf = {"cleanup.policy": self.cleanup_policy, **self.extra_config}
        if self.cleanup_policy == "delete":
            conf["retention.ms"] = str(self.retention_ms)
        return conf

    def partition_count(self, settings: Settings) -> int:
        return self.partitions or settings.partitions


OWNED_CONFIGS = frozenset({"segment.ms"})
"""Configs the registry sets on a topic under some settings only (`segment.ms` under
TIDINGS_PERSONAL_DATA_DAYS): a topic override of one the registry does not set is drift, which
`tidings topics apply --alter` removes, so lifting the cap puts the broker's default back."""

RECIPIENT_KEY = "tenant/recipient"
COMMAND = ("DeliveryCommand",)


def registry(settings: Settings) -> list[TopicSpec]:
    """Every topic tidings uses, for the given settings (prefix, partitions, retry tiers)."""
    specs = [
        TopicSpec(
            REQUESTED, RECIPIENT_KEY, ("NotificationRequested", "NotificationCancelled"), retention_ms=FOREVER
        ),
        TopicSpec(
            RECIPIENTS,
            RECIPIENT_KEY,
            (
                "RecipientUpdated",
                "PreferencesUpdated",
                "DeviceRegistered",
                "DeviceRemoved",
                "WebhookEndpointUpdated",
                "WebhookEndpointRemoved",
                "RecipientErased",
            ),
            retention_ms=FOREVER,
        ),
        TopicSpec(
            CATALOG,
            "tenant/type",
            ("NotificationTypePublished",),
            cleanup_policy="compact",
            per_recipient=False,
            partitions=1,
        ),
        TopicSpec(
            ENGAGEMENT,
            RECIPIENT_KEY,
            (
                "InboxItemSeen",
                "InboxItemRead",
                "InboxItemArchived",
                "InboxItemMarkedUnread",
                "InboxItemUnarchived",
                "NotificationOpened",
                "NotificationClicked",
            ),
            retention_ms=30 * DAY_MS,
        ),
        TopicSpec(FEEDBACK, RECIPIENT_KEY, ("ProviderFeedback",), retention_ms=90 * DAY_MS),
        TopicSpec(
            SCHEDULED,
            RECIPIENT_KEY,
            COMMAND,
            retention_ms=400 * DAY_MS,
            forwarded=("NotificationCancelled", "RecipientErased"),
        ),
        TopicSpec(
            OUTCOMES, "notification_id", ("DeliveryOutcome",), per_recipient=False, retention_ms=30 * DAY_MS
        ),
        TopicSpec(DLQ, "original key", (), per_recipient=False, retention_ms=FOREVER),
        TopicSpec(
            DLQ_REPLAYED,
            "dlq partition/offset",
            (),
            cleanup_policy="compact",
            per_recipient=False,
            partitions=1,
            personal=False,
        ),
        TopicSpec(
            BROADCASTS,
            "tenant/audience",
            ("AudienceMembersAdded", "AudienceMembersRemoved", "BroadcastRequested", "BroadcastCancelled"),
            per_recipient=False,
            retention_ms=FOREVER,
            personal=False,
        ),
        TopicSpec(
            DESTINATIONS,
            "tenant/destination",
            ("DestinationUpdated", "DestinationRemoved"),
            cleanup_policy="compact",
            per_recipient=False,
            partitions=1,
        ),
    ]
    tiers = parse_tiers(settings.retry_tiers)
    for channel in CHANNELS:
        specs.append(TopicSpec(delivery(channel), RECIPIENT_KEY, COMMAND))
        specs.append(
            TopicSpec(delivery(channel, urgent=True), RECIPIENT_KEY, COMMAND, forwarded=("RecipientErased",))
        )
        specs.extend(
            TopicSpec(
                retry(channel, tier),
                RECIPIENT_KEY,
                COMMAND,
                retention_ms=max(7 * DAY_MS, 3 * 1000 * tier_seconds(tier)),
            )
            for tier in tiers
        )
    specs += [changelog_spec(component, store) for component, store in STORES]
    if settings.personal_data_days is not None:
        specs = [capped(spec, settings.personal_data_days * DAY_MS) for spec in specs]
    return [replace(spec, name=settings.topic_prefix + spec.name) for spec in specs]


def capped(spec: TopicSpec, most_ms: int) -> TopicSpec:
    """The spec under TIDINGS_PERSONAL_DATA_DAYS: retention at most `most_ms`, and a segment rolled daily,
    since Kafka deletes whole segments (a record lives until its segment's newest is past retention).

    Not `notifications.broadcasts`: the audience processor and the audiences projection rebuild
    membership from it, and it names recipients by id only; an erasure removes a recipient's
    memberships with events of its own. The settings refuse a cap shorter than 3 times a retry tier."""
    if spec.cleanup_policy != "delete" or not spec.personal:
        return spec
    retention = spec.retention_ms if 0 <= spec.retention_ms <= most_ms else most_ms
    return replace(
        spec, retention_ms=retention, extra_config={**spec.extra_config, "segment.ms": str(DAY_MS)}
    )


STORES = (
    ("router", "recipients"),
    ("router", "seen"),
    ("router", "digests"),
    ("router", "digest_due"),
    ("router", "throttles"),
    ("scheduler", "timers"),
    ("scheduler", "engaged"),
    ("scheduler", "erased"),
    ("audience", "members"),
    ("audience", "jobs"),
    ("audience", "broadcasts"),
)
"""Every processor's state store; its changelog topic is part of the registry, so `topics apply` makes
it before the processor first starts."""


def changelog_spec(component: str, store: str, prefix: str = "") -> TopicSpec:
    """A processor's state store changelog: compacted, co-partitioned with its input."""
    return TopicSpec(
        prefix + changelog(component, store),
        "store key",
        (),
        cleanup_policy="compact",
        extra_config={
            "min.compaction.lag.ms": "0",
            "max.compaction.lag.ms": str(DAY_MS),
            "segment.ms": str(DAY_MS),
        },
    )
