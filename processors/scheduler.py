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

Due timers of a partition are released only while this process has read that partition of
`notifications.scheduled` to the end, so a scheduler that lags (restarted, say) reads a cancellation or
an erasure waiting in its input before it releases what they would have stopped. A command that is
already due when it arrives waits for the next punctuation like the others, for the same reason.

A `RecipientErased` forwarded by the router is remembered in the `erased` store (recipient -> erasure
log time, kept for good: erasures are rare), and a command whose request reached the log before its
recipient's erasure (`requested_at`) is CANCELLED `erased` instead of released, when it arrives or
when it comes due. The timers already pending are found by a walk of the partition's timers that the
punctuation takes on `SWEEP_BUDGET` (1,000) timers at a time, so the content of a command deferred for
days leaves the store within seconds of the erasure (tombstoned in the changelog then, gone from it at
the next compaction; `notifications.scheduled` keeps it for its retention). Not searched at the erasure
itself: timers are keyed by due time, so that would scan the partition per erasure (a bulk erasure
against a large backlog would outlast the transaction timeout), and an index per recipient would cost
a changelog write on every deferral. One walk serves every erasure read before it starts.

A `NotificationCancelled` on the same topic (the router forwards a cancellation that arrives after it
planned the request; same key, so it follows that request's deferrals in the partition) drops the
notification's pending timers, each with a CANCELLED outcome. An index entry `n/<notification id>` lists
a notification's timer keys, so a cancellation does not scan the partition; it sorts after every
`<due ms>/...` key and is never taken for a due timer. Commands already released are not recalled.
Only the cancelling tenant's timers are dropped: a cancellation names its notification id, and a
tenant can name another tenant's id (on the same partition, by choosing a recipient).

Escalation: a command with `unless` (seen, read or clicked) is dropped, with a SKIPPED `engaged`
outcome, when `notifications.engagement` (co-partitioned, also consumed here) reports that engagement
with its notification before the command is due. Inbox archived and seen events count as seen; read,
opened and clicked as read; clicked as clicked. Marking an item unread or taking it out of the archive
undoes nothing here: an escalation dropped because the recipient saw the notification stays dropped.
The `engaged` store remembers what each notification got (30 days, keyed by tenant and notification,
and an engagement drops only its own tenant's escalations), so an engagement that overtakes its
escalation command still cancels it. A due escalation is released only while this process has read its
engagement partition to the end, so a scheduler that lags (restarted, say) cannot send the email for a
mention whose `seen` waits unread behind it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import timedelta

from processors.timers import Timers
from tidings.codec import Codec, default_codec
from tidings.config import Settings
from tidings.errors import InvalidEvent
from tidings.events import (
    DeliveryCommand,
    DeliveryOutcome,
    Event,
    InboxItemArchived,
    InboxItemMarkedUnread,
    InboxItemRead,
    InboxItemSeen,
    InboxItemUnarchived,
    NotificationCancelled,
    NotificationClicked,
    NotificationOpened,
    OutcomeStatus,
    RecipientErased,
)
from tidings.kafka import Incoming, Output, TransactionalLoop, default_slot
from tidings.kafka.records import dead_letter
from tidings.metrics import Sample
from tidings.state import Store
from tidings.topics import Names, names

log = logging.getLogger(__name__)
GROUP = "tidings.scheduler"
URGENT = frozenset({"critical", "high"})
ENGAGED_TTL = timedelta(days=30)
SWEEP, SWEEP_BUDGET = "sweep", 1000
MAX_RELEASES_PER_TICK = 1_000
MAX_RELEASE_BYTES = 16 * 1024 * 1024
"""What one punctuation releases at most, by count and by the commands' encoded sizes (each goes out as
its command, up to 512 KiB of email HTML, with a small outcome and a tombstone)."""
SATISFIES: dict[type[Event], frozenset[str]] = {
    InboxItemSeen: frozenset({"seen"}),
    InboxItemArchived: frozenset({"seen"}),
    InboxItemRead: frozenset({"seen", "read"}),
    NotificationOpened: frozenset({"seen", "read"}),
    NotificationClicked: frozenset({"seen", "read", "clicked"}),
}


def next_walk(walking: str | None) -> str:
    """The erasure walk's state ("<again> <last key walked>") once another erasure is read: a walk that
    has not started yet ("0 ") covers it; one under way must start over once it ends."""
    if walking is None:
        return "0 "
    after = walking.split(" ", 1)[1]
    return f"1 {after}" if after else walking


def erased_before(marker: str | None, command: DeliveryCommand) -> bool:
    """Whether the command's request reached the log before its recipient's erasure (`marker`, ms). On
    equal timestamps the router takes the erasure first (state before requests), so that request was
    planned after it."""
    return marker is not None and command.request_time.timestamp() * 1000 < int(marker)


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
        self.engaged: Store[str] = Store(
            self.names.changelog("scheduler", "engaged"),
            encode=str.encode,
            decode=bytes.decode,
            ttl=ENGAGED_TTL,
            clock=clock,
        )
        self.erased: Store[str] = Store(
            self.names.changelog("scheduler", "erased"), encode=str.encode, decode=bytes.decode, clock=clock
        )
        slot = instance or default_slot()
        self.released = 0
        self.more_due = False
        self._turn = 0
        self.cancelled = 0
        self.escalations_dropped = 0
        self.loop = TransactionalLoop(
            settings,
            group_id=group_id,
            topics=[self.names.scheduled, self.names.engagement],
            handle=self.handle,
            transactional_id=f"{group_id}-{slot}",
            static_membership=instance is not None,
            stores=[self.store, self.engaged, self.erased],
            punctuate=self.fire,
            pending=self.pending,
            eager=lambda: self.more_due,
        )

    def run(self, *, idle_exit_after: float | None = None) -> None:
        self.loop.run(idle_exit_after=idle_exit_after)

    def stop(self) -> None:
        self.loop.stop()

    def samples(self) -> list[Sample]:
        return [
            *self.loop.samples(),
            Sample("timers_released", self.released, help="deferred deliveries released when due"),
            Sample("timers_cancelled", self.cancelled, help="deferred deliveries dropped by cancellation"),
            Sample(
                "escalations_dropped", self.escalations_dropped, help="escalations the engagement satisfied"
            ),
        ]

    def handle(self, record: Incoming) -> list[Output]:
        event = record.decode(self.codec)
        if isinstance(event, NotificationCancelled):
            reason = event.reason or "cancelled"
            taken = self.timers.cancel(
                record.partition,
                event.notification_id,
                lambda c: c.tenant_id == event.tenant_id,
            )
            self.cancelled += len(taken)
            return [outcome(self.names, c, "CANCELLED", reason) for c in taken]
        if isinstance(event, RecipientErased):
            key, at = f"{event.tenant_id}/{event.recipient_id}", int(event.occurred_at.timestamp() * 1000)
            if int(self.erased.get(record.partition, key) or -1) < at:
                self.erased.put(record.partition, key, str(at))
                self.erased.put(record.partition, SWEEP, next_walk(self.erased.get(record.partition, SWEEP)))
            return []
        if type(event) in SATISFIES:
            return self._engaged(record.partition, event)
        if isinstance(event, InboxItemMarkedUnread | InboxItemUnarchived):
            return []
        if not isinstance(event, DeliveryCommand) or record.topic != self.names.scheduled:
            raise InvalidEvent(f"{type(event).__name__} does not belong on {record.topic}")
        if self._erased(record.partition, event):
            return [outcome(self.names, event, "CANCELLED", "erased")]
        if event.unless is not None and event.unless in self._engagement(record.partition, event):
            self.escalations_dropped += 1
            return [outcome(self.names, event, "SKIPPED", "engaged")]
        self.timers.add(record.partition, event, record.value or b"")
        return []

    def _erased(self, partition: int, command: DeliveryCommand) -> bool:
        marker = self.erased.get(partition, f"{command.tenant_id}/{command.recipient_id}")
        if erased_before(marker, command):
            self.cancelled += 1
            return True
        return False

    def _engagement(self, partition: int, event: Event) -> set[str]:
        """What the notification got, remembered per tenant: a recipient of one tenant engaging with an
        item whose id another tenant's notification has must not satisfy that one's escalations."""
        key = f"{event.tenant_id}/{getattr(event, 'notification_id', '')}"
        return set((self.engaged.get(partition, key) or "").split())

    def _engaged(self, partition: int, event: Event) -> list[Output]:
        """Remember the engagement and drop the tenant's escalations of the notification it satisfies."""
        got = self._engagement(partition, event) | SATISFIES[type(event)]
        nid = getattr(event, "notification_id", None)
        self.engaged.put(partition, f"{event.tenant_id}/{nid}", " ".join(sorted(got)))
        taken = self.timers.cancel(
            partition,
            nid,
            lambda c: c.tenant_id == event.tenant_id and c.unless is not None and c.unless in got,
        )
        self.escalations_dropped += len(taken)
        return [outcome(self.names, c, "SKIPPED", "engaged") for c in taken]

    def fire(self) -> list[Output]:
        """At most `MAX_RELEASES_PER_TICK` commands, `MAX_RELEASE_BYTES` of them, per transaction; while
        more are due the loop punctuates again after every poll (`eager`). A broadcast scheduled for
        9:00 has every member's command due at once: all of them in one transaction outlasted the
        transaction timeout, and its retry held the same ones and more, so nothing went out again.
        Each punctuation starts at the next partition, so one partition's backlog does not hold up
        the others' releases; every partition's erasure walk goes on whatever the room."""
        now = self.clock()
        outputs: list[Output] = []
        room, budget, self.more_due = MAX_RELEASES_PER_TICK, MAX_RELEASE_BYTES, False
        self.timers.unreadable.clear()
        partitions = self.store.partitions()
        self._turn = (self._turn + 1) % max(1, len(partitions))
        for partition in partitions[self._turn :] + partitions[: self._turn]:
            if not self.loop.caught_up(self.names.scheduled, partition):
                continue
            due: list[DeliveryCommand] = []
            if room > 0 and budget > 0:
                engagement_read = self.loop.caught_up(self.names.engagement, partition)
                hold = None if engagement_read else lambda c: c.unless is not None
                due, more, size = self.timers.take_due(partition, int(now * 1000), hold, room, budget)
                self.more_due |= more
                room, budget = room - len(due), budget - size
            else:
                self.more_due = True
            for command in due:
                if self._erased(partition, command):
                    outputs.append(outcome(self.names, command, "CANCELLED", "erased"))
                    continue
                outputs += release(self.names, command, now)
                self.released += 1
            outputs += self._sweep(partition)
        return outputs + self._unreadable()

    def _unreadable(self) -> list[Output]:
        """Dead letters of the due timers that could not be read, each replayable to
        notifications.scheduled once the scheduler reads its version (without its key: the record's
        key is in the part that could not be read)."""
        letters = []
        for partition, value, exc in self.timers.unreadable:
            log.error("a due timer on partition %d cannot be read, dead-lettered: %s", partition, exc)
            record = Incoming(self.names.scheduled, partition, -1, None, value)
            letters.append(dead_letter(record, exc, self.loop.group_id, self.names.dlq))
        self.timers.unreadable.clear()
        return letters

    def _sweep(self, partition: int) -> list[Output]:
        """The next `SWEEP_BUDGET` pending timers of a partition with an erasure to carry out, the
        erased recipients' commands CANCELLED. The `sweep` entry of the `erased` store holds where the
        walk is ("<again> <last key>"): an erasure during a walk has it start over once it ends, since
        the erased recipient's timers may lie behind it."""
        walking = self.erased.get(partition, SWEEP)
        if walking is None:
            return []
        again, after = walking.split(" ", 1)
        taken, resume = self.timers.sweep(
            partition, after, SWEEP_BUDGET, lambda c: self._erased(partition, c)
        )
        if resume is not None:
            self.erased.put(partition, SWEEP, f"{again} {resume}")
        elif again == "1":
            self.erased.put(partition, SWEEP, "0 ")
        else:
            self.erased.delete(partition, SWEEP)
        return [outcome(self.names, c, "CANCELLED", "erased") for c in taken]

    def pending(self) -> bool:
        return any(self.store.size(p) for p in self.store.partitions())
