"""Consumes the scheduler's deferred commands (for `processors/scheduler.py`); produces them again when
due, cancelled or erased. They live in its `timers` store: keys that sort by due time, an index per
notification, and a heap of due keys, so a punctuation takes what is due without a scan."""

from __future__ import annotations

import bisect
import uuid
from collections.abc import Callable

from tidings.codec import Codec
from tidings.errors import CodecError, InvalidEvent, TidingsError
from tidings.events import DeliveryCommand
from tidings.state import DueKeys, Store

MAX_DUE_MS = 10**13 - 1


def timer_key(command: DeliveryCommand) -> str:
    """`<due ms>/<the delivery id within its tenant>`: a delivery id derives from the notification id,
    which a producer may choose, so two tenants' commands may share one, and one took the other's
    timer. A name, not the tenant id itself: the notification index joins keys with spaces. A due past
    the 13 digits (year 2286, produced to the topic directly: the router refuses beyond 400 days) is
    kept at the last 13-digit millisecond; its 14 digits sorted before every other key, and it fired
    at once."""
    due = int(command.not_before.timestamp() * 1000) if command.not_before else 0
    return f"{min(due, MAX_DUE_MS):013d}/{uuid.uuid5(command.delivery_id, command.tenant_id)}"


class Timers:
    """The pending commands of each partition in a store, with a per-notification index and the timer
    keys in a `DueKeys` heap."""

    def __init__(self, store: Store[bytes], codec: Codec) -> None:
        self.store, self.codec = store, codec
        self.due_keys = DueKeys(store, accept=lambda key: not key.startswith("n/"))
        self._snapshots: dict[int, tuple[int, list[str]]] = {}
        self.unreadable: list[tuple[int, bytes, TidingsError]] = []
        """Due timers that could not be read, taken out of the store: (partition, value, why)."""

    def _read(self, value: bytes | None) -> DeliveryCommand | None:
        """The stored command, or None: a value this release cannot read (written by a newer one,
        before a rollback) is passed over by cancellations and erasure walks, and dead-lettered by
        `take_due` once due. Raised, it stopped the punctuation, and so the scheduler, at every
        restart: no timer of any of its partitions went out."""
        try:
            command = self.codec.decode(value) if value is not None else None
        except (CodecError, InvalidEvent):
            return None
        return command if isinstance(command, DeliveryCommand) else None

    def _index(self, partition: int, notification_id: object) -> tuple[str, list[str]]:
        key = f"n/{notification_id}"
        value = self.store.get(partition, key)
        return key, value.decode().split() if value else []

    def add(self, partition: int, command: DeliveryCommand, value: bytes) -> None:
        key = timer_key(command)
        self.due_keys.add(partition, key)
        self.store.put(partition, key, value)
        index, keys = self._index(partition, command.notification_id)
        if key not in keys:
            self.store.put(partition, index, " ".join([*keys, key]).encode())

    def due(
        self, partition: int, now_ms: int, hold: Callable[[DeliveryCommand], bool] | None = None
    ) -> list[DeliveryCommand]:
        """Take the commands due at `now_ms`, except those `hold` keeps for later."""
        return self.take_due(partition, now_ms, hold)[0]

    def take_due(
        self,
        partition: int,
        now_ms: int,
        hold: Callable[[DeliveryCommand], bool] | None = None,
        limit: int | None = None,
        budget: int | None = None,
    ) -> tuple[list[DeliveryCommand], bool, int]:
        """The commands due at `now_ms`, except those `hold` keeps for later, in due order: at most
        `limit`, and no more once their encoded sizes reach `budget`; whether more are due; and the
        sum of their encoded sizes. Unreadable timers taken out for dead letters count against both: a
        rollback can leave every pending timer unreadable, and all their letters in one punctuation
        outlasted the transaction timeout, as all releases at once did."""
        taken: list[DeliveryCommand] = []
        held: list[str] = []
        size = lettered = 0
        more = False
        while keys := self.due_keys.take(partition, now_ms, 1):
            if (limit is not None and len(taken) + lettered >= limit) or (
                budget is not None and size >= budget
            ):
                self.due_keys.add(partition, keys[0])
                more = True
                break
            key = keys[0]
            value = self.store.get(partition, key)
            try:
                command = self.codec.decode(value) if value is not None else None
            except (CodecError, InvalidEvent) as exc:
                self.store.delete(partition, key)
                self.unreadable.append((partition, value or b"", exc))
                lettered += 1
                size += len(value or b"")
                continue
            if isinstance(command, DeliveryCommand) and hold is not None and hold(command):
                held.append(key)
                continue
            if not isinstance(command, DeliveryCommand):
                self.store.delete(partition, key)
                continue
            self._forget(partition, key, command)
            taken.append(command)
            size += len(value or b"")
        for key in held:
            self.due_keys.add(partition, key)
        return taken, more, size

    def _forget(self, partition: int, key: str, command: DeliveryCommand) -> None:
        self.store.delete(partition, key)
        index, keys = self._index(partition, command.notification_id)
        rest = [k for k in keys if k != key]
        if rest:
            self.store.put(partition, index, " ".join(rest).encode())
        else:
            self.store.delete(partition, index)

    def sweep(
        self, partition: int, after: str, budget: int, drop: Callable[[DeliveryCommand], bool]
    ) -> tuple[list[DeliveryCommand], str | None]:
        """Walk up to `budget` pending timers after the key `after` ("" for the first), in key order,
        taking those `drop` picks. Returns them and the key to go on after, or None at the end. The
        walk follows a sorted snapshot of the timer keys, made when a walk starts ("") or the store's
        `version` moved; timers added since were checked as they arrived."""
        snapshot = self._snapshots.get(partition)
        if after == "" or snapshot is None or snapshot[0] != self.store.version:
            keys = [k for k in self.store.keys(partition) if not k.startswith("n/")]
            snapshot = self._snapshots[partition] = (self.store.version, keys)
        keys = snapshot[1]
        start = bisect.bisect_right(keys, after)
        walked, taken = keys[start : start + budget], []
        for key in walked:
            command = self._read(self.store.get(partition, key))
            if command is not None and drop(command):
                self._forget(partition, key, command)
                taken.append(command)
        if start + budget >= len(keys):
            self._snapshots.pop(partition, None)
            return taken, None
        return taken, walked[-1]

    def cancel(
        self, partition: int, notification_id: object, which: Callable[[DeliveryCommand], bool] | None = None
    ) -> list[DeliveryCommand]:
        """Take every pending command of a notification, or those `which` picks."""
        index, keys = self._index(partition, notification_id)
        taken, kept = [], []
        for key in keys:
            value = self.store.get(partition, key)
            command = self._read(value)
            if command is None:
                if value is not None:
                    kept.append(key)
                continue
            if which is None or which(command):
                self.store.delete(partition, key)
                taken.append(command)
            else:
                kept.append(key)
        if kept != keys:
            if kept:
                self.store.put(partition, index, " ".join(kept).encode())
            else:
                self.store.delete(partition, index)
        return taken
