"""Reads the topics themselves for auditors: one notification's full history, time-ranged replays, and the
dead-letter queue. No database is involved, so the answer is what was decided and sent, not a view of it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from tidings.codec import default_codec
from tidings.config import Settings
from tidings.errors import CodecError, InvalidEvent, UnknownTopic
from tidings.events import CHANNELS, Event
from tidings.kafka import EventProducer, Incoming, Output, TopicFollower
from tidings.kafka.consumer import unknown_topic
from tidings.kafka.records import REQUESTED_AT, SOURCE_TIMESTAMP, header_map
from tidings.topics import names, parse_tiers


def read_all(s: Settings, topic: str) -> Iterator[Incoming]:
    follower = TopicFollower(s, topic)
    if not follower.exists:
        follower.close()
        raise UnknownTopic(unknown_topic(s, topic))
    try:
        for batch in follower.batches(2000):
            yield from batch
    finally:
        follower.close()


def retry_topics(s: Settings) -> list[str]:
    n = names(s)
    return [n.retry(c, tier) for c in CHANNELS for tier in parse_tiers(s.retry_tiers)]


def history_topics(s: Settings) -> list[str]:
    n = names(s)
    deliveries = [n.delivery(c, urgent=u) for c in CHANNELS for u in (False, True)]
    return [n.requested, *deliveries, *retry_topics(s), n.scheduled, n.outcomes, n.feedback, n.engagement]


def history(s: Settings, notification_id: str, tenant: str | None = None) -> list[tuple[Incoming, Event]]:
    """Every event about one notification across the pipeline's topics (the retried commands of the
    configured tiers included), in the order they were written (record time, then event time),
    including the digest request that summarised it; with `tenant`, only that tenant's. Ids come from
    callers, so another tenant's records may name it. Not by event time alone: a retried or released
    command keeps the time it was planned, and was listed before the outcomes that came before it."""
    found: list[tuple[Incoming, Event]] = []
    optional = set(retry_topics(s))
    for topic in history_topics(s):
        try:
            for record in read_all(s, topic):
                try:
                    event = record.decode(default_codec())
                except (CodecError, InvalidEvent):
                    continue
                if tenant is not None and event.tenant_id != tenant:
                    continue
                nid = getattr(event, "notification_id", None)
                summarised = getattr(event, "digest_of", None) or ()
                if str(nid) == notification_id or any(str(i) == notification_id for i in summarised):
                    found.append((record, event))
        except UnknownTopic:
            if topic not in optional:
                raise
    found.sort(key=lambda pair: (pair[0].timestamp_ms, pair[1].occurred_at, pair[0].topic, pair[0].offset))
    return found


def matches(value: dict[str, Any], filters: dict[str, str]) -> bool:
    return all(str(value.get(k)) == v for k, v in filters.items())


def in_range(record: Incoming, start: datetime | None, end: datetime | None) -> bool:
    ms = record.timestamp_ms
    return (start is None or ms >= start.timestamp() * 1000) and (end is None or ms < end.timestamp() * 1000)


def dead_letters(s: Settings) -> Iterator[tuple[Incoming, dict[str, str]]]:
    for record in read_all(s, names(s).dlq):
        yield record, header_map(record.headers)


def letter_id(record: Incoming) -> str:
    """A dead letter's name in `notifications.dlq.replayed`: its partition and offset in the DLQ."""
    return f"{record.partition}/{record.offset}"


def replayed_letters(s: Settings) -> tuple[set[str], set[str]]:
    """The dead letters `tidings dlq replay` re-injected before, and the source records they held
    (`origin`). Without this memory every run re-injected every letter again: requests came through
    again once the router's 7-day dedupe had passed, and old recipient updates were applied over newer
    ones. The origins matter as well: a projection rebuilt dead-letters its poison records again, as
    new letters of the same records, and a later run re-injected them. A letter whose copy failed
    again has a letter of its own (its origin is the copy), which a later run replays once in turn."""
    letters, origins = set(), set()
    for r in read_all(s, names(s).dlq_replayed):
        if r.key and r.value:
            letters.add(r.key.decode())
            if source := json.loads(r.value).get("origin"):
                origins.add(source)
    return letters, origins


def origin(headers: dict[str, str]) -> str | None:
    """`topic/partition/offset` of the record a letter holds, None when the letter does not say."""
    where = [
        w for k in ("topic", "partition", "offset") if (w := headers.get(f"tidings.source.{k}")) is not None
    ]
    return "/".join(where) if len(where) == 3 else None


def note_replayed(producer: EventProducer, s: Settings, record: Incoming, source: str) -> None:
    found = origin(header_map(record.headers))
    note = json.dumps({"to": source, "at": datetime.now(UTC).isoformat(), "origin": found}).encode()
    producer.produce(Output(names(s).dlq_replayed, letter_id(record).encode(), note, []))


def replay_dead_letter(producer: EventProducer, record: Incoming) -> str:
    """Re-inject the original record into its source topic, without the error headers. It keeps the
    time it was first written (`REQUESTED_AT`), so a request replayed after its recipient's erasure still
    counts as made before it."""
    headers = header_map(record.headers)
    source = headers["tidings.source.topic"]
    kept = [(k, v) for k, v in record.headers if not k.startswith("tidings.")]
    kept.append(("tidings.replayed.from", f"{record.topic}/{record.partition}/{record.offset}".encode()))
    made = headers.get(REQUESTED_AT) or headers.get(SOURCE_TIMESTAMP)
    if made:
        kept.append((REQUESTED_AT, made.encode()))
    producer.produce(Output(source, record.key, record.value, kept))
    return source
