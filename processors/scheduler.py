"""Consumes notifications.scheduled; produces delivery commands and outcomes when their time comes,
exactly once. The durable timers behind quiet hours and `scheduled_at`, and their cancellation.

The router defers a command by writing it to `notifications.scheduled` with `not_before` set. The
scheduler keeps every pending command in a state store (`timers`, key `<due ms>/<delivery id>`, so
keys sort by due time and a replayed deferral overwrites itself) whose changelog is written in the
same transaction as its input offsets. A punctuation every 200 ms releases the due timers of each
assigned partition: the command goes to its channel's lane (`.urgent` for high and critical), a QUEUED
outcome says it was released, and the timer's tombstone is written in the same transaction, so a kill
at any moment neither loses nor repeats a release. A command whose `expires_at` passed while it waited
is EXPIRED instead. Pending timers live in memory, restored from the changelog on assignment.

A `NotificationCancelled` on the same topic (the router forwards a cancellation that arrives after it
planned the request; same key, so it follows that request's deferrals in the partition) drops the
notification's pending timers, each with a CANCELLED outcome. An index entry `n/<notification id>` lists
a notification's timer keys, so a cancellation does not scan the partition; it sorts after every
`<due ms>/...` key and is never taken for a due timer. Commands already released are not recalled.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable

from tidings.codec import Codec, default_codec
from tidings.config import Settings
from tidings.errors import InvalidEvent
from tidings.events import DeliveryCommand, DeliveryOutcome, NotificationCancelled, OutcomeStatus
from tidings.kafka import Incoming, Output, TransactionalLoop
from tidings.state import Store
from tidings.topics import Names, names

log = logging.getLogger(__name__)
GROUP = "tidings.scheduler"
URGENT = frozenset({"critical", "high"})


def timer_key(command: DeliveryCommand) -> str:
    due = int(command.not_before.timestamp() * 1000) if command.not_before else 0
    return f"{due:013d}/{command.delivery_id}"


def due_keys(keys: list[str], now_ms: int) -> list[str]:
    """The keys due at `now_ms`, from keys sorted by due time."""
    bound = f"{now_ms:013d}/~"
    return [k for k in keys if k <= bound]


class Timers:
    """The pending commands of each partition in a store, with a per-notification index."""

    def __init__(self, store: Store[bytes], codec: Codec) -> None:
        self.store, self.codec = store, codec

    def _index(self, partition: int, notification_id: object) -> tuple[str, list[str]]:
        key = f"n/{notification_id}"
        value = self.store.get(partition, key)
        return key, value.decode().split() if value else []

    def add(self, partition: int, command: DeliveryCommand, value: bytes) -> None:
        key = timer_key(command)
        self.store.put(partition, key, value)
        index, keys = self._index(partition, command.notification_id)
        if key not in keys:
            self.store.put(partition, index, " ".join([*keys, key]).encode())

    def _take(self, partition: int, key: str) -> DeliveryCommand | None:
        value = self.store.get(partition, key)
        if value is None:
            return None
        self.store.delete(partition, key)
        command = self.codec.decode(value)
        return command if isinstance(command, DeliveryCommand) else None

    def due(self, partition: int, now_ms: int) -> list[DeliveryCommand]:
        """Take the commands due at `now_ms`."""
        taken = []
        for key in due_keys(self.store.keys(partition), now_ms):
            if (command := self._take(partition, key)) is not None:
                taken.append(command)
                index, keys = self._index(partition, command.notification_id)
                rest = [k for k in keys if k != key]
                if rest:
                    self.store.put(partition, index, " ".join(rest).encode())
                else:
                    self.store.delete(partition, index)
        return taken

    def cancel(self, partition: int, notification_id: object) -> list[DeliveryCommand]:
        """Take every pending command of a notification."""
        index, keys = self._index(partition, notification_id)
        if not keys:
            return []
        self.store.delete(partition, index)
        return [c for c in (self._take(partition, k) for k in keys) if c is not None]


def release(n: Names, command: DeliveryCommand, now: float) -> list[Output]:
    """The records that release one due command: the command on its lane and its QUEUED outcome,
    or only an EXPIRED outcome when it expired while waiting."""
    if command.expires_at is not None and command.expires_at.timestamp() <= now:
        return [outcome(n, command, "EXPIRED", "expired_while_deferred")]
    lane = n.delivery(command.channel, urgent=command.priority in URGENT)
    return [Output.event(lane, command), outcome(n, command, "QUEUED", "released")]


def outcome(n: Names, command: DeliveryCommand, status: OutcomeStatus, reason: str) -> Output:
    event = DeliveryOutcome.of_command(command, status, reason, id_reason=reason)
    return Output.event(n.outcomes, event)


class Scheduler:
    def __init__(
        self,
        settings: Settings,
        *,
        instance: str | None = None,
        group_id: str | None = None,
        clock: Callable[[], float] = time.time,
        codec: Codec | None = None,
    ) -> None:
        self.names = names(settings)
        self.codec = codec or default_codec()
        self.clock = clock
        group_id = group_id or settings.topic_prefix + GROUP
        self.store: Store[bytes] = Store(
            self.names.changelog("scheduler", "timers"), encode=bytes, decode=bytes, clock=clock
        )
        self.timers = Timers(self.store, self.codec)
        slot = instance or f"{socket.gethostname()}-0"
        self.released = 0
        self.cancelled = 0
        self.loop = TransactionalLoop(
            settings,
            group_id=group_id,
            topics=[self.names.scheduled],
            handle=self.handle,
            transactional_id=f"{group_id}-{slot}",
            static_membership=instance is not None,
            stores=[self.store],
            punctuate=self.fire,
            pending=self.pending,
        )

    def run(self, *, idle_exit_after: float | None = None) -> None:
        self.loop.run(idle_exit_after=idle_exit_after)

    def stop(self) -> None:
        self.loop.stop()

    def handle(self, record: Incoming) -> list[Output]:
        event = record.decode(self.codec)
        if isinstance(event, NotificationCancelled):
            reason = event.reason or "cancelled"
            taken = self.timers.cancel(record.partition, event.notification_id)
            self.cancelled += len(taken)
            return [outcome(self.names, c, "CANCELLED", reason) for c in taken]
        if not isinstance(event, DeliveryCommand):
            raise InvalidEvent(f"{type(event).__name__} does not belong on {record.topic}")
        if event.not_before is None or event.not_before.timestamp() <= self.clock():
            self.released += 1
            return release(self.names, event, self.clock())
        self.timers.add(record.partition, event, record.value or b"")
        return []

    def fire(self) -> list[Output]:
        now = self.clock()
        outputs: list[Output] = []
        for partition in self.store.partitions():
            for command in self.timers.due(partition, int(now * 1000)):
                outputs += release(self.names, command, now)
                self.released += 1
        return outputs

    def pending(self) -> bool:
        return any(self.store.size(p) for p in self.store.partitions())
