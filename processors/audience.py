"""Consumes notifications.broadcasts; produces one NotificationRequested per audience member on
notifications.requested, and a NotificationCancelled per reached member when a broadcast is withdrawn,
exactly once.

An audience is a tenant's named set of recipients, changed by `AudienceMembersAdded` and
`AudienceMembersRemoved`; a `BroadcastRequested` asks for one notification to each member. All of an
audience's events share the key `tenant/audience`, so they stay in order in one partition and the
processor folds them with no coordination.

Membership lives in the `members` store. Each member gets the next number of its audience's counter
when it joins (a slot), so a broadcast is a range of slots: it covers the slots below the counter as it
stood when the broadcast was read. Members who join later are not in it; members who leave before the
expansion reaches their slot are skipped (leaving means "send me nothing more"). Re-joining takes a new
slot. Slots make the expansion resumable from a plain number and need no sorting of members.

A broadcast's expansion is a job in the `jobs` store: the range and the next slot. The transaction
that reads the broadcast expands the first `SLICE` slots. While any job is pending, punctuations run
back to back (the loop's `eager` mode), each a transaction of at most `MAX_PER_TICK` requests shared
among the pending jobs, so a broadcast to a million members is many small transactions, other
audiences' records are read between them, and a kill at any point resumes from the last committed
slot. Each member's request has the notification id `uuid5(broadcast_id, recipient_id)` and
`broadcast_id` set, so a repeated expansion would still be a duplicate the router drops.

A finished broadcast is kept 30 days in the `broadcasts` store: a second `BroadcastRequested` with its
id is ignored, and a `BroadcastCancelled` walks its range again producing cancellations (members who
left the audience meanwhile are not found, and keep what they got). A cancellation during the
expansion stops it and cancels the slots already reached; one that arrives first makes the broadcast
never start. A broadcast of a type the catalog does not know is dead-lettered before any request is made.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from datetime import timedelta
from typing import Literal
from uuid import UUID, uuid5

from pydantic import BaseModel, ConfigDict

from processors.plan import Catalog
from tidings.codec import Codec, default_codec
from tidings.config import Settings
from tidings.errors import CodecError, InvalidEvent
from tidings.events import (
    AudienceMembersAdded,
    AudienceMembersRemoved,
    BroadcastCancelled,
    BroadcastRequested,
    NotificationCancelled,
    NotificationRequested,
    NotificationTypePublished,
)
from tidings.kafka import Incoming, Output, TopicFollower, TransactionalLoop, TransactionalState
from tidings.metrics import Sample
from tidings.state import Store
from tidings.topics import Names, names
from tidings.tracing import TRACEPARENT, child_traceparent

log = logging.getLogger(__name__)
GROUP = "tidings.audience"
SLICE = 500
MAX_PER_TICK = 2000
MAX_SCAN = 20 * SLICE
BATCH = 5
"""Input records per transaction: a membership event of 1,000 members writes 2,000 changelog records, so
the loop's usual 500 records could make a million-record transaction that never commits in time."""
DONE_TTL = timedelta(days=30)
Action = Literal["expand", "cancel", "expanded", "cancelled"]


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

    @property
    def key(self) -> str:
        return job_key(self.tenant_id, self.broadcast_id)


def job_key(tenant: str, broadcast_id: UUID) -> str:
    return f"{tenant}\0{broadcast_id}"


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


class Expander:
    """The processor's logic over its three stores, without Kafka: `handle` a record of the broadcasts
    topic, `advance_all` on the punctuation."""

    def __init__(self, prefix_names: Names, catalog: Catalog, codec: Codec | None = None) -> None:
        self.names, self.catalog = prefix_names, catalog
        self.codec = codec or default_codec()
        self.store: Store[str] = Store(
            self.names.changelog("audience", "members"), encode=str.encode, decode=bytes.decode
        )
        self.members = Members(self.store)
        self.jobs: Store[bytes] = Store(self.names.changelog("audience", "jobs"), encode=bytes, decode=bytes)
        self.finished: Store[Job] = Store(
            self.names.changelog("audience", "broadcasts"),
            encode=lambda j: j.model_dump_json().encode(),
            decode=Job.model_validate_json,
            ttl=DONE_TTL,
        )
        self.stores: list[TransactionalState] = [self.store, self.jobs, self.finished]
        self.requests_made = self.cancellations_made = self.duplicates = 0

    def pending(self) -> bool:
        return any(self.jobs.size(p) for p in self.jobs.partitions())

    def handle(self, record: Incoming) -> list[Output]:
        event = record.decode(self.codec)
        p = record.partition
        if isinstance(event, AudienceMembersAdded):
            self.members.add(p, event.tenant_id, event.audience_id, event.recipient_ids)
            return []
        if isinstance(event, AudienceMembersRemoved):
            self.members.remove(p, event.tenant_id, event.audience_id, event.recipient_ids)
            return []
        trace = child_traceparent(record.header(TRACEPARENT))
        if isinstance(event, BroadcastRequested):
            return self._requested(p, event, record.value or b"", trace)
        if isinstance(event, BroadcastCancelled):
            return self._cancelled(p, event, trace)
        raise InvalidEvent(f"{type(event).__name__} does not belong on {record.topic}")

    def job(self, p: int, key: str) -> Job | None:
        """A broadcast's job, pending or finished."""
        raw = self.jobs.get(p, f"j\0{key}")
        return Job.model_validate_json(raw) if raw is not None else self.finished.get(p, key)

    def _requested(self, p: int, event: BroadcastRequested, raw: bytes, trace: str) -> list[Output]:
        key = job_key(event.tenant_id, event.broadcast_id)
        if self.job(p, key) is not None:
            self.duplicates += 1
            log.info("broadcast %s seen before: ignored", event.broadcast_id)
            return []
        if self.catalog.get(event.tenant_id, event.notification_type) is None:
            raise InvalidEvent(f"unknown notification type {event.notification_type!r} for {event.tenant_id}")
        self.jobs.put(p, f"r\0{key}", raw)
        job = Job(
            tenant_id=event.tenant_id,
            audience_id=event.audience_id,
            broadcast_id=event.broadcast_id,
            action="expand",
            upto=self.members.counter(p, event.tenant_id, event.audience_id),
            traceparent=trace,
        )
        return self._advance(p, job, SLICE)

    def _cancelled(self, p: int, event: BroadcastCancelled, trace: str) -> list[Output]:
        key = job_key(event.tenant_id, event.broadcast_id)
        job = self.job(p, key)
        if job is None:
            marker = Job(
                tenant_id=event.tenant_id,
                audience_id=event.audience_id,
                broadcast_id=event.broadcast_id,
                action="cancelled",
                upto=0,
                reason=event.reason,
            )
            self.finished.put(p, key, marker)
            return []
        if job.action not in ("expand", "expanded"):
            return []
        self.jobs.delete(p, f"r\0{key}")
        reached = job.next if job.action == "expand" else job.upto
        update = {
            "action": "cancel",
            "upto": reached,
            "next": 0,
            "reason": event.reason,
            "traceparent": trace,
        }
        return self._advance(p, job.model_copy(update=update), SLICE)

    def _advance(self, p: int, job: Job, budget: int) -> list[Output]:
        """Take the job up to `budget` members further and store where it stands."""
        request = request_template(self._request(p, job)) if job.action == "expand" else None
        end = min(job.upto, job.next + MAX_SCAN)
        outputs: list[Output] = []
        resume = end
        trace = job.traceparent.encode() or None
        for slot, member in self.members.slots(p, job.tenant_id, job.audience_id, job.next, end):
            if len(outputs) >= budget:
                resume = slot
                break
            event = member_request(request, member) if request else member_cancellation(job, member)
            outputs.append(Output.event(self.names.requested, event, traceparent=trace, codec=self.codec))
        if request is not None:
            self.requests_made += len(outputs)
            job = job.model_copy(update={"next": resume, "made": job.made + len(outputs)})
        else:
            self.cancellations_made += len(outputs)
            job = job.model_copy(update={"next": resume, "withdrawn": job.withdrawn + len(outputs)})
        if resume < job.upto:
            self.jobs.put(p, f"j\0{job.key}", job.model_dump_json().encode())
            return outputs
        self.jobs.delete(p, f"j\0{job.key}")
        self.jobs.delete(p, f"r\0{job.key}")
        done: Action = "expanded" if request is not None else "cancelled"
        self.finished.put(p, job.key, job.model_copy(update={"action": done}))
        return outputs

    def _request(self, p: int, job: Job) -> BroadcastRequested:
        raw = self.jobs.get(p, f"r\0{job.key}")
        event = self.codec.decode(raw) if raw is not None else None
        if not isinstance(event, BroadcastRequested):
            raise InvalidEvent(f"broadcast {job.broadcast_id} has no stored request")
        return event

    def pending_jobs(self) -> list[tuple[int, Job]]:
        return [
            (p, Job.model_validate_json(raw))
            for p in self.jobs.partitions()
            for key in self.jobs.keys(p)
            if key.startswith("j\0") and (raw := self.jobs.get(p, key)) is not None
        ]

    def advance_all(self) -> list[Output]:
        """The punctuation: every pending job further by an equal share of one transaction's budget
        (at least a slice each, so with many jobs the later ones wait for the next punctuation)."""
        outputs: list[Output] = []
        jobs = self.pending_jobs()
        share = max(SLICE, MAX_PER_TICK // max(1, len(jobs)))
        for p, job in jobs:
            if len(outputs) >= MAX_PER_TICK:
                break
            outputs += self._advance(p, job, min(share, MAX_PER_TICK - len(outputs)))
        return outputs


class Audience:
    """The runner: the expander in a transactional loop, with the catalog followed as a global table."""

    def __init__(
        self,
        settings: Settings,
        *,
        instance: str | None = None,
        group_id: str | None = None,
        codec: Codec | None = None,
    ) -> None:
        n = names(settings)
        group_id = group_id or settings.topic_prefix + GROUP
        self.codec = codec or default_codec()
        self.catalog = Catalog()
        self.expander = Expander(n, self.catalog, self.codec)
        self.follower = TopicFollower(settings, n.catalog)
        slot = instance or f"{socket.gethostname()}-0"
        self.loop = TransactionalLoop(
            settings,
            group_id=group_id,
            topics=[n.broadcasts],
            handle=self.expander.handle,
            transactional_id=f"{group_id}-{slot}",
            static_membership=instance is not None,
            stores=self.expander.stores,
            before_batch=self.refresh_catalog,
            punctuate=self.expander.advance_all,
            pending=self.expander.pending,
            eager=self.expander.pending,
            batch_size=BATCH,
        )

    def run(self, *, idle_exit_after: float | None = None) -> None:
        for record in self.follower.catch_up():
            self._apply_catalog(record)
        try:
            self.loop.run(idle_exit_after=idle_exit_after)
        finally:
            self.follower.close()

    def stop(self) -> None:
        self.loop.stop()

    def samples(self) -> list[Sample]:
        return [
            *self.loop.samples(),
            Sample(
                "broadcast_requests_made", self.expander.requests_made, help="member requests broadcasts made"
            ),
            Sample(
                "broadcast_cancellations_made",
                self.expander.cancellations_made,
                help="member cancellations withdrawn broadcasts made",
            ),
        ]

    def refresh_catalog(self) -> None:
        for record in self.follower.poll():
            self._apply_catalog(record)

    def _apply_catalog(self, record: Incoming) -> None:
        try:
            event = record.decode(self.codec)
        except (CodecError, InvalidEvent) as exc:
            log.warning("ignoring undecodable catalog record at offset %d: %s", record.offset, exc)
            return
        if isinstance(event, NotificationTypePublished):
            self.catalog.apply(event)
