"""Consumes the catalog, recipients, feedback and requests topics and a candidate catalog; produces the past
requests whose delivery plan the candidate would change (`tidings catalog shadow`).

Shadow evaluation answers "what would publishing this catalog do?" before it is published, from the
log of record: every request in a time window is planned twice by the router's own `plan()`, once with
the catalog as it stood when the request was made and once with the candidate types on top of it,
each time with the recipient's state (contacts, devices, preferences, suppressions) folded from the
topics up to that request, and at the request's record time. Requests whose decisions differ (per
channel: queued, deferred, digested, skipped or expired and why, or the whole request rejected, e.g.
because a new template fails on data real producers send) are reported with both decision sets.

It compares plans only. The router's state across requests (dedupe, throttles, open digests) and the
cancellations are not replayed: the difference shown is the catalog change's alone. Nothing is written
anywhere. The window's records are held in memory, so narrow long histories with `start`/`end`.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from processors.plan import Catalog, plan
from processors.recipients import RecipientState, fold
from tidings.audit import read_all
from tidings.codec import default_codec
from tidings.config import Settings
from tidings.errors import CodecError, InvalidEvent
from tidings.events import Event, NotificationRequested, NotificationTypePublished
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

    def observe(self, event: Event, at: datetime, *, compare: bool) -> Change | None:
        if isinstance(event, NotificationTypePublished):
            self.recorded.apply(event)
            self.proposed.apply(event)
            return None
        recipient = getattr(event, "recipient_id", None)
        if not recipient:
            return None
        key = (event.tenant_id, recipient)
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


def _ordered(s: Settings, end_ms: float | None) -> list[Incoming]:
    """The catalog, recipients, feedback and requests records before `end`, in record-time order (ties:
    catalog first, then state, then requests, so a request sees what was recorded in its millisecond)."""
    n = names(s)
    rank = {n.catalog: 0, n.recipients: 1, n.feedback: 1, n.requested: 2}
    records = [
        r
        for topic in rank
        for r in read_all(s, topic)
        if r.value is not None and (end_ms is None or r.timestamp_ms < end_ms)
    ]
    records.sort(key=lambda r: (r.timestamp_ms, rank[r.topic], r.topic, r.partition, r.offset))
    return records


def replay(
    s: Settings,
    shadow: Shadow,
    *,
    tenant: str | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
) -> Iterator[Change]:
    """Every request in [start, end) (of `tenant`, if given) whose plan the candidate changes."""
    start_ms = start.timestamp() * 1000 if start else None
    end_ms = end.timestamp() * 1000 if end else None
    requested = names(s).requested
    codec = default_codec()
    for record in _ordered(s, end_ms):
        is_request = record.topic == requested
        if is_request and start_ms is not None and record.timestamp_ms < start_ms:
            continue
        try:
            event = record.decode(codec)
        except (CodecError, InvalidEvent) as exc:
            log.debug("skipping undecodable %s@%d: %s", record.topic, record.offset, exc)
            continue
        at = datetime.fromtimestamp(record.timestamp_ms / 1000, UTC)
        compare = is_request and (tenant is None or event.tenant_id == tenant)
        change = shadow.observe(event, at, compare=compare)
        if change is not None:
            yield change
