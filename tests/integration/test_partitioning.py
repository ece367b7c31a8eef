"""Every producer tidings runs puts a key on the same partition (co-partitioning across clients).

The SDK and processors produce with librdkafka, the gateways and the HTTP edge with aiokafka, and other
services with the Java client. librdkafka's default partitioner (CRC32) disagreed with the other two
(murmur2) for most keys, so feedback produced by a gateway mostly reached a partition whose router did
not hold that recipient: a hard bounce or a dead push token was folded into the wrong state and never
suppressed anything. `partitioner=murmur2_random` makes librdkafka agree with Java and aiokafka.
"""

import asyncio
from collections.abc import Callable
from dataclasses import replace

from tests.integration.conftest import read_all
from tests.integration.test_router import commands, decoded, publish_catalog, run_router
from tidings.client import Client, notification_request
from tidings.config import Settings
from tidings.events import PreferencesUpdated
from tidings.kafka import EventProducer, Output
from tidings.kafka.aio import AsyncProducer
from tidings.kafka.records import header_map, partition_for
from tidings.topics import names

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


def test_the_router_dead_letters_an_event_on_another_partition_than_its_key_hashes_to(
    topology: Settings,
) -> None:
    """A producer hashing with CRC32 put a recipient's opt-out on a partition whose router never saw
    its requests, and its requests on one that did not know the opt-out: the mail went out. The event
    is dead-lettered with the reason (and a request REJECTED), and `tidings dlq replay` places it."""
    s = topology
    publish_catalog(s)
    n = names(s)
    wrong = (partition_for("acme/ada", s.partitions) + 1) % s.partitions
    muted = PreferencesUpdated(tenant_id="acme", recipient_id="ada", muted=True)
    shipped = {"order": "A-1", "carrier": "DHL"}
    with Client(s) as client:
        client.update_recipient(tenant="acme", recipient="ada", email="ada@example.com")
        client.update_recipient(tenant="acme", recipient="bob", email="bob@example.com")
        good = client.send(tenant="acme", recipient="bob", type="order.shipped", data=shipped)
    request = notification_request(tenant="acme", recipient="ada", type="order.shipped", data=shipped)
    with EventProducer(s) as producer:
        producer.produce(replace(Output.event(n.recipients, muted), partition=wrong))
        producer.produce(replace(Output.event(n.requested, request), partition=wrong))
    run_router(s)
    assert {c.notification_id for c in commands(s)} == {good}
    letters = [header_map(r.headers) for r in read_all(s, n.dlq)]
    assert len(letters) == 2 and all(
        f"on partition {wrong}, but" in h["tidings.error.message"] for h in letters
    )
    rejected = [o for o in decoded(s, n.outcomes) if getattr(o, "status", None) == "REJECTED"]
    assert [o.notification_id for o in rejected] == [request.notification_id]
