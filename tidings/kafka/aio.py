"""Asyncio Kafka clients for gateways (aiokafka): a consumer of client-neutral batches and a producer.

Consumers read `read_committed` with auto-commit off; the caller commits offsets it has fully handled.
The producer is idempotent; `flush()` waits for every record sent so far.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError

from tidings.config import Settings
from tidings.errors import KafkaUnavailable
from tidings.kafka.consumer import read_to_unreadable
from tidings.kafka.records import Incoming, Output, as_headers

TP = tuple[str, int]
COMMIT_TIMEOUT_S = 30.0
DELIVER_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0
log = logging.getLogger(__name__)


class _Revoked(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, revoked: Callable[[list[TP]], None]) -> None:
        self.revoked = revoked

    def on_partitions_revoked(self, revoked: Any) -> None:
        self.revoked([(tp.topic, tp.partition) for tp in revoked])

    def on_partitions_assigned(self, assigned: Any) -> None:
        return None


class AsyncConsumer:
    """`on_revoked` is called with the partitions a rebalance takes away, before they are assigned
    again (aiokafka revokes every partition at each rebalance): one given back starts afresh, not
    paused, from its committed offset, so what the caller kept about it no longer holds."""

    def __init__(
        self,
        settings: Settings,
        *,
        group_id: str,
        topics: Sequence[str],
        max_records: int = 500,
        on_revoked: Callable[[list[TP]], None] | None = None,
    ) -> None:
        self._settings, self._max_records, self._on_revoked = settings, max_records, on_revoked
        self._given: dict[TP, int] = {}
        self._rebalances = 0
        self._listener = _Revoked(self._revoked)
        self._consumer = AIOKafkaConsumer(
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
        self.subscribe(topics)

    def subscribe(self, topics: Sequence[str]) -> None:
        """Read these topics instead of those given at construction (before `start`)."""
        self._consumer.subscribe(topics=list(topics), listener=self._listener)

    def _revoked(self, tps: list[TP]) -> None:
        self._rebalances += 1
        for tp in tps:
            self._given.pop(tp, None)
        if self._on_revoked is not None:
            self._on_revoked(tps)

    async def start(self) -> None:
        await self._consumer.start()

    async def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """Leaves the group and closes, within `timeout` seconds. With the broker away, aiokafka 0.14's
        fetcher closes a fetch sleeping out its retry backoff by cancelling it and awaiting it, so its
        CancelledError came out of `stop()` though nobody cancelled the caller: the process stopping
        ended as if cancelled, skipping what it had left to close. That one is logged, not raised."""
        try:
            async with asyncio.timeout(timeout):
                await self._consumer.stop()
        except TimeoutError:
            log.warning("the consumer did not close within %g s; left as it was", timeout)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is None or task.cancelling():
                raise
            log.warning("the consumer's fetcher was cut off while closing (broker away); closed anyway")

    async def batch(self, timeout_ms: int = 200) -> dict[TP, list[Incoming]]:
        try:
            fetched = await self._consumer.getmany(timeout_ms=timeout_ms)
        except UnicodeDecodeError as exc:
            log.warning("a fetched record's header key is not UTF-8 (%s); reading around it", exc)
            return self._handed(await self._salvage())
        return self._handed(
            {
                (tp.topic, tp.partition): [
                    Incoming(
                        m.topic,
                        m.partition,
                        m.offset,
                        m.key,
                        m.value,
                        as_headers(m.headers),
                        m.timestamp,
                    )
                    for m in messages
                ]
                for tp, messages in fetched.items()
            }
        )

    def _handed(self, batch: dict[TP, list[Incoming]]) -> dict[TP, list[Incoming]]:
        for tp, records in batch.items():
            if records:
                self._given[tp] = records[-1].offset + 1
        return batch

    async def _salvage(self) -> dict[TP, list[Incoming]]:
        """aiokafka decodes header keys strictly: a record with a key that is not UTF-8 fails every fetch
        of its partition, and the records drained before it in the same call are dropped with their
        positions moved on. Each assigned partition is read again with confluent-kafka from the offset
        after the last record handed out (the committed one before any), up to and including such a
        record (`unreadable` set, for the caller to dead-letter); aiokafka resumes after what is
        returned. Paused partitions are left: aiokafka hands out nothing of theirs either.

        The caller runs meanwhile. What it did to a partition while the read went on stands, and the
        read's records of that partition are dropped: a hold (a pause and a seek back to a command to
        retry) overwritten by the seek past the read lost that command. After a rebalance everything
        read is dropped: partitions given back start again from their committed offsets, and one now
        another member's was handed out here too."""
        rebalances, given = self._rebalances, dict(self._given)
        starts: dict[TP, int | None] = {}
        paused = self._consumer.paused()
        for held in [tp for tp in self._consumer.assignment() if tp not in paused]:
            tp = (held.topic, held.partition)
            starts[tp] = self._given.get(tp)
            if starts[tp] is None:
                starts[tp] = await self._consumer.committed(held)
        found = await asyncio.to_thread(read_to_unreadable, self._settings, starts, self._max_records)
        if self._rebalances != rebalances:
            return {}
        paused, kept = self._consumer.paused(), {}
        for tp, start in starts.items():
            for held in self._held([tp]):
                if held in paused or self._given.get(tp) != given.get(tp):
                    continue
                if found[tp]:
                    self._consumer.seek(held, found[tp][-1].offset + 1)
                    kept[tp] = found[tp]
                elif start is None:
                    await self._consumer.seek_to_beginning(held)
                else:
                    self._consumer.seek(held, start)
        return kept

    async def commit(self, offsets: dict[TP, int]) -> bool:
        """Commits the offsets of the partitions still assigned; False when a rebalance took them all
        away, or all of them at once in the commit. The new owner of a partition taken away re-reads
        it from its last committed offset, which every caller here tolerates (its handling is
        idempotent); aiokafka refuses a whole commit naming one such partition, so it is left out,
        rather than leaving every other partition's commit behind with it. A commit the coordinator
        does not answer within `COMMIT_TIMEOUT_S` is given up (aiokafka retries it for as long as the
        coordinator is away, and a stopping gateway waited with it): the next commit covers it."""
        held = set(self._consumer.assignment())
        kept = {tp: o for (t, p), o in offsets.items() if (tp := TopicPartition(t, p)) in held}
        if not kept:
            return not offsets
        try:
            await asyncio.wait_for(self._consumer.commit(kept), COMMIT_TIMEOUT_S)
        except (CommitFailedError, IllegalStateError) as exc:
            log.warning("offset commit refused after a rebalance: %s", exc)
            return False
        except TimeoutError:
            log.warning(
                "offset commit not answered within %.0f s; the next commit covers it", COMMIT_TIMEOUT_S
            )
            return False
        return True

    def _held(self, tps: Sequence[TP]) -> list[TopicPartition]:
        """The partitions of `tps` still assigned. A rebalance runs in the background between a batch's
        awaits, and aiokafka raises on a partition it took away; the new owner reads that one from its
        committed offset anyway."""
        assigned = self._consumer.assignment()
        return [TopicPartition(*tp) for tp in tps if TopicPartition(*tp) in assigned]

    def seek(self, tp: TP, offset: int) -> None:
        for held in self._held([tp]):
            self._consumer.seek(held, offset)
            self._given[tp] = offset

    def pause(self, tps: Sequence[TP]) -> None:
        self._consumer.pause(*self._held(tps))

    def resume(self, tps: Sequence[TP]) -> None:
        self._consumer.resume(*self._held(tps))

    def holds(self, tp: TP) -> bool:
        """Whether the partition is still assigned to this consumer."""
        return TopicPartition(*tp) in self._consumer.assignment()

    def assignment(self) -> list[TP]:
        return [(tp.topic, tp.partition) for tp in self._consumer.assignment()]

    async def lag(self) -> dict[TP, int]:
        """Records behind the last stable offset per assigned partition, from the fetched metadata (no
        round trip); a partition not fetched yet is left out."""
        found = {}
        for tp in list(self._consumer.assignment()):
            try:
                end = self._consumer.last_stable_offset(tp)
                if end is not None:
                    found[(tp.topic, tp.partition)] = max(0, end - await self._consumer.position(tp))
            except IllegalStateError:
                continue
        return found


class AsyncProducer:
    """An idempotent producer. `start()` fails when no broker answers, which suits a gateway (it has
    nothing to do without Kafka). `connect()` keeps trying in the background instead: the HTTP edge
    must come up and answer `/healthz` and `/readyz` while Kafka is away, and until it is connected
    sending raises KafkaUnavailable, which the edge answers with 503."""

    RETRY_S = (0.5, 5.0)

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._producer: AIOKafkaProducer | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._pending: list[asyncio.Future[Any]] = []

    def _client(self) -> AIOKafkaProducer:
        return AIOKafkaProducer(
            bootstrap_servers=self._settings.kafka_bootstrap,
            enable_idempotence=True,
            acks="all",
            linger_ms=5,
            client_id=self._settings.client_id,
        )

    async def start(self) -> None:
        producer = self._client()
        try:
            await producer.start()
        except BaseException:
            await producer.stop()
            raise
        self._producer = producer

    async def connect(self, wait: float = 5.0) -> bool:
        """Connect, retrying with backoff in the background until a broker answers; wait up to `wait`
        seconds for the first success, so a process whose Kafka is up starts connected. True if it is."""
        self._connecting = asyncio.create_task(self._keep_connecting(), name="kafka-connect")
        await asyncio.wait({self._connecting}, timeout=wait)
        return self._producer is not None

    async def _keep_connecting(self) -> None:
        """Any failure to start is retried: a task that died on an unexpected error would leave the
        process serving 503 and reporting itself live for ever, with nothing in the log."""
        delay, most = self.RETRY_S
        while True:
            try:
                await self.start()
                log.info("connected to Kafka at %s", self._settings.kafka_bootstrap)
                return
            except Exception as exc:
                log.warning(
                    "Kafka at %s not reachable (%s); retrying in %.1f s",
                    self._settings.kafka_bootstrap,
                    exc,
                    delay,
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, most)

    @property
    def connected(self) -> AIOKafkaProducer:
        if self._producer is None:
            raise KafkaUnavailable(f"not connected to Kafka at {self._settings.kafka_bootstrap} yet")
        return self._producer

    async def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """Waits up to `timeout` seconds for the records in flight, then closes. With the broker away
        the wait had no end, and a process asked to stop never did: its supervisor killed it at the end
        of its grace period. Nothing is lost by giving up: every sender awaits its own record's
        acknowledgement before it reports success or commits what the record answers for. A record
        that failed is logged: it was its sender's to handle, and raised here it skipped the closing
        of the process's other clients."""
        if self._connecting is not None and not self._connecting.done():
            self._connecting.cancel()
            await asyncio.gather(self._connecting, return_exceptions=True)
        if self._producer is None:
            return
        try:
            async with asyncio.timeout(timeout):
                try:
                    await self.flush()
                except KafkaError as exc:
                    log.warning("a record in flight at the stop was not acknowledged: %s", exc)
                await self._producer.stop()
        except TimeoutError:
            log.warning("Kafka did not acknowledge the records in flight within %g s; closed anyway", timeout)

    async def send(self, out: Output) -> asyncio.Future[Any]:
        """Queues a record; the returned future resolves when the broker acknowledged it."""
        future: asyncio.Future[Any] = await self.connected.send(
            out.topic, out.value, out.key, partition=out.partition, headers=list(out.headers)
        )
        self._pending = [f for f in self._pending if not f.done()]
        self._pending.append(future)
        return future

    async def deliver(self, *records: Output, timeout: float = DELIVER_TIMEOUT_S) -> None:
        """Send the records and wait until the broker acknowledged every one; KafkaUnavailable if it
        did not within `timeout` seconds (the caller answers "try again": an idempotent retry produces
        nothing twice). aiokafka retries a batch for as long as its broker is away: without the
        deadline a request waited out the whole outage, and its client gave up first, not knowing
        whether it was accepted. A record not acknowledged in time stays queued, and may still be
        written: the retry's duplicate is what idempotency keys and event ids are for."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            async with asyncio.timeout(timeout):
                acks = [await self.send(r) for r in records]
            if acks:
                _, waiting = await asyncio.wait(acks, timeout=max(0.0, deadline - loop.time()))
                if waiting:
                    raise TimeoutError
            for ack in acks:
                ack.result()
        except TimeoutError:
            raise KafkaUnavailable(f"Kafka did not acknowledge within {timeout:g} s") from None
        except KafkaError as exc:
            raise KafkaUnavailable(f"Kafka did not acknowledge: {exc}") from exc

    async def flush(self) -> None:
        """Until every record still in flight is settled, then the first failure among them. A record
        settled before the call is its sender's to handle: `send()` hands out the future, and the
        gateways and `deliver()` await their own."""
        pending, self._pending = self._pending, []
        failures = [
            r for r in await asyncio.gather(*pending, return_exceptions=True) if isinstance(r, BaseException)
        ]
        if failures:
            raise failures[0]

    async def reachable(self) -> int:
        """The number of brokers in a fresh metadata response; raises KafkaUnavailable without one."""
        try:
            cluster = await self.connected.client.fetch_all_metadata()
        except KafkaUnavailable:
            raise
        except Exception as exc:
            raise KafkaUnavailable(f"no broker answered: {exc}") from exc
        return len(cluster.brokers())
