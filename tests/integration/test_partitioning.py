"""Every producer tidings runs puts a key on the same partition (co-partitioning across clients).

The SDK and processors produce with librdkafka, the gateways and the HTTP edge with aiokafka, and other
services with the Java client. librdkafka's default partitioner (CRC32) disagreed with the other two
(murmur2) for most keys, so feedback produced by a gateway mostly reached a partition whose router did
not hold that recipient: a hard bounce or a dead push token was folded into the wrong state and never
suppressed anything. `partitioner=murmur2_random` makes librdkafka agree with Java and aiokafka.
"""

import asyncio
from collections.abc import Callable

from tests.integration.conftest import read_all
from tidings.config import Settings
from tidings.kafka import EventProducer, Output
from tidings.kafka.aio import AsyncProducer

KEYS = [f"acme/user-{i}".encode() for i in range(200)]


def test_librdkafka_and_aiokafka_producers_agree_on_partitions(
    stack: Settings, topic_factory: Callable[..., str]
) -> None:
    sync_topic, async_topic = topic_factory("sync", partitions=6), topic_factory("async", partitions=6)
    with EventProducer(stack) as producer:
        for key in KEYS:
            producer.produce(Output(sync_topic, key, b"v"))

    async def produce_async() -> None:
        producer = AsyncProducer(stack)
        await producer.start()
        try:
            for key in KEYS:
                await producer.send(Output(async_topic, key, b"v"))
        finally:
            await producer.stop()

    asyncio.run(produce_async())
    placed_sync = {r.key: r.partition for r in read_all(stack, sync_topic)}
    placed_async = {r.key: r.partition for r in read_all(stack, async_topic)}
    assert set(placed_sync) == set(KEYS) and len(set(placed_sync.values())) == 6
    assert placed_sync == placed_async
