"""Consumes notifications.scheduled; produces delivery commands and outcomes when their time comes,
exactly once. The durable timers behind quiet hours and `scheduled_at`.

The router defers a command by writing it to `notifications.scheduled` with `not_before` set. The
scheduler keeps every pending command in a state store (`timers`, key `<due ms>/<delivery id>`, so
keys sort by due time and a replayed deferral overwrites itself) whose changelog is written in the
same transaction as its input offsets. A punctuation every 200 ms releases the due timers of each
assigned partition: the command goes to its channel's lane (`.urgent` for high and critical), a QUEUED
outcome says it was released, and the timer's tombstone is written in the same transaction, so a kill
at any moment neither loses nor repeats a release. A command whose `expires_at` passed while it waited
is EXPIRED instead. Pending timers live in memory, restored from the changelog on assignment.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable

from tidings.codec import Codec, default_codec
from tidings.config import Settings
from tidings.errors import InvalidEvent
from tidings.events import DeliveryCommand, DeliveryOutcome, OutcomeStatus
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
        self.timers: Store[bytes] = Store(
            self.names.changelog("scheduler", "timers"), encode=bytes, decode=bytes, clock=clock
        )
        slot = instance or f"{socket.gethostname()}-0"
        self.released = 0
        self.loop = TransactionalLoop(
            settings,
            group_id=group_id,
            topics=[self.names.scheduled],
            handle=self.handle,
            transactional_id=f"{group_id}-{slot}",
            static_membership=instance is not None,
            stores=[self.timers],
            punctuate=self.fire,
            pending=self.pending,
        )

    def run(self, *, idle_exit_after: float | None = None) -> None:
        self.loop.run(idle_exit_after=idle_exit_after)

    def stop(self) -> None:
        self.loop.stop()

    def handle(self, record: Incoming) -> list[Output]:
        command = record.decode(self.codec)
        if not isinstance(command, DeliveryCommand):
            raise InvalidEvent(f"{type(command).__name__} does not belong on {record.topic}")
        if command.not_before is None or command.not_before.timestamp() <= self.clock():
            self.released += 1
            return release(self.names, command, self.clock())
        self.timers.put(record.partition, timer_key(command), record.value or b"")
        return []

    def fire(self) -> list[Output]:
        now = self.clock()
        outputs: list[Output] = []
        for partition in self.timers.partitions():
            for key in due_keys(self.timers.keys(partition), int(now * 1000)):
                value = self.timers.get(partition, key)
                self.timers.delete(partition, key)
                command = self.codec.decode(value or b"")
                if isinstance(command, DeliveryCommand):
                    outputs += release(self.names, command, now)
                    self.released += 1
        return outputs

    def pending(self) -> bool:
        return any(self.timers.size(p) for p in self.timers.partitions())
