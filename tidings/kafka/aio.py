"""Asyncio Kafka clients for gateways (aiokafka): a consumer of client-neutral batches and a producer.

Consumers read `read_committed` with auto-commit off; the caller commits offsets it has fully handled.
The producer is idempotent; `flush()` waits for every record sent so far.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError

from tidings.config import Settings
from tidings.errors import KafkaUnavailable
from tidings.kafka.records import Incoming, Output

TP = tuple[str, int]
log = logging.getLogger(__name__)


class AsyncConsumer:
    def __init__(
        self, settings: Settings, *, group_id: str, topics: Sequence[str], max_records: int = 500
    ) -> None:
        self._consumer = AIOKafkaConsumer(
            *topics,
            bootstrap_servers=settings.kafka_bootstrap,
            group_id=group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            client_id=settings.client_id,
            session_timeout_ms=10_000,
            heartbeat_interval_ms=1_000,
            max_poll_records=max_records,
        )

    async def start(self) -> None:
        await self._consumer.start()

    async def stop(self) -> None:
        await self._consumer.stop()

    async def batch(self, timeout_ms: int = 200) -> dict[TP, list[Incoming]]:
        fetched = await self._consumer.getmany(timeout_ms=timeout_ms)
        return {
            (tp.topic, tp.partition): [
                Incoming(
                    m.topic,
                    m.partition,
                    m.offset,
                    m.key,
                    m.value,
                    [(k, v) for k, v in m.headers],
                    m.timestamp,
                )
                for m in messages
            ]
            for tp, messages in fetched.items()
        }

    async def commit(self, offsets: dict[TP, int]) -> bool:
        """False when a rebalance took the partitions away first: the new owner re-reads from the
        last committed offsets, which every caller here tolerates (its handling is idempotent)."""
        if not offsets:
            return True
        try:
            await self._consumer.commit({TopicPartition(t, p): o for (t, p), o in offsets.items()})
        except (CommitFailedError, IllegalStateError) as exc:
            log.warning("offset commit refused after a rebalance: %s", exc)
            return False
        return True

    def seek(self, tp: TP, offset: int) -> None:
        self._consumer.seek(TopicPartition(*tp), offset)

    def pause(self, tps: Sequence[TP]) -> None:
        self._consumer.pause(*(TopicPartition(*tp) for tp in tps))

    def resume(self, tps: Sequence[TP]) -> None:
        self._consumer.resume(*(TopicPartition(*tp) for tp in tps))

    def assignment(self) -> list[TP]:
        return [(tp.topic, tp.partition) for tp in self._consumer.assignment()]


class AsyncProducer:
    def __init__(self, settings: Settings) -> None:
        self._producer = AIOKafkaProducer(
            bootstrap_servers=settings.kafka_bootstrap,
            enable_idempotence=True,
            acks="all",
            linger_ms=5,
            client_id=settings.client_id,
        )
        self._pending: list[asyncio.Future[Any]] = []

    async def start(self) -> None:
        await self._producer.start()

    async def stop(self) -> None:
        await self.flush()
        await self._producer.stop()

    async def send(self, out: Output) -> asyncio.Future[Any]:
        """Queues a record; the returned future resolves when the broker acknowledged it."""
        future: asyncio.Future[Any] = await self._producer.send(
            out.topic, out.value, out.key, partition=out.partition, headers=list(out.headers)
        )
        self._pending = [f for f in self._pending if not f.done()]
        self._pending.append(future)
        return future

    async def deliver(self, *records: Output) -> None:
        """Send the records and wait until the broker acknowledged every one; KafkaUnavailable if it
        did not (the caller answers "try again": an idempotent retry produces nothing twice)."""
        try:
            acks = [await self.send(r) for r in records]
            for ack in acks:
                await ack
        except KafkaError as exc:
            raise KafkaUnavailable(f"Kafka did not acknowledge: {exc}") from exc

    async def flush(self) -> None:
        pending, self._pending = self._pending, []
        await asyncio.gather(*pending)

    async def reachable(self) -> int:
        """The number of brokers in a fresh metadata response; raises KafkaUnavailable without one."""
        try:
            cluster = await self._producer.client.fetch_all_metadata()
        except Exception as exc:
            raise KafkaUnavailable(f"no broker answered: {exc}") from exc
        return len(cluster.brokers())
