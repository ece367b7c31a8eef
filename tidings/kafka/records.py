"""Client-neutral consumed and produced records, and the dead-letter record built from a failure."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiokafka.partitioner import murmur2

from tidings.codec import Codec, default_codec
from tidings.errors import InvalidEvent
from tidings.events import Event
from tidings.topics import DLQ
from tidings.tracing import TRACEPARENT, new_traceparent

log = logging.getLogger(__name__)
Headers = list[tuple[str, bytes]]

ERROR_TYPE = "tidings.error.type"
ERROR_MESSAGE = "tidings.error.message"
ERROR_RETRIABLE = "tidings.error.retriable"
SOURCE_TOPIC = "tidings.source.topic"
SOURCE_PARTITION = "tidings.source.partition"
SOURCE_OFFSET = "tidings.source.offset"
SOURCE_TIMESTAMP = "tidings.source.timestamp"
CONSUMER_GROUP = "tidings.consumer.group"
FAILED_AT = "tidings.failed.at"
FAILED_HOST = "tidings.failed.host"
MAX_ERROR_MESSAGE = 2000
REPLAYABLE = "tidings.replayable"
"""`false` on a dead letter whose value is not a record of its source topic (a broadcast's progress):
`tidings dlq replay` leaves it, where re-injecting it wrote that value into the topic."""


MAX_LETTER_BYTES = 1_048_576 - 1024
"""The largest dead letter copied whole: the broker's default `message.max.bytes` (1 MiB, also aiokafka's
`max_request_size`) less room for the batch's overhead. The record it holds fit its topic; the error
headers (up to about 3 KB) could take the copy over."""
VALUE_LEFT_OUT = "tidings.dlq.value_left_out"
"""`true` on a dead letter of a record too large to copy with the error headers (its value, its
headers and most of its key left out): read it at its source topic, partition, offset and time. Copied,
it failed `produce()` and the consumer stopped on the record at every restart."""


REQUESTED_AT = "tidings.requested_at"
"""Header: the log time (epoch ms) a request counts as made at, where its record was written later: a
digest of earlier requests, a dead letter replayed. `log_time` prefers it to the record's timestamp."""


MAX_LOG_MS = 253_402_300_799_999
"""The last millisecond of year 9999, the last a datetime holds."""
LOG_MS_DIGITS = len(str(MAX_LOG_MS))
"""Longer headers are not read: `int()` refuses over 4,300 digits, and an erasure whose header held
5,000 nines was dead-lettered instead of dated by its record."""


def log_time(record: Incoming) -> datetime | None:
    """When a record reached the log: its timestamp, which the router orders its inputs by, or the
    `REQUESTED_AT` header. Commands carry their request's (`requested_at`) and erasures are compared
    against it, so "requested before the erasure" means what it meant to the router. None when the
    record has no timestamp, or none a datetime can hold (a producer sets both: a header of year 10,000
    crash-looped the recipients projection on an erasure)."""
    stated = record.header(REQUESTED_AT)
    readable = stated is not None and stated.isascii() and stated.isdigit() and len(stated) <= LOG_MS_DIGITS
    ms = int(stated) if readable and stated is not None else None
    if ms is None or not 0 < ms <= MAX_LOG_MS:
        ms = record.timestamp_ms
    if not 0 < ms <= MAX_LOG_MS:
        return None
    return datetime.fromtimestamp(ms // 1000, UTC).replace(microsecond=ms % 1000 * 1000)


@dataclass(frozen=True, slots=True)
class Incoming:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Headers = field(default_factory=list)
    timestamp_ms: int = 0
    unreadable: str | None = None
    """Why the record's headers could not be read (they are left empty); None when they were."""

    def check_headers(self) -> None:
        """Raises UnreadableHeaders for a record whose headers could not be read: a processor must not
        act on a record without the metadata its producer gave it, so it is dead-lettered instead."""
        from tidings.errors import UnreadableHeaders

        if self.unreadable is not None:
            raise UnreadableHeaders(self.unreadable)

    def header(self, name: str) -> bytes | None:
        for k, v in self.headers:
            if k == name:
                return v
        return None

    def decode(self, codec: Codec | None = None) -> Event:
        from tidings.errors import TruncatedRecord

        if self.value is None:
            raise TruncatedRecord("record has no value (tombstone)")
        return (codec or default_codec()).decode(self.value)


def table_events(records: Iterable[Incoming], codec: Codec, what: str) -> Iterator[Event]:
    """The events of a compacted topic every process reads whole (the catalog, the destinations); an
    undecodable record is skipped with a warning, since one bad record must not stop every reader."""
    from tidings.errors import CodecError, InvalidEvent

    for record in records:
        try:
            yield record.decode(codec)
        except (CodecError, InvalidEvent) as exc:
            log.warning("ignoring undecodable %s record at offset %d: %s", what, record.offset, exc)


@dataclass(frozen=True, slots=True)
class Output:
    topic: str
    key: bytes | None
    value: bytes | None
    headers: Headers = field(default_factory=list)
    partition: int | None = None

    @classmethod
    def event(
        cls, topic: str, event: Event, *, traceparent: bytes | None = None, codec: Codec | None = None
    ) -> Output:
        value = (codec or default_codec()).encode(event)
        trace = traceparent or new_traceparent().encode()
        return cls(topic, event.key.encode(), value, [(TRACEPARENT, trace)])


MAX_RECORD_BYTES = 1_000_000
"""The largest record a handler may produce (key, value and headers): under the broker's default
`message.max.bytes` (1 MiB) even uncompressed. A larger output failed `produce()` after the handler had
returned, outside the record's poison handling, so the processor stopped on it at every restart; now it
makes the record that asked for it poison (a dead letter, and the handler's `on_poison`)."""


RECORD_OVERHEAD = 61 + 36
"""A record batch's header, and the most a record's own lengths, delta and attributes take as varints."""
HEADER_OVERHEAD = 10
"""The most a header's two length varints take."""


def _size(out: Output) -> int:
    """An upper bound on the record's size in a batch of its own, as a producer counts it against its
    request size: 600 empty headers took a dead letter under `MAX_LETTER_BYTES` by their bytes past
    aiokafka's limit by their lengths, and the gateway stopped on the record at every restart."""
    headers = sum(len(k.encode(errors="replace")) + len(v) + HEADER_OVERHEAD for k, v in out.headers)
    return RECORD_OVERHEAD + len(out.key or b"") + len(out.value or b"") + headers


def partition_for(key: str, partitions: int) -> int:
    """The partition the Java client's default partitioner (and aiokafka's, and librdkafka's
    `murmur2_random`) gives a key."""
    hashed: int = murmur2(key.encode())
    return (hashed & 0x7FFFFFFF) % partitions


def misplaced(record: Incoming, key: str, partitions: int | None) -> str | None:
    """Why `record` is not on the partition Kafka's murmur2 partitioner gives `key` (the key its
    handler keeps state under) among the topic's `partitions` (None: not known, nothing checked), or
    None when it is. A producer hashing another way (librdkafka's default CRC32, sarama's FNV-1a) or
    keying records otherwise put a recipient's events on a partition whose processor did not hold its
    state: a request went out without the recipient's preferences and suppressions, and an opt-out was
    folded into a state no request read."""
    if not partitions or (wanted := partition_for(key, partitions)) == record.partition:
        return None
    return (
        f"on partition {record.partition}, but Kafka's default (murmur2) partitioner puts key {key!r} on "
        f"{wanted} of {partitions}: produce with the event's key and a murmur2 partitioner "
        "(docs/producing.md), then replay it (tidings dlq replay)"
    )


def size_checked(outputs: Iterable[Output]) -> list[Output]:
    """The outputs, or InvalidEvent naming the first over `MAX_RECORD_BYTES`."""
    found = list(outputs)
    for out in found:
        size = _size(out)
        if size > MAX_RECORD_BYTES:
            raise InvalidEvent(
                f"a record for {out.topic} would be {size} bytes, over the {MAX_RECORD_BYTES} a record may be"
            )
    return found


Handler = Callable[[Incoming], Iterable[Output]]
PoisonHandler = Callable[[Incoming, BaseException], Iterable[Output]]


def dead_letter(
    record: Incoming, error: BaseException, group_id: str, topic: str = DLQ, error_type: str | None = None
) -> Output:
    """The original bytes and headers, plus headers naming the error (`error_type` when the error is
    rebuilt from a record of it) and where the record came from."""
    message = str(error) or type(error).__name__
    headers = [
        *record.headers,
        (ERROR_TYPE, (error_type or type(error).__name__).encode()),
        (ERROR_MESSAGE, message[:MAX_ERROR_MESSAGE].encode()),
        (ERROR_RETRIABLE, str(bool(getattr(error, "retriable", False))).lower().encode()),
        (SOURCE_TOPIC, record.topic.encode()),
        (SOURCE_PARTITION, str(record.partition).encode()),
        (SOURCE_OFFSET, str(record.offset).encode()),
        (SOURCE_TIMESTAMP, str(record.timestamp_ms).encode()),
        (CONSUMER_GROUP, group_id.encode()),
        (FAILED_AT, datetime.now(UTC).isoformat().encode()),
        (FAILED_HOST, f"{socket.gethostname()}:{os.getpid()}".encode()),
    ]
    letter = Output(topic, record.key, record.value, headers)
    if _size(letter) <= MAX_LETTER_BYTES:
        return letter
    kept = [*headers[len(record.headers) :], (REPLAYABLE, b"false"), (VALUE_LEFT_OUT, b"true")]
    return Output(topic, (record.key or b"")[:MAX_ERROR_MESSAGE] or None, None, kept)


def header_map(headers: Headers) -> dict[str, str]:
    return {k: v.decode(errors="replace") for k, v in headers}


def as_headers(raw: Any) -> Headers:
    if not raw:
        return []
    return [(k, v if isinstance(v, bytes) else (v or b"")) for k, v in raw]
