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

A finished broadcast is kept 30 days in the `broadcasts` store (30 days after its `scheduled_at` when
that is later): a second `BroadcastRequested` with its
id is ignored, and a `BroadcastCancelled` walks its range again producing cancellations (members who
left the audience meanwhile are not found, and keep what they got). A cancellation during the
expansion stops it and cancels the slots already reached; one that arrives first makes the broadcast
never start. A broadcast of a type the catalog does not know is dead-lettered before any request is made.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from pydantic import ValidationError

from processors.members import (
    Action,
    Job,
    Members,
    job_key,
    member_cancellation,
    member_request,
    request_template,
    same_audience,
)
from processors.plan import Catalog
from tidings.codec import Codec, default_codec
from tidings.config import Settings
from tidings.errors import CodecError, InvalidEvent
from tidings.events import (
    AudienceMembersAdded,
    AudienceMembersRemoved,
    BroadcastCancelled,
    BroadcastRequested,
)
from tidings.kafka import Incoming, Output, TopicFollower, TransactionalLoop, TransactionalState, default_slot
from tidings.kafka.records import (
    ERROR_MESSAGE,
    ERROR_RETRIABLE,
    ERROR_TYPE,
    MAX_ERROR_MESSAGE,
    REPLAYABLE,
    SOURCE_PARTITION,
    SOURCE_TOPIC,
    misplaced,
    size_checked,
)
from tidings.metrics import Sample
from tidings.state import Store
from tidings.topics import Names, names
from tidings.tracing import TRACEPARENT, child_traceparent

log = logging.getLogger(__name__)
GROUP = "tidings.audience"
SLICE = 500
MAX_PER_TICK = 10_000
MAX_SCAN = 20 * SLICE
MAX_TXN_BYTES = 16 * 1024 * 1024
"""Request bytes per transaction: `data_json` may be 256 KiB, copied into every member's request."""
BATCH = 5
"""Input records per transaction: a membership event of 1,000 members writes 2,000 changelog records, so
the loop's usual 500 records could make a million-record transaction that never commits in time."""
DONE_TTL = timedelta(days=30)
AUDIENCE_EVENTS = (AudienceMembersAdded, AudienceMembersRemoved, BroadcastRequested, BroadcastCancelled)


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
        self._last: tuple[int, str] = (-1, "")
        self.partition_counts: dict[str, int] = {}
        """Partitions per input topic, filled in by the loop; empty (no partition check) without one."""

    def pending(self) -> bool:
        return any(self.jobs.size(p) for p in self.jobs.partitions())

    def handle(self, record: Incoming) -> list[Output]:
        """An event on the partition its `tenant/audience` key does not hash to is dead-lettered: its
        audience's members are on another partition, and a broadcast read here went to nobody."""
        event = record.decode(self.codec)
        p = record.partition
        if isinstance(event, AUDIENCE_EVENTS) and (
            wrong := misplaced(record, event.key, self.partition_counts.get(record.topic))
        ):
            raise InvalidEvent(wrong)
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
        if (seen := self.job(p, key)) is not None:
            same_audience(seen, event.audience_id)
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
            scheduled_ms=int(event.scheduled_at.timestamp() * 1000) if event.scheduled_at else None,
        )
        return self._advance(p, job, SLICE, MAX_TXN_BYTES // BATCH)

    def _cancelled(self, p: int, event: BroadcastCancelled, trace: str) -> list[Output]:
        key = job_key(event.tenant_id, event.broadcast_id)
        job = self.job(p, key)
        if job is None:
            log.warning(
                "cancellation of broadcast %s, unknown in audience %s: it will never start here",
                event.broadcast_id,
                event.audience_id,
            )
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
        same_audience(job, event.audience_id)
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

    def _advance(self, p: int, job: Job, budget: int, max_bytes: int | None = None) -> list[Output]:
        """Take the job up to `budget` members (and about `max_bytes` of records) further and store
        where it stands. The records' size is the first one's, with room for a longer member id: all
        but the member are the broadcast's, and counting its data alone let a 900 KB `source` make a
        transaction of 450 MB. A broadcast read from the topic starts with a `BATCH`th of a
        transaction: each of a batch's broadcasts took all of it (83 MB for five of 250 KB). A member
        request over the record limit is refused here (a broadcast within a few hundred bytes of the
        limit): made by a punctuation, it failed the commit that every pending broadcast shares."""
        request = request_template(self._request(p, job)) if job.action == "expand" else None
        room = MAX_TXN_BYTES if max_bytes is None else max_bytes
        end = min(job.upto, job.next + MAX_SCAN)
        outputs: list[Output] = []
        resume = end
        trace = job.traceparent.encode() or None
        for slot, member in self.members.slots(p, job.tenant_id, job.audience_id, job.next, end):
            if len(outputs) >= budget:
                resume = slot
                break
            event = member_request(request, member) if request else member_cancellation(job, member)
            out = Output.event(self.names.requested, event, traceparent=trace, codec=self.codec)
            if not outputs:
                size_checked([out])
                size = len(out.value or b"") + sum(len(k) + len(v) for k, v in out.headers) + 1024
                budget = min(budget, max(1, room // size))
            outputs.append(out)
        if request is not None:
            self.requests_made += len(outputs)
            job = job.model_copy(update={"next": resume, "made": job.made + len(outputs)})
        else:
            self.cancellations_made += len(outputs)
            job = job.model_copy(update={"next": resume, "withdrawn": job.withdrawn + len(outputs)})
        if resume < job.upto:
            self.jobs.put(p, f"j\0{job.key}", job.model_dump_json().encode())
            return outputs
        done: Action = "expanded" if request is not None else "cancelled"
        self._finish(p, job.key, job.model_copy(update={"action": done}))
        return outputs

    def _finish(self, p: int, key: str, job: Job | None) -> None:
        """A finished broadcast (expanded, cancelled, failed) is remembered 30 days after it was due:
        for one scheduled ahead (up to 400 days), 30 days after its `scheduled_at`, so a cancellation
        can still withdraw it and a repeated request is still a duplicate. Kept 30 days from its
        expansion, a broadcast scheduled 300 days ahead and cancelled on day 31 was found by nothing
        and sent to every member."""
        self.jobs.delete(p, f"j\0{key}")
        self.jobs.delete(p, f"r\0{key}")
        if job is not None:
            due = job.scheduled_ms / 1000 - self.finished.clock() if job.scheduled_ms else 0.0
            self.finished.put(p, key, job, ttl=DONE_TTL + timedelta(seconds=max(0.0, due)))

    def _request(self, p: int, job: Job) -> BroadcastRequested:
        raw = self.jobs.get(p, f"r\0{job.key}")
        event = self.codec.decode(raw) if raw is not None else None
        if not isinstance(event, BroadcastRequested):
            raise InvalidEvent(f"broadcast {job.broadcast_id} has no stored request")
        return event

    def pending_jobs(self) -> list[tuple[int, str, bytes]]:
        """Every pending job as (partition, key, stored progress), in a fixed order."""
        return [
            (p, key[2:], raw)
            for p in self.jobs.partitions()
            for key in self.jobs.keys(p)
            if key.startswith("j\0") and (raw := self.jobs.get(p, key)) is not None
        ]

    def advance_all(self) -> list[Output]:
        """The punctuation: the pending jobs further, each by an equal share of one transaction's budget
        (at least a slice), taking turns: each punctuation starts after the job the last one served
        last, so no broadcast waits for others to finish. A job that cannot go on (its stored request
        is gone or invalid) is ended with a dead letter instead of failing every punctuation."""
        outputs: list[Output] = []
        jobs = self.pending_jobs()
        start = next((i for i, (p, key, _) in enumerate(jobs) if (p, key) > self._last), 0)
        share = max(SLICE, MAX_PER_TICK // max(1, len(jobs)))
        used = 0
        for p, key, raw in jobs[start:] + jobs[:start]:
            if len(outputs) >= MAX_PER_TICK or used >= MAX_TXN_BYTES:
                break
            self._last = (p, key)
            try:
                job = Job.model_validate_json(raw)
                made = self._advance(p, job, min(share, MAX_PER_TICK - len(outputs)), MAX_TXN_BYTES - used)
            except (InvalidEvent, CodecError, ValidationError) as exc:
                log.error("broadcast %s cannot be expanded, dead-lettered: %s", key.split("\0")[-1], exc)
                made = [self._failed(p, key, raw, exc)]
            used += sum(len(o.value or b"") for o in made)
            outputs += made
        return outputs

    def _failed(self, p: int, key: str, raw: bytes, exc: Exception) -> Output:
        try:
            job: Job | None = Job.model_validate_json(raw).model_copy(update={"action": "failed"})
        except ValidationError:
            job = None
        self._finish(p, key, job)
        headers = [
            (ERROR_TYPE, type(exc).__name__.encode()),
            (ERROR_MESSAGE, str(exc)[:MAX_ERROR_MESSAGE].encode()),
            (ERROR_RETRIABLE, b"false"),
            (SOURCE_TOPIC, self.names.broadcasts.encode()),
            (SOURCE_PARTITION, str(p).encode()),
            (REPLAYABLE, b"false"),
        ]
        return Output(self.names.dlq, key.encode(), raw, headers)


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
        slot = instance or default_slot()
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
        self.expander.partition_counts = self.loop.partition_counts

    def run(self, *, idle_exit_after: float | None = None) -> None:
        self.catalog.follow(self.follower.catch_up(), self.codec)
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
        self.catalog.follow(self.follower.poll(), self.codec)
