"""Per-partition key/value state of a processor, backed by a compacted changelog topic.

The Kafka Streams model: partition p of the changelog holds the state of input partition p (inputs are
co-partitioned). Writes are staged during a batch, written to the changelog inside the batch's
transaction, and applied to memory only when that transaction commits; an abort drops them, and a poison
record's staged writes are dropped alone. On assignment a partition's state is restored from its
changelog (read_committed, last value per key wins) before any of its input is processed.

Changelog values are 8 bytes of big-endian expiry (epoch ms, 0 = never) followed by the encoded value;
a tombstone deletes. Expired entries are invisible at once and purged with tombstones periodically.
Values live in memory: fine for recipient state and dedupe ids at this scale, not for billions of keys.
`version` counts the changes that are not writes (a restore, a drop, an aborted batch), so an index kept
beside a store (`DueKeys`) knows when to rebuild it. A poison record's rolled-back writes do not count:
such an index holds a superset of the live keys, and a record only adds to it (keys leave it only in a
punctuation, which has no per-record rollback), so a rebuild per poison record would only cost a sort.
"""

from __future__ import annotations

import heapq
import logging
import struct
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Generic, TypeVar, cast

from tidings.errors import UnreadableState
from tidings.kafka.records import Incoming, Output

V = TypeVar("V")
_EXPIRY = struct.Struct(">q")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Unreadable:
    """A restored value `decode` refused, kept in its key's place: `get` raises UnreadableState for it."""

    why: str


_MISSING = object()
PURGE_INTERVAL_S = 60.0


class Store(Generic[V]):
    def __init__(
        self,
        topic: str,
        *,
        encode: Callable[[V], bytes],
        decode: Callable[[bytes], V],
        ttl: timedelta | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.topic = topic
        self.encode, self.decode = encode, decode
        self.ttl_ms = int(ttl.total_seconds() * 1000) if ttl else 0
        self.clock = clock
        self._data: dict[int, dict[str, tuple[V, int]]] = {}
        self._staged: dict[tuple[int, str], tuple[V | None, int]] = {}
        self._undo: list[tuple[tuple[int, str], object]] = []
        self._last_purge = clock()
        self.version = 0

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    def _live(self, entry: tuple[V | None, int] | None) -> V | None:
        if entry is None or (entry[1] and entry[1] <= self._now_ms()):
            return None
        return entry[0]

    def get(self, partition: int, key: str) -> V | None:
        staged = self._staged.get((partition, key))
        if staged is not None:
            return self._live(staged)
        value = self._live(self._data.get(partition, {}).get(key))
        if isinstance(value, _Unreadable):
            raise UnreadableState(f"{self.topic}: the stored value of {key!r} is unreadable: {value.why}")
        return value

    def left(self, partition: int, key: str) -> timedelta | None:
        """How long a live entry has left before it expires (None: no entry, or one kept for good)."""
        entry = self._staged.get((partition, key)) or self._data.get(partition, {}).get(key)
        if self._live(entry) is None or entry is None or not entry[1]:
            return None
        return timedelta(milliseconds=entry[1] - self._now_ms())

    def _stage(self, partition: int, key: str, value: V | None, expiry: int) -> None:
        if partition not in self._data:
            raise KeyError(f"{self.topic}: partition {partition} is not assigned to this process")
        self._undo.append(((partition, key), self._staged.get((partition, key), _MISSING)))
        self._staged[(partition, key)] = (value, expiry)

    def put(self, partition: int, key: str, value: V, ttl: timedelta | None = None) -> None:
        ttl_ms = int(ttl.total_seconds() * 1000) if ttl else self.ttl_ms
        self._stage(partition, key, value, self._now_ms() + ttl_ms if ttl_ms else 0)

    def delete(self, partition: int, key: str) -> None:
        self._stage(partition, key, None, 0)

    def record_done(self) -> None:
        self._undo.clear()

    def record_failed(self) -> None:
        for slot, previous in reversed(self._undo):
            if previous is _MISSING:
                self._staged.pop(slot, None)
            else:
                self._staged[slot] = previous  # type: ignore[assignment]
        self._undo.clear()

    def changelog(self) -> list[Output]:
        """The batch's writes as changelog records (the last write per key), plus due purges."""
        if self.clock() - self._last_purge > PURGE_INTERVAL_S:
            self._purge()
        return [
            Output(
                self.topic,
                key.encode(),
                None if value is None else _EXPIRY.pack(expiry) + self.encode(value),
                partition=p,
            )
            for (p, key), (value, expiry) in self._staged.items()
        ]

    def _purge(self) -> None:
        now = self._now_ms()
        self._last_purge = self.clock()
        for p, entries in self._data.items():
            for key, (_, expiry) in entries.items():
                if expiry and expiry <= now and (p, key) not in self._staged:
                    self._staged[(p, key)] = (None, 0)

    def committed(self) -> None:
        for (p, key), (value, expiry) in self._staged.items():
            if p not in self._data:
                continue
            if value is None:
                self._data[p].pop(key, None)
            else:
                self._data[p][key] = (value, expiry)
        self._staged.clear()
        self._undo.clear()

    def aborted(self) -> None:
        self.version += 1
        self._staged.clear()
        self._undo.clear()

    def restore(self, partition: int, records: Iterable[Incoming]) -> int:
        """Rebuild one partition from its changelog; returns the number of live keys.

        A key whose entry expired while no process held the partition is kept, undecoded and never
        read, until the next purge writes its tombstone: dropped here, it was never deleted from the
        compacted changelog (compaction keeps a key's last value), and every restore read it again.

        A value `decode` refuses (written by a newer release, before a rollback) is kept as unreadable,
        and `get` raises UnreadableState for it: raised here, in the consumer's assignment, it stopped
        the processor at every restart, for every partition."""
        data: dict[str, tuple[V, int]] = {}
        now = self._now_ms()
        refused: list[str] = []
        for r in records:
            key = (r.key or b"").decode()
            if r.value is None:
                data.pop(key, None)
                continue
            (expiry,) = _EXPIRY.unpack_from(r.value)
            if expiry and expiry <= now:
                data[key] = (None, expiry)  # type: ignore[assignment]
                continue
            try:
                data[key] = (self.decode(r.value[_EXPIRY.size :]), expiry)
            except Exception as exc:
                data[key] = (cast(V, _Unreadable(f"{type(exc).__name__}: {exc}"[:300])), expiry)
                refused.append(key)
        if refused:
            log.error(
                "%s[%d]: %d stored values cannot be read by this release (the first: %r); records that "
                "need them are dead-lettered",
                self.topic,
                partition,
                len(refused),
                refused[0],
            )
        expired = sum(1 for _, expiry in data.values() if expiry and expiry <= now)
        self._data[partition] = data
        self.version += 1
        return len(data) - expired

    def drop(self, partition: int) -> None:
        self.version += 1
        self._data.pop(partition, None)
        for slot in [s for s in self._staged if s[0] == partition]:
            del self._staged[slot]

    def partitions(self) -> list[int]:
        return sorted(self._data)

    def size(self, partition: int) -> int:
        """Committed keys of a partition (expired ones included until purged): a cheap emptiness test."""
        return len(self._data.get(partition, {}))

    def keys(self, partition: int) -> list[str]:
        """Live keys of a partition, staged writes of the open batch included, in sorted order (those
        whose values cannot be read too: listing them reads no value)."""
        keys = set(self._data.get(partition, {}))
        for (p, key), entry in self._staged.items():
            if p == partition:
                (keys.add if entry[0] is not None else keys.discard)(key)
        data = self._data.get(partition, {})
        return sorted(
            k for k in keys if self._live(self._staged.get((partition, k)) or data.get(k)) is not None
        )

    def known_keys(self, partition: int) -> list[str]:
        """Every key the partition holds or the open batch has touched, staged deletes included, in
        sorted order: a superset of `keys` that stays a superset if the current record fails and its
        deletes are undone.
        """
        keys = set(self._data.get(partition, {}))
        keys.update(key for (p, key) in self._staged if p == partition)
        return sorted(keys)


def due_bound(now_ms: int) -> str:
    """The greatest key due at `now_ms` among keys `<due ms, 13 digits>/<anything>`."""
    return f"{now_ms:013d}/~"


class DueKeys:
    """The keys of a store that sort by due time (`<due ms, 13 digits>/...`), in a heap per partition,
    so finding what is due costs what is due, not a sort of every key (100,000 keys took 78-249 ms to
    sort and check, every punctuation). Removal is lazy: a key gone from the store is skipped when it
    reaches the top. The heaps are rebuilt from the store when its `version` moves (a restore, or an
    aborted batch whose deletes a heap has already forgotten). A rebuild starts from `known_keys`, staged
    deletes included, so a record that fails after a rebuild cannot leave a restored key untracked.
    `accept` picks the store's keys that are due keys.
    """

    def __init__(self, store: Store[Any], accept: Callable[[str], bool] = lambda key: True) -> None:
        self.store, self.accept = store, accept
        self._heaps: dict[int, list[str]] = {}
        self._version = -1

    def _heap(self, partition: int) -> list[str]:
        if self._version != self.store.version:
            self._heaps.clear()
            self._version = self.store.version
        heap = self._heaps.get(partition)
        if heap is None:
            heap = self._heaps[partition] = [k for k in self.store.known_keys(partition) if self.accept(k)]
        return heap

    def add(self, partition: int, key: str) -> None:
        """Track a key written (or to be written) to the store; a caller keeping a taken key adds it back."""
        heapq.heappush(self._heap(partition), key)

    def take(self, partition: int, now_ms: int, limit: int | None = None) -> list[str]:
        """The live keys due at `now_ms` (at most `limit`), in order, no longer tracked."""
        heap, bound = self._heap(partition), due_bound(now_ms)
        taken: list[str] = []
        while heap and heap[0] <= bound and (limit is None or len(taken) < limit):
            key = heapq.heappop(heap)
            if (not taken or taken[-1] != key) and self.store.get(partition, key) is not None:
                taken.append(key)
        return taken
