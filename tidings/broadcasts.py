"""Builds the events of audiences and broadcasts for `notifications.broadcasts` (processors/audience.py),
and the delivery report of a broadcast from the delivery-status projection (API and CLI).

The report counts the member notifications the projection has seen, by summary status (`REQUESTED`
where no outcome has arrived yet), and per channel their deliveries by status together with the
channels that have no delivery for a member: a skip (an opt-out, no address) or a digest item, counted
once each by its latest outcome (a digested item is DEFERRED, then QUEUED when its digest is sent). It
reads `notifications.broadcast_id` (migration 0007), so it follows the requests topic, not the
audience's size: a member skipped during the expansion, or not reached yet, is simply not counted.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, Required, TypedDict, Unpack
from uuid import UUID

from tidings.errors import InvalidEvent
from tidings.events import (
    MAX_MEMBERS_PER_EVENT,
    AudienceMembersAdded,
    AudienceMembersRemoved,
    BroadcastRequested,
    data_json_of,
    validated,
)
from tidings.ids import broadcast_id_for, chosen_id

REPORT_STATUSES = """
SELECT coalesce(status, 'REQUESTED') AS status, count(*) AS count FROM notifications
WHERE tenant_id = %s AND broadcast_id = %s GROUP BY 1 ORDER BY 1
"""
REPORT_CHANNELS = """
WITH n AS (SELECT notification_id, tenant_id FROM notifications WHERE tenant_id = %s AND broadcast_id = %s)
SELECT channel, status, count(*) AS count FROM (
    SELECT d.channel, d.status FROM n JOIN deliveries d USING (notification_id, tenant_id)
    UNION ALL (
        SELECT DISTINCT ON (e.notification_id, e.channel) e.channel, e.status
        FROM n JOIN delivery_events e USING (notification_id, tenant_id)
        WHERE e.delivery_id IS NULL AND e.channel IS NOT NULL
        ORDER BY e.notification_id, e.channel, e.occurred_at DESC, e.status = 'DEFERRED', e.event_id
    )
) x GROUP BY 1, 2 ORDER BY 1, 2
"""


class BroadcastFields(TypedDict, total=False):
    """What a broadcast can say (`Client.broadcast`, `broadcast_request`)."""

    tenant: Required[str]
    audience: Required[str]
    type: Required[str]
    data: Mapping[str, Any] | None
    broadcast_id: UUID | str | None
    idempotency_key: str | None
    priority: str | None
    channels: Sequence[str] | None
    scheduled_at: datetime | None
    expires_at: datetime | None
    actor: str | None


def broadcast_request(*, source: str | None = None, **fields: Unpack[BroadcastFields]) -> BroadcastRequested:
    """A validated broadcast; its id is a new UUIDv7 unless given or derived from `idempotency_key`."""
    tenant, audience = fields["tenant"], fields["audience"]
    bid = chosen_id(
        "broadcast_id",
        fields.get("broadcast_id"),
        fields.get("idempotency_key"),
        lambda key: broadcast_id_for(tenant, audience, key),
    )
    channels = fields.get("channels")
    return validated(
        BroadcastRequested,
        tenant_id=tenant,
        correlation_id=str(bid),
        audience_id=audience,
        broadcast_id=bid,
        notification_type=fields["type"],
        data_json=data_json_of(fields.get("data")),
        priority=fields.get("priority"),
        channels=list(channels) if channels is not None else None,
        scheduled_at=fields.get("scheduled_at"),
        expires_at=fields.get("expires_at"),
        actor_id=fields.get("actor"),
        source=source,
    )


def ids(values: Sequence[str], field: str) -> Sequence[str]:
    """`values`, unless it is one string: a str is a sequence of its characters, and `recipients="ada"`
    added the members "a" and "d"."""
    if isinstance(values, str):
        raise InvalidEvent(f"{field} is a list of ids, not one id: [{values!r}]")
    return values


def membership(
    *, tenant: str, audience: str, recipients: Sequence[str], remove: bool = False
) -> list[AudienceMembersAdded | AudienceMembersRemoved]:
    """The events that add (or remove) recipients, at most MAX_MEMBERS_PER_EVENT each."""
    ids(recipients, "recipients")
    model: type[AudienceMembersAdded | AudienceMembersRemoved] = (
        AudienceMembersRemoved if remove else AudienceMembersAdded
    )
    return [
        validated(
            model,
            tenant_id=tenant,
            audience_id=audience,
            recipient_ids=list(recipients[i : i + MAX_MEMBERS_PER_EVENT]),
        )
        for i in range(0, len(recipients), MAX_MEMBERS_PER_EVENT)
    ]


def delivery_report(
    statuses: Iterable[Mapping[str, Any]], channels: Iterable[Mapping[str, Any]]
) -> dict[str, Any]:
    """`{"notifications": n, "status": {status: n}, "channels": {channel: {status: n}}}` from the rows of
    REPORT_STATUSES and REPORT_CHANNELS."""
    by_status = {str(r["status"]): int(r["count"]) for r in statuses}
    by_channel: dict[str, dict[str, int]] = {}
    for r in channels:
        by_channel.setdefault(str(r["channel"]), {})[str(r["status"])] = int(r["count"])
    return {"notifications": sum(by_status.values()), "status": by_status, "channels": by_channel}
