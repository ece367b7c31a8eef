"""Consumes confluent-kafka messages and assignments; produces Incoming records, the offsets to commit or
rewind to, and the consumer's lag. Shared by the transactional, at-least-once and stored-offset loops."""

from __future__ import annotations

import logging
import operator
from typing import cast

from confluent_kafka import Consumer, KafkaException, Message, TopicPartition

from tidings.kafka.records import Incoming, Output, as_headers

log = logging.getLogger(__name__)


_read_headers = operator.methodcaller("headers")
"""`Message.headers()` called through the C API, which checks what it returns. On a header key that is not
UTF-8, confluent-kafka returns a list holding a NULL with the UnicodeDecodeError pending: a call checked
raises SystemError from it, but the interpreter's specialised call (once a call site is warm) hands the
list on, and reading it crashed the process (SIGSEGV). A later call returns the cached list unchecked,
so a message's headers are read once."""


def to_incoming(msg: Message) -> Incoming:
    """The record, with `unreadable` set and no headers when a header key is not UTF-8 (a producer
    writing byte keys, as sarama and franz-go can); reading those headers crashed the consumer on the
    record at every restart."""
    unreadable = None
    try:
        headers = as_headers(_read_headers(msg))
    except (SystemError, UnicodeDecodeError) as exc:
        headers, unreadable = [], f"a header key is not UTF-8 ({exc.__cause__ or exc})"
    return Incoming(
        cast(str, msg.topic()),
        cast(int, msg.partition()),
        cast(int, msg.offset()),
        msg.key(),
        msg.value(),
        headers,
        msg.timestamp()[1],
        unreadable,
    )


def is_retriable(exc: BaseException) -> bool:
    return bool(getattr(exc, "retriable", False))


def partition_of(out: Output) -> int:
    """The explicit partition, or -1 (librdkafka's 'unassigned': the default partitioner decides)."""
    return -1 if out.partition is None else out.partition


def next_offsets(batch: list[Incoming]) -> list[TopicPartition]:
    last: dict[tuple[str, int], int] = {}
    for r in batch:
        last[(r.topic, r.partition)] = max(last.get((r.topic, r.partition), -1), r.offset)
    return [TopicPartition(t, p, o + 1) for (t, p), o in last.items()]


def first_offsets(batch: list[Incoming]) -> list[TopicPartition]:
    first: dict[tuple[str, int], int] = {}
    for r in batch:
        first.setdefault((r.topic, r.partition), r.offset)
    return [TopicPartition(t, p, o) for (t, p), o in first.items()]


def lag_of(consumer: Consumer) -> dict[tuple[str, int], int]:
    """Records behind the fetched end per assigned partition (cached watermarks, no broker round trip)."""
    lag = {}
    try:
        assigned = consumer.assignment()
        for tp in consumer.position(assigned) if assigned else []:
            high = consumer.get_watermark_offsets(tp, cached=True)[1]
            if high >= 0 and tp.offset >= 0:
                lag[(tp.topic, tp.partition)] = max(0, high - tp.offset)
    except KafkaException as exc:
        log.debug("lag not measured: %s", exc)
    return lag
