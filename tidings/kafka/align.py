"""Releases consumed records in timestamp order across co-partitioned topics (stream-time alignment).

A processor reading `notifications.requested` and `notifications.recipients` must apply a preference
change produced before a request before it plans that request, although the two topics are fetched
independently. As in Kafka Streams, records are buffered per topic-partition and, for each partition
number, the buffered head with the smallest timestamp goes first. While a topic-partition of the group
has nothing buffered but is not caught up to its end, the group waits for it, at most `max_idle`
seconds, then proceeds. On equal timestamps, topics named in `first` go first (state before requests).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable

from tidings.kafka.records import Incoming

TP = tuple[str, int]


class Aligner:
    def __init__(
        self, max_idle: float = 1.0, clock: Callable[[], float] = time.monotonic, first: Iterable[str] = ()
    ) -> None:
        self.max_idle = max_idle
        self.rank = {topic: i for i, topic in enumerate(first)}
        self.clock = clock
        self.buffers: dict[TP, deque[Incoming]] = {}
        self._blocked_since: dict[int, float] = {}

    def add(self, records: Iterable[Incoming]) -> None:
        for r in records:
            self.buffers.setdefault((r.topic, r.partition), deque()).append(r)

    def pending(self, tp: TP | None = None) -> int:
        if tp is not None:
            return len(self.buffers.get(tp, ()))
        return sum(len(b) for b in self.buffers.values())

    def release(
        self, assigned: Iterable[TP], caught_up: Callable[[str, int], bool], limit: int
    ) -> list[Incoming]:
        groups: dict[int, list[TP]] = {}
        for tp in assigned:
            groups.setdefault(tp[1], []).append(tp)
        out: list[Incoming] = []
        now = self.clock()
        known: dict[TP, bool] = {}

        def settled(tp: TP) -> bool:
            if tp not in known:
                known[tp] = caught_up(*tp)
            return known[tp]

        for number, members in sorted(groups.items()):
            while len(out) < limit:
                heads = [self.buffers[tp][0] for tp in members if self.buffers.get(tp)]
                if not heads:
                    self._blocked_since.pop(number, None)
                    break
                waiting = [tp for tp in members if not self.buffers.get(tp) and not settled(tp)]
                if waiting:
                    since = self._blocked_since.setdefault(number, now)
                    if now - since < self.max_idle:
                        break
                else:
                    self._blocked_since.pop(number, None)
                head = min(heads, key=lambda r: (r.timestamp_ms, self.rank.get(r.topic, len(self.rank))))
                out.append(self.buffers[(head.topic, head.partition)].popleft())
        return out

    def drop(self, partitions: Iterable[TP]) -> None:
        for tp in partitions:
            self.buffers.pop(tp, None)

    def clear(self) -> None:
        self.buffers.clear()
        self._blocked_since.clear()
