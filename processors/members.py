"""Consumes audience membership and broadcasts (for `processors/audience.py`); produces member slots,
broadcast jobs and the members' requests and cancellations.

The pure parts of the audience processor: an audience's members as numbered slots in a store, the
progress of a broadcast (`Job`), and the request or cancellation each member gets.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal
from uuid import UUID, uuid5

from pydantic import BaseModel, ConfigDict

from tidings.errors import InvalidEvent
from tidings.events import BroadcastRequested, NotificationCancelled, NotificationRequested
from tidings.state import Store

Action = Literal["expand", "cancel", "expanded", "cancelled", "failed"]


class Job(BaseModel):
    """A broadcast's progress: slots `next`..`upto` are still to do for `action`."""

    model_config = ConfigDict(frozen=True)
    tenant_id: str
    audience_id: str
    broadcast_id: UUID
    action: Action
    upto: int
    next: int = 0
    reason: str | None = None
    made: int = 0
    withdrawn: int = 0
    traceparent: str = ""
    scheduled_ms: int | None = None
    """The broadcast's scheduled_at (epoch ms): it is remembered until 30 days after it."""

    @property
    def key(self) -> str:
        return job_key(self.tenant_id, self.broadcast_id)


def job_key(tenant: str, broadcast_id: UUID) -> str:
    return f"{tenant}\0{broadcast_id}"


def same_audience(job: Job, audience_id: str) -> None:
    """A broadcast id names one audience's broadcast; another audience's record naming it is invalid."""
    if job.audience_id != audience_id:
        raise InvalidEvent(
            f"broadcast {job.broadcast_id} went to audience {job.audience_id!r}, not {audience_id!r}"
        )


def member_notification_id(broadcast_id: UUID, recipient_id: str) -> UUID:
    return uuid5(broadcast_id, recipient_id)


def request_template(broadcast: BroadcastRequested) -> NotificationRequested:
    """The request every member gets, validated once; `member_request` fills in the member."""
    return NotificationRequested(
        tenant_id=broadcast.tenant_id,
        occurred_at=broadcast.occurred_at,
        notification_id=broadcast.broadcast_id,
        recipient_id="-",
        notification_type=broadcast.notification_type,
        data_json=broadcast.data_json,
        priority=broadcast.priority,
        channels=broadcast.channels,
        scheduled_at=broadcast.scheduled_at,
        expires_at=broadcast.expires_at,
        actor_id=broadcast.actor_id,
        broadcast_id=broadcast.broadcast_id,
        source=broadcast.source,
    )


def member_request(template: NotificationRequested, recipient_id: str) -> NotificationRequested:
    """One member's request: a copy of the template with the member's ids. Not validated again: the
    member id was validated when it joined, the rest with the template (half the expansion's cost)."""
    assert template.broadcast_id is not None
    nid = member_notification_id(template.broadcast_id, recipient_id)
    update = {
        "event_id": uuid5(nid, "requested"),
        "correlation_id": str(nid),
        "notification_id": nid,
        "recipient_id": recipient_id,
    }
    return template.model_copy(update=update)


def member_cancellation(job: Job, recipient_id: str) -> NotificationCancelled:
    nid = member_notification_id(job.broadcast_id, recipient_id)
    return NotificationCancelled(
        event_id=uuid5(nid, "cancelled"),
        tenant_id=job.tenant_id,
        correlation_id=str(nid),
        notification_id=nid,
        recipient_id=recipient_id,
        reason=job.reason or "broadcast cancelled",
    )


class Members:
    """An audience's members in a store: `c` its counter, `m` member → slot, `s` slot → member."""

    def __init__(self, store: Store[str]) -> None:
        self.store = store

    def counter(self, partition: int, tenant: str, audience: str) -> int:
        return int(self.store.get(partition, f"c\0{tenant}\0{audience}") or 0)

    def add(self, partition: int, tenant: str, audience: str, recipients: list[str]) -> int:
        """Give each new member the next slot; returns how many were new."""
        prefix, counter = f"{tenant}\0{audience}\0", self.counter(partition, tenant, audience)
        start = counter
        for r in dict.fromkeys(recipients):
            if self.store.get(partition, f"m\0{prefix}{r}") is None:
                self.store.put(partition, f"m\0{prefix}{r}", str(counter))
                self.store.put(partition, f"s\0{prefix}{counter:012d}", r)
                counter += 1
        if counter != start:
            self.store.put(partition, f"c\0{tenant}\0{audience}", str(counter))
        return counter - start

    def remove(self, partition: int, tenant: str, audience: str, recipients: list[str]) -> int:
        prefix, removed = f"{tenant}\0{audience}\0", 0
        for r in dict.fromkeys(recipients):
            slot = self.store.get(partition, f"m\0{prefix}{r}")
            if slot is not None:
                self.store.delete(partition, f"m\0{prefix}{r}")
                self.store.delete(partition, f"s\0{prefix}{int(slot):012d}")
                removed += 1
        return removed

    def slots(
        self, partition: int, tenant: str, audience: str, start: int, end: int
    ) -> Iterator[tuple[int, str]]:
        """The members in slots start..end-1 with their slots, skipping the slots of members who left."""
        prefix = f"s\0{tenant}\0{audience}\0"
        for slot in range(start, end):
            member = self.store.get(partition, f"{prefix}{slot:012d}")
            if member is not None:
                yield slot, member
