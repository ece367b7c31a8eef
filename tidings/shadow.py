"""Consumes the catalog, recipients, feedback and requests topics and a candidate catalog; produces the past
requests whose delivery plan the candidate would change (`tidings catalog shadow`).

Shadow evaluation answers "what would publishing this catalog do?" before it is published, from the
log of record: every request in a time window is planned twice by the router's own `plan()`, once with
the catalog as it stood when the request was made and once with the candidate types on top of it,
each time with the recipient's state (contacts, devices, preferences, suppressions) folded from the
topics up to that request, and at the request's record time. Requests whose decisions differ (per
channel: queued, deferred, digested, skipped or expired and why, or the whole request rejected, e.g.
because a new template fails on data real producers send) are reported with both decision sets.

Records are interleaved as the router's aligner releases them: each topic-partition in offset order,
the head with the smallest timestamp first, recipient updates before feedback before requests on a
tie; catalog records by their timestamp (the router follows the catalog as it arrives, so this is the
approximation). Whatever `plan()` raises for a request is reported as `REJECTED`, as the router would
dead-letter it (with our own error message, else only the exception's type, which cannot quote data).

It compares plans only. The router's state across requests (dedupe, throttles, open digests) and the
cancellations are not replayed: the difference shown is the catalog change's alone. History is what
the topics still hold: the catalog topic is compacted, so both sides start from the oldest version
kept of each type (a request older than it is planned with it), and feedback older than the feedback
topic's retention (90 days) is missing from the recipients' state. Nothing is written anywhere. The
records before `end` (requests only from `start`) are held in memory.
"""

from __future__ import annotations

import heapq
import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from processors.plan import Catalog, plan
from processors.recipients import RecipientState, fold
from tidings.audit import read_all
from tidings.codec import Codec, default_codec
from tidings.config import Settings
from tidings.errors import CodecError, InvalidEvent
from tidings.events import Event, NotificationRequested, NotificationTypePublished, RecipientErased
from tidings.kafka import Incoming
from tidings.topics import names

log = logging.getLogger(__name__)
Decision = tuple[str, str, str]
MAX_REASON = 200


def decisions(
    request: NotificationRequested, state: RecipientState | None, catalog: Catalog, now: datetime
) -> tuple[Decision, ...]:
    """The plan's decisions as sorted (channel, status, reason) triples; channel `*` for the request."""
    try:
        result = plan(request, state, catalog, now)
    except InvalidEvent as exc:
        return (("*", "REJECTED", str(exc)[:MAX_REASON]),)
    except Exception as exc:
        return (("*", "REJECTED", type(exc).__name__),)
    found: list[Decision] = [(o.channel or "*", o.status, o.reason or "") for o in result.outcomes]
    found += [(c, "DIGESTED", "") for c in result.digested]
    return tuple(sorted(found))


def _label(items: list[Decision]) -> str:
    return ", ".join(f"{status} {reason}".strip() for _, status, reason in items) or "nothing"


@dataclass(frozen=True)
class Change:
    request: NotificationRequested
    at: datetime
    before: tuple[Decision, ...]
    after: tuple[Decision, ...]

    def transitions(self) -> list[tuple[str, str, str]]:
        """(channel, before, after) for every channel whose decisions differ."""
        channels = sorted({d[0] for d in (*self.before, *self.after)})
        out = []
        for c in channels:
            was = [d for d in self.before if d[0] == c]
            now = [d for d in self.after if d[0] == c]
            if was != now:
                out.append((c, _label(was), _label(now)))
        return out

    def view(self) -> dict[str, Any]:
        r = self.request
        return {
            "notification_id": str(r.notification_id),
            "tenant_id": r.tenant_id,
            "recipient_id": r.recipient_id,
            "notification_type": r.notification_type,
            "requested_at": self.at.isoformat(),
            "changes": [{"channel": c, "before": b, "after": a} for c, b, a in self.transitions()],
        }


@dataclass
class Shadow:
    """Folds history in record-time order; `observe` returns a Change for a compared request that differs."""

    candidate: list[NotificationTypePublished]
    recorded: Catalog = field(default_factory=Catalog)
    proposed: Catalog = field(default_factory=Catalog)
    states: dict[tuple[str, str], RecipientState] = field(default_factory=dict)
    compared: int = 0
    summary: Counter[tuple[str, str, str, str]] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        for t in self.candidate:
            self.proposed.apply(t)

    def seed(self, published: list[NotificationTypePublished]) -> None:
        """Start both catalogs with the oldest version kept of each type. The catalog topic is compacted:
        once older versions are cleaned away, requests from before the oldest kept one are planned with
        it rather than reported as made for an unknown type."""
        oldest: dict[tuple[str, str], NotificationTypePublished] = {}
        for t in published:
            key = (t.tenant_id, t.notification_type)
            if key not in oldest or t.version < oldest[key].version:
                oldest[key] = t
        for t in oldest.values():
            self.recorded.apply(t)
            self.proposed.apply(t)

    def observe(self, event: Event, at: datetime, *, compare: bool) -> Change | None:
        if isinstance(event, NotificationTypePublished):
            self.recorded.apply(event)
            self.proposed.apply(event)
            return None
        recipient = getattr(event, "recipient_id", None)
        if not recipient:
            return None
        key = (event.tenant_id, recipient)
        if isinstance(event, RecipientErased):
            event = event.model_copy(update={"occurred_at": at})
        if not isinstance(event, NotificationRequested):
            self.states[key] = fold(self.states.get(key), event)
            return None
        if not compare:
            return None
        self.compared += 1
        state = self.states.get(key)
        before = decisions(event, state, self.recorded, at)
        after = decisions(event, state, self.proposed, at)
        if before == after:
            return None
        change = Change(event, at, before, after)
        for channel, was, now in change.transitions():
            self.summary[(event.notification_type, channel, was, now)] += 1
        return change


def merged(streams: dict[tuple[str, int], list[Incoming]], rank: dict[str, int]) -> Iterator[Incoming]:
    """Every stream in its own (offset) order, interleaved as the router's aligner releases them: the head
    with the smallest (timestamp, topic rank) goes next (`tidings.kafka.align`)."""
    heads = [(q[0].timestamp_ms, rank[t], t, p, 0) for (t, p), q in streams.items() if q]
    heapq.heapify(heads)
    while heads:
        _, _, topic, partition, i = heapq.heappop(heads)
        stream = streams[(topic, partition)]
        yield stream[i]
        if i + 1 < len(stream):
            heapq.heappush(heads, (stream[i + 1].timestamp_ms, rank[topic], topic, partition, i + 1))


def replay(
    s: Settings,
    shadow: Shadow,
    *,
    tenant: str | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
) -> Iterator[Change]:
    """Every request in [start, end) (of `tenant`, if given) whose plan the candidate changes. Only the
    records before `end`, and the requests from `start`, are held in memory."""
    start_ms = start.timestamp() * 1000 if start else None
    end_ms = end.timestamp() * 1000 if end else None
    n = names(s)
    rank = {n.catalog: 0, n.recipients: 1, n.feedback: 2, n.requested: 3}
    codec = default_codec()
    streams: dict[tuple[str, int], list[Incoming]] = {}
    for topic in rank:
        for r in read_all(s, topic):
            if r.value is None or (end_ms is not None and r.timestamp_ms >= end_ms):
                continue
            if topic == n.requested and start_ms is not None and r.timestamp_ms < start_ms:
                continue
            streams.setdefault((topic, r.partition), []).append(r)
    catalog = [
        e
        for e in _decoded(streams.get((n.catalog, 0), []), codec)
        if isinstance(e, NotificationTypePublished)
    ]
    shadow.seed(catalog)
    for record in merged(streams, rank):
        decoded = _decoded([record], codec)
        if not decoded:
            continue
        event = decoded[0]
        at = datetime.fromtimestamp(record.timestamp_ms / 1000, UTC)
        compare = record.topic == n.requested and (tenant is None or event.tenant_id == tenant)
        change = shadow.observe(event, at, compare=compare)
        if change is not None:
            yield change


def _decoded(records: list[Incoming], codec: Codec) -> list[Event]:
    found = []
    for record in records:
        try:
            found.append(record.decode(codec))
        except (CodecError, InvalidEvent) as exc:
            log.debug("skipping undecodable %s@%d: %s", record.topic, record.offset, exc)
    return found
