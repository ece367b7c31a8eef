"""Reading a topic to its end without a group, on the real broker: partitions retention emptied."""

import time
from collections.abc import Callable

from confluent_kafka import TopicPartition

from tidings.config import Settings
from tidings.kafka import EventProducer, Output, TopicFollower, end_offsets, read_partition
from tidings.kafka.admin import admin


def test_a_partition_retention_emptied_counts_as_read_to_its_end(
    stack: Settings, topic_factory: Callable[..., str]
) -> None:
    """Its start equals its end and no record is ever consumed, so its position stays unset: the
    follower waited the whole timeout and raised, failing `tidings audit`, `replay`, `dlq` and rebuilds
    on a quiet partition of a topic kept 30 days; a state store's restore did the same."""
    topic = topic_factory("emptied", partitions=2)
    with EventProducer(stack) as producer:
        for i in range(6):
            producer.produce(Output(topic, f"k{i}".encode(), b"v"))
    ends = end_offsets(stack, topic)
    assert sum(ends.values()) == 6
    client = admin(stack)
    emptied = client.delete_records([TopicPartition(topic, p, e) for p, e in ends.items() if e])
    for future in emptied.values():
        future.result(timeout=30)
    started = time.monotonic()
    follower = TopicFollower(stack, topic)
    try:
        assert follower.catch_up(timeout=10) == []
    finally:
        follower.close()
    assert list(read_partition(stack, topic, 0, timeout=10)) == []
    assert time.monotonic() - started < 8
