"""Consumes topics into PostgreSQL: the shared runner of every projection.

Each batch is applied by the projection and its next offsets written in one PostgreSQL transaction, so a
projection killed at any moment resumes exactly where its rows end. A batch is decoded before its
transaction, on the consuming thread, while the previous batch's transaction runs (see
tidings.kafka.stored); a projection may decode records into whatever its `apply` takes, rows rather than
events. Undecodable records go to the DLQ (acknowledged before their batch's transaction commits) and
are skipped. After a database failure the runner reconnects and the loop re-reads from the offsets
PostgreSQL holds. A statement PostgreSQL refuses for what a record holds (a key too long for its index,
a value out of range) fails the same way on every retry, so the batch is written again one record per
transaction, and the record it refuses goes to the DLQ with PostgreSQL's error. Any other error (a
table missing before `tidings db migrate`) stops the projection, and so does a topic deleted and created
again since the offsets were stored (its id changed). `rebuild` truncates the projection's tables and
offsets in one transaction and replays its topics from offset 0 to their current end.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

import psycopg

from projections.db import connect
from tidings.codec import default_codec
from tidings.config import Settings
from tidings.errors import TidingsError, TopicRecreated, TruncatedRecord, UnknownTopic
from tidings.events import Event
from tidings.kafka import EventProducer, Incoming, StoredOffsetsLoop, TopicFollower, log_ordered
from tidings.kafka.consumer import unknown_topic
from tidings.kafka.records import dead_letter
from tidings.kafka.stored import Batch, RecordBatch
from tidings.metrics import Sample, lag_samples
from tidings.topics import Names, names

Cursor = psycopg.Cursor[tuple[Any, ...]]
Connection = psycopg.Connection[tuple[Any, ...]]
log = logging.getLogger(__name__)
TRANSIENT = ("08", "40", "53", "55", "57", "58", "XX")
"""SQLSTATE classes a retry can clear: connection, rollback (serialization, deadlock), resources,
object in use (locks), operator intervention (shutdown, cancel), system and internal errors."""


class DatabaseUnavailable(TidingsError):
    retriable = True


class HistoryLost(TidingsError):
    """A rebuild would drop rows for good: its topics no longer hold their first records (retention,
    `TIDINGS_PERSONAL_DATA_DAYS`, deleted records), and the tables are the only copy left of them."""


class StaleOffsets(TidingsError):
    """Another writer stored offsets past this batch: a consumer the group has replaced, or a rebuild
    and a running projection at once. Retriable: the loop rewinds to the offsets PostgreSQL holds."""

    retriable = True


REFUSED = ("21", "22", "23", "54")
"""SQLSTATE classes of a value PostgreSQL refuses: cardinality, data (out of range, bad encoding),
integrity constraints, program limits (an index row too large). What the record holds, not the setup."""


def transient(exc: psycopg.Error) -> bool:
    """Whether the same statement may succeed later. Without a SQLSTATE the error is psycopg's own: a
    lost connection is transient, a value it cannot send (a client-side DataError) is not."""
    if exc.sqlstate is None:
        return isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError)
    return exc.sqlstate[:2] in TRANSIENT


def refused(exc: psycopg.Error | ValueError) -> bool:
    """Whether PostgreSQL (or psycopg, before sending) refused a value, or the fold did (a ValueError:
    a value no serializer takes); any other error (a missing column before `tidings db migrate`, a
    permission) is the setup's and stops the projection rather than dead-letter every record."""
    if isinstance(exc, ValueError):
        return True
    if exc.sqlstate is None:
        return isinstance(exc, psycopg.DataError)
    return exc.sqlstate[:2] in REFUSED


@dataclass
class Prepared:
    events: list[Any]
    offsets: dict[tuple[str, int], int]
    batch: Batch
    kept: list[int]
    """The batch index of each event's record, to dead-letter the record PostgreSQL refuses."""


class Projection:
    """A table family fed by topics. Subclasses set `name`, `tables`, `sources` and implement `apply`."""

    registry: ClassVar[dict[str, type[Projection]]] = {}
    by_record: ClassVar[bool] = False
    """Decode through `decode_record`, which sees the whole record (its log time); slower."""
    name: ClassVar[str]
    tables: ClassVar[tuple[str, ...]]
    sources: ClassVar[tuple[str, ...]]  # attribute names of tidings.topics.Names

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        Projection.registry[cls.name] = cls

    def topics(self, n: Names) -> list[str]:
        return [getattr(n, source) for source in self.sources]

    def decode(self, value: bytes | None) -> Any:
        """What `apply` receives for a record; raises CodecError or InvalidEvent for a poison record."""
        if value is None:
            raise TruncatedRecord("record has no value (tombstone)")
        return default_codec().decode(value)

    def decode_record(self, record: Incoming) -> Any:
        return self.decode(record.value)

    def apply(self, cur: Cursor, events: list[Any]) -> None:
        raise NotImplementedError


@dataclass
class Runner:
    settings: Settings
    projection: Projection
    batch_size: int = 10_000

    def __post_init__(self) -> None:
        self.conn: Connection = connect(self.settings.postgres_dsn)
        self.producer = EventProducer(self.settings)
        self.dlq = names(self.settings).dlq
        self.dead_letters = 0
        self.group = f"{self.settings.topic_prefix}tidings.projection.{self.projection.name}"

    @contextmanager
    def transaction(self) -> Iterator[Cursor]:
        """A transaction on the connection, reconnecting first if a failure closed it."""
        try:
            if self.conn.closed:
                self.conn = connect(self.settings.postgres_dsn)
            with self.conn.transaction(), self.conn.cursor() as cur:
                yield cur
        except psycopg.Error as exc:
            if not transient(exc) and not self.conn.closed:
                raise
            self.conn.close()
            raise DatabaseUnavailable(str(exc)) from exc

    def load_offsets(self, partitions: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
        with self.transaction() as cur:
            rows = cur.execute(
                "SELECT topic, partition, next_offset FROM projection_offsets WHERE projection = %s",
                (self.projection.name,),
            ).fetchall()
        return {(t, p): o for t, p, o in rows}

    def pin_topics(self, ids: dict[str, str]) -> None:
        """Record the ids of the topics the offsets count, or stop if one has changed since."""
        with self.transaction() as cur:
            stored = dict(
                cur.execute(
                    "SELECT topic, topic_id FROM projection_topics WHERE projection = %s",
                    (self.projection.name,),
                ).fetchall()
            )
            changed = sorted(t for t, i in ids.items() if stored.get(t, i) != i)
            if changed:
                raise TopicRecreated(
                    f"{self.projection.name}: {', '.join(changed)} was deleted and created again since its "
                    f"offsets were stored; rebuild it (tidings projections rebuild {self.projection.name})"
                )
            cur.executemany(
                "INSERT INTO projection_topics (projection, topic, topic_id) VALUES (%s, %s, %s) "
                "ON CONFLICT (projection, topic) DO NOTHING",
                [(self.projection.name, t, i) for t, i in ids.items() if t not in stored],
            )

    def prepare(self, batch: Batch) -> Prepared:
        """Decode a batch outside the transaction; poison records go to the DLQ, acknowledged. Decoding
        is pure, so any error in it is the record's, whatever its type: raised, it stopped the loop
        before the offset moved, and every restart met the same record. But for MemoryError: under
        `TIDINGS_MEMORY_LIMIT_MB` it is the process's, and a valid record was dead-lettered for it."""
        events: list[Any] = []
        kept: list[int] = []
        poison = []
        p = self.projection
        for i, value in enumerate(batch.values()):
            try:
                events.append(p.decode_record(batch.record(i)) if p.by_record else p.decode(value))
                kept.append(i)
            except MemoryError:
                raise
            except Exception as exc:
                poison.append(dead_letter(batch.record(i), exc, self.group, self.dlq))
        self._dead_letter(poison)
        return Prepared(events, batch.next_offsets(), batch, kept)

    def _dead_letter(self, letters: list[Any]) -> None:
        for letter in letters:
            self.producer.produce(letter)
        if letters:
            self.producer.flush()
            self.dead_letters += len(letters)

    def write(self, prepared: Prepared) -> None:
        try:
            self._commit(prepared.events, prepared.offsets, prepared.batch.first_offsets())
        except (psycopg.Error, ValueError) as exc:
            if not refused(exc):
                raise
            log.warning("%s: batch refused (%s), writing it one record at a time", self.projection.name, exc)
            self._isolate(prepared)

    def _isolate(self, prepared: Prepared) -> None:
        """Each record in its own transaction with its offset; the one refused goes to the DLQ."""
        for event, i in zip(prepared.events, prepared.kept, strict=True):
            record = prepared.batch.record(i)
            tp = (record.topic, record.partition)
            offsets, first = {tp: record.offset + 1}, {tp: record.offset}
            try:
                self._commit([event], offsets, first)
            except (psycopg.Error, ValueError) as exc:
                if not refused(exc):
                    raise
                where = (record.topic, record.partition, record.offset)
                log.warning("%s: dead-lettering %s[%d]@%d: %s", self.projection.name, *where, exc)
                self._dead_letter([dead_letter(record, exc, self.group, self.dlq)])
                self._commit([], offsets, first)
        self._commit([], prepared.offsets, prepared.offsets)

    def _commit(
        self, events: list[Any], offsets: dict[tuple[str, int], int], first: dict[tuple[str, int], int]
    ) -> None:
        """Rows and offsets in one transaction, fenced: the batch's partitions' offset rows are locked
        and none may already be past the batch's first record."""
        with self.transaction() as cur:
            self._fence(cur, first)
            if events:
                self.projection.apply(cur, events)
            cur.executemany(
                "INSERT INTO projection_offsets (projection, topic, partition, next_offset) "
                "VALUES (%s, %s, %s, %s) ON CONFLICT (projection, topic, partition) "
                "DO UPDATE SET next_offset = EXCLUDED.next_offset",
                [(self.projection.name, t, p, o) for (t, p), o in offsets.items()],
            )

    def _fence(self, cur: Cursor, first: dict[tuple[str, int], int]) -> None:
        pairs = sorted(first)
        stored = cur.execute(
            "SELECT o.topic, o.partition, o.next_offset FROM projection_offsets o "
            "JOIN unnest(%s::text[], %s::int[]) AS b (topic, partition) USING (topic, partition) "
            "WHERE o.projection = %s ORDER BY o.topic, o.partition FOR UPDATE OF o",
            ([t for t, _ in pairs], [p for _, p in pairs], self.projection.name),
        ).fetchall()
        ahead = [(t, p, o) for t, p, o in stored if (t, p) in first and o > first[t, p]]
        if ahead:
            t, p, o = ahead[0]
            raise StaleOffsets(f"{self.projection.name}: {t}[{p}] is stored at {o}, past {first[t, p]}")

    def store(self, batch: list[Incoming]) -> None:
        self.write(self.prepare(RecordBatch(batch)))

    def run(self, *, idle_exit_after: float | None = None) -> StoredOffsetsLoop[Prepared]:
        loop = StoredOffsetsLoop(
            self.settings,
            group_id=self.group,
            topics=self.projection.topics(names(self.settings)),
            prepare=self.prepare,
            write=self.write,
            load_offsets=self.load_offsets,
            pin_topics=self.pin_topics,
            batch_size=self.batch_size,
        )
        self._loop = loop
        loop.run(idle_exit_after=idle_exit_after)
        return loop

    def stop(self) -> None:
        if getattr(self, "_loop", None):
            self._loop.stop()

    def samples(self) -> list[Sample]:
        loop = getattr(self, "_loop", None)
        labels = {"projection": self.projection.name}
        committed = Sample("records_committed", loop.handled if loop else 0, labels=labels)
        dead = Sample("dead_letters", self.dead_letters, labels=labels)
        return [committed, dead, *lag_samples(loop.lag if loop else {})]

    def rebuild(
        self, progress: Callable[[int, int], None] = lambda done, total: None, *, drop_lost: bool = False
    ) -> tuple[int, float]:
        """Truncate and replay from offset 0, each partition number's records of the sources in log-time
        order (`log_ordered`); returns (records, seconds). HistoryLost, before anything is
        truncated, when a topic no longer starts at offset 0, unless `drop_lost`: outcomes are kept 30
        days, so a rebuild emptied every older notification's deliveries and timeline without a word.
        The topics' ends are read
        first: truncating before the broker answered left the tables empty through a Kafka outage (the
        recipients table inbound STOP is matched against, the suppressions the API lists). So is
        each topic's existence: a wrong prefix or cluster emptied the tables and reported success, and
        the live projection then went on from its position into them."""
        started = time.monotonic()
        done = 0
        followers = [TopicFollower(self.settings, t) for t in self.projection.topics(names(self.settings))]
        try:
            if missing := [f.topic for f in followers if not f.exists]:
                raise UnknownTopic(unknown_topic(self.settings, ", ".join(missing)))
            lost = {f.topic: n for f in followers if (n := f.start_total())}
            if lost and not drop_lost:
                raise HistoryLost(
                    f"{self.projection.name}: "
                    + ", ".join(f"{n:,} records of {t}" for t, n in sorted(lost.items()))
                    + " are gone from Kafka (retention), and the rows made from them would go with the "
                    "truncate; rebuild only to drop them"
                )
            total = sum(f.end_total() for f in followers)
            with self.transaction() as cur:
                cur.execute(f"TRUNCATE {', '.join(self.projection.tables)}".encode())
                cur.execute("DELETE FROM projection_offsets WHERE projection = %s", (self.projection.name,))
                cur.execute("DELETE FROM projection_topics WHERE projection = %s", (self.projection.name,))
            for batch in log_ordered(followers, self.batch_size):
                try:
                    self.store(batch)
                except StaleOffsets as exc:
                    raise StaleOffsets(
                        f"another process writes {self.projection.name}: stop `tidings run projection "
                        f"{self.projection.name}` before rebuilding it, then rebuild again ({exc})"
                    ) from None
                done += len(batch)
                progress(done, total)
        finally:
            for f in followers:
                f.close()
        return done, time.monotonic() - started

    def close(self) -> None:
        self.producer.close()
        self.conn.close()


def grouped(events: Iterable[Event], kind: type[Event]) -> list[Any]:
    return [e for e in events if isinstance(e, kind)]
