"""The scheduler's pure parts: timer keys sort by due time, due selection, what a release emits."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from processors.scheduler import erased_before, next_walk, release
from processors.timers import Timers, timer_key
from tidings.codec import default_codec
from tidings.events import DeliveryCommand, DeliveryOutcome, RenderedContent
from tidings.state import Store, due_bound
from tidings.topics import Names

N = Names("p.")
EPOCH = datetime(2026, 11, 25, tzinfo=UTC)


def command(due: datetime | None, **changes: object) -> DeliveryCommand:
    fields: dict[str, object] = {
        "tenant_id": "acme",
        "delivery_id": uuid.uuid4(),
        "notification_id": uuid.uuid4(),
        "recipient_id": "ann",
        "notification_type": "comment.mention",
        "channel": "push",
        "priority": "normal",
        "address": "token-1",
        "content": RenderedContent(title="hi", body="there"),
        "not_before": due,
    }
    return DeliveryCommand(**(fields | changes))  # type: ignore[arg-type]


@given(st.lists(st.integers(min_value=0, max_value=10**12), min_size=1, max_size=30))
def test_timer_keys_sort_by_due_time_and_the_due_ones_are_a_prefix(offsets_ms: list[int]) -> None:
    commands = [command(EPOCH + timedelta(milliseconds=ms)) for ms in offsets_ms]
    keys = sorted(timer_key(c) for c in commands)
    dues = [int(k.split("/")[0]) for k in keys]
    assert dues == sorted(int(c.not_before.timestamp() * 1000) for c in commands if c.not_before)
    now = int(EPOCH.timestamp() * 1000) + sorted(offsets_ms)[len(offsets_ms) // 2]
    due = [k for k in keys if k <= due_bound(now)]
    assert due == keys[: len(due)] and all(d <= now for d in dues[: len(due)])
    assert all(d > now for d in dues[len(due) :])


def test_a_timer_due_after_year_2286_is_not_due_now() -> None:
    """Its key had 14 digits and sorted before every 13-digit one: it fired at once."""
    far = command(datetime(2300, 1, 1, tzinfo=UTC))
    now = int(datetime(2026, 11, 28, tzinfo=UTC).timestamp() * 1000)
    assert not timer_key(far) <= due_bound(now)
    assert timer_key(far) > timer_key(command(datetime(2286, 1, 1, tzinfo=UTC)))


def test_release_picks_the_lane_and_says_queued() -> None:
    normal, critical = command(EPOCH), command(EPOCH, priority="critical")
    [out, queued] = release(N, normal, EPOCH.timestamp())
    assert out.topic == "p.notifications.delivery.push" and out.key == b"acme/ann"
    assert release(N, critical, EPOCH.timestamp())[0].topic == "p.notifications.delivery.push.urgent"
    event = default_codec().decode(queued.value or b"")
    assert isinstance(event, DeliveryOutcome) and (event.status, event.reason) == ("QUEUED", "released")
    again = default_codec().decode(release(N, normal, EPOCH.timestamp() + 5)[1].value or b"")
    assert isinstance(again, DeliveryOutcome) and again.event_id == event.event_id


def test_a_command_that_expired_while_waiting_is_expired_not_sent() -> None:
    late = command(EPOCH, expires_at=EPOCH + timedelta(minutes=1))
    [only] = release(N, late, (EPOCH + timedelta(minutes=2)).timestamp())
    event = default_codec().decode(only.value or b"")
    assert only.topic == "p.notifications.outcomes"
    assert isinstance(event, DeliveryOutcome) and event.status == "EXPIRED"


def test_store_keys_include_staged_writes_and_hide_deleted_ones() -> None:
    store: Store[bytes] = Store("t", encode=bytes, decode=bytes)
    store.restore(0, [])
    store.put(0, "b", b"1")
    store.put(0, "a", b"2")
    store.record_done()
    store.committed()
    store.delete(0, "a")
    store.put(0, "c", b"3")
    assert store.keys(0) == ["b", "c"] and store.size(0) == 2
    store.aborted()
    assert store.keys(0) == ["a", "b"]


def timers() -> Timers:
    store: Store[bytes] = Store("t", encode=bytes, decode=bytes)
    store.restore(0, [])
    return Timers(store, default_codec())


def encode(c: DeliveryCommand) -> bytes:
    return default_codec().encode(c)


def add(t: Timers, c: DeliveryCommand) -> None:
    t.add(0, c, default_codec().encode(c))
    t.store.record_done()
    t.store.committed()


def test_a_command_is_erased_when_its_request_came_before_the_erasure() -> None:
    erased_ms = str(int(EPOCH.timestamp() * 1000))
    before = command(None, requested_at=EPOCH - timedelta(seconds=1), occurred_at=EPOCH + timedelta(hours=1))
    at = command(None, requested_at=EPOCH)
    after = command(None, requested_at=EPOCH + timedelta(milliseconds=1))
    assert erased_before(erased_ms, before), "planned late, but requested before the erasure"
    assert not erased_before(erased_ms, at), "the router took the erasure first"
    assert not erased_before(erased_ms, after)
    assert not erased_before(None, before)
    legacy = command(None, occurred_at=EPOCH - timedelta(seconds=1))
    assert legacy.requested_at is None and erased_before(erased_ms, legacy), "v2: planning time"


def test_two_tenants_commands_with_one_delivery_id_each_keep_their_timer() -> None:
    """A delivery id derives from the notification id, which a producer may choose."""
    t = timers()
    acme = command(EPOCH)
    globex = acme.model_copy(update={"tenant_id": "globex inc"})
    for c in [acme, globex, acme]:
        add(t, c)
    due = t.due(0, int(EPOCH.timestamp() * 1000))
    assert sorted(c.tenant_id for c in due) == ["acme", "globex inc"]
    assert t.store.keys(0) == []


def test_cancel_takes_every_pending_command_of_the_notification_and_nothing_else() -> None:
    t = timers()
    nid, other = uuid.uuid4(), uuid.uuid4()
    mine = [command(EPOCH + timedelta(hours=h), notification_id=nid) for h in (1, 2, 9)]
    theirs = command(EPOCH + timedelta(hours=1), notification_id=other)
    for c in [*mine, theirs, mine[0]]:
        add(t, c)
    taken = t.cancel(0, nid)
    assert sorted(c.delivery_id for c in taken) == sorted(c.delivery_id for c in mine)
    assert t.cancel(0, nid) == []
    far_future = int((EPOCH + timedelta(days=365)).timestamp() * 1000)
    assert [c.delivery_id for c in t.due(0, far_future)] == [theirs.delivery_id]
    assert t.store.keys(0) == []


def test_a_released_command_leaves_the_index_and_cannot_be_cancelled_later() -> None:
    t = timers()
    nid = uuid.uuid4()
    early, late = (command(EPOCH + timedelta(minutes=m), notification_id=nid) for m in (1, 60))
    add(t, early)
    add(t, late)
    assert t.due(0, int((EPOCH + timedelta(minutes=5)).timestamp() * 1000)) == [early]
    assert t.cancel(0, nid) == [late]
    assert t.store.keys(0) == []


def test_cancel_can_take_only_the_commands_it_picks() -> None:
    t = timers()
    nid = uuid.uuid4()
    plain = command(EPOCH + timedelta(hours=1), notification_id=nid)
    escalation = command(EPOCH + timedelta(minutes=5), notification_id=nid, channel="email", unless="seen")
    add(t, plain)
    add(t, escalation)
    assert t.cancel(0, nid, lambda c: c.unless == "seen") == [escalation]
    assert t.cancel(0, nid, lambda c: c.unless == "seen") == []
    assert t.cancel(0, nid) == [plain]
    assert t.store.keys(0) == []


def test_due_leaves_the_commands_it_is_told_to_hold() -> None:
    t = timers()
    plain = command(EPOCH + timedelta(minutes=1))
    escalation = command(EPOCH + timedelta(minutes=2), channel="email", unless="seen")
    add(t, plain)
    add(t, escalation)
    later = int((EPOCH + timedelta(minutes=5)).timestamp() * 1000)
    assert t.due(0, later, lambda c: c.unless is not None) == [plain]
    t.store.committed()
    assert t.due(0, later) == [escalation]


def test_commands_due_at_once_are_taken_a_bounded_number_and_size_at_a_time_in_due_order() -> None:
    """Every member of a broadcast scheduled for 9:00 came due at once, all in one transaction."""
    t = timers()
    pending = [command(EPOCH + timedelta(seconds=i)) for i in range(7)]
    escalation = command(EPOCH, channel="email", unless="seen")
    for c in [*pending, escalation]:
        add(t, c)
    later = int((EPOCH + timedelta(minutes=5)).timestamp() * 1000)

    def held(c: DeliveryCommand) -> bool:
        return c.unless is not None

    first, more, size = t.take_due(0, later, held, limit=3)
    assert (first, more) == (pending[:3], True) and size == sum(len(encode(c)) for c in first)
    second, more, _ = t.take_due(0, later, held, limit=3, budget=len(encode(pending[3])) + 1)
    assert (second, more) == (pending[3:5], True), "taken until the budget is reached"
    rest, more, _ = t.take_due(0, later, held, limit=3)
    assert (rest, more) == (pending[5:], False)
    assert t.due(0, later) == [escalation], "the held one is still due"


@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("add"), st.integers(0, 50), st.integers(0, 3)),
            st.tuples(st.just("due"), st.integers(0, 60), st.booleans()),
            st.tuples(st.just("cancel"), st.integers(0, 3), st.booleans()),
            st.tuples(st.just("poison"), st.integers(0, 50), st.integers(0, 3)),
        ),
        max_size=40,
    )
)
def test_due_takes_what_a_full_scan_would_through_aborts_and_cancellations(
    steps: list[tuple[str, int, object]],
) -> None:
    """The heap beside the store answers `due` as a sorted scan of the store's keys did, whatever
    commits, aborts, cancellations and rolled-back (poison) records came between."""
    t, notifications = timers(), [uuid.uuid4() for _ in range(4)]

    def pending_due(now_ms: int) -> list[str]:
        return [k for k in t.store.keys(0) if k <= due_bound(now_ms) and not k.startswith("n/")]

    for op, a, b in steps:
        if op == "add":
            add(t, command(EPOCH + timedelta(minutes=a), notification_id=notifications[int(str(b))]))
        elif op == "due":
            now_ms = int((EPOCH + timedelta(minutes=a)).timestamp() * 1000)
            expected = pending_due(now_ms)
            assert [timer_key(c) for c in t.due(0, now_ms)] == expected
            assert pending_due(now_ms) == []
            (t.store.committed if b else t.store.aborted)()
            assert pending_due(now_ms) == ([] if b else expected)
        elif op == "cancel":
            t.cancel(0, notifications[a])
            (t.store.committed if b else t.store.aborted)()
        else:
            c = command(EPOCH + timedelta(minutes=a), notification_id=notifications[int(str(b))])
            t.add(0, c, default_codec().encode(c))
            t.cancel(0, notifications[int(str(b))])
            t.store.record_failed()


def test_a_sweep_walks_every_pending_timer_in_steps_and_takes_only_what_it_is_told_to() -> None:
    t = timers()
    pending = [command(EPOCH + timedelta(minutes=m), recipient_id=("ann", "bob")[m % 2]) for m in range(11)]
    for c in pending:
        add(t, c)

    def walk(budget: int) -> tuple[list[DeliveryCommand], int]:
        taken, after, steps = [], "", 0
        while True:
            step, resume = t.sweep(0, after, budget, lambda c: c.recipient_id == "ann")
            taken, steps = taken + step, steps + 1
            t.store.committed()
            if resume is None:
                return taken, steps
            after = resume

    taken, steps = walk(3)
    assert steps == 4 and taken == [c for c in pending if c.recipient_id == "ann"]
    assert [t.cancel(0, c.notification_id) for c in taken] == [[]] * len(taken), "left the index too"
    far_future = int((EPOCH + timedelta(days=365)).timestamp() * 1000)
    assert t.due(0, far_future) == [c for c in pending if c.recipient_id == "bob"]


def test_a_sweep_step_rolled_back_is_walked_again_and_a_new_walk_sees_later_timers() -> None:
    t = timers()
    first = [command(EPOCH + timedelta(minutes=m), recipient_id="ann") for m in range(4)]
    for c in first:
        add(t, c)
    ann = lambda c: c.recipient_id == "ann"  # noqa: E731
    step, resume = t.sweep(0, "", 2, ann)
    t.store.committed()
    assert step == first[:2] and resume == timer_key(first[1])
    assert t.sweep(0, resume, 2, ann) == (first[2:], None)
    t.store.aborted()
    late = command(EPOCH, recipient_id="ann")
    add(t, late)
    assert t.sweep(0, resume, 2, ann) == (first[2:], None), "the rolled-back step again"
    t.store.committed()
    assert t.sweep(0, "", 2, ann) == ([late], None), "a new walk starts from a fresh snapshot"


def test_an_erasure_starts_a_walk_or_has_the_one_under_way_start_over_once() -> None:
    assert next_walk(None) == "0 "
    assert next_walk("0 ") == "0 ", "a walk not yet started covers the new erasure"
    assert next_walk("0 0000000000001/x") == "1 0000000000001/x"
    assert next_walk("1 0000000000001/x") == "1 0000000000001/x"


def test_a_timer_this_release_cannot_read_is_passed_over_then_taken_out_when_due() -> None:
    """A newer release's timer, restored after a rollback: its decode error stopped every punctuation."""
    t = timers()
    nid = uuid.uuid4()
    newer, readable = (command(EPOCH + timedelta(minutes=m), notification_id=nid) for m in (1, 2))
    add(t, newer)
    add(t, readable)
    unknown = b"\xc3\x01" + bytes(8) + b"a field this release has no schema for"
    t.store.put(0, timer_key(newer), unknown)
    t.store.record_done()
    t.store.committed()
    assert t.sweep(0, "", 10, lambda c: True) == ([readable], None)
    add(t, readable)
    assert t.cancel(0, nid) == [readable]
    assert t.store.keys(0) == [timer_key(newer), f"n/{nid}"], "kept for a release that reads it"
    now = int((EPOCH + timedelta(hours=1)).timestamp() * 1000)
    assert t.due(0, now) == []
    [(partition, value, error)] = t.unreadable
    assert (partition, value, type(error).__name__) == (0, unknown, "UnknownFingerprint")
    assert timer_key(newer) not in t.store.keys(0)


def test_unreadable_timers_count_against_a_punctuations_limit_and_budget() -> None:
    """A rollback can leave every pending timer unreadable: all their dead letters in one punctuation
    made the transaction the limits are there to prevent."""
    t = timers()
    unknown = b"\xc3\x01" + bytes(8) + b"x" * 100
    for m in range(5):
        key = timer_key(command(EPOCH + timedelta(minutes=m)))
        t.store.put(0, key, unknown)
        t.due_keys.add(0, key)
    t.store.record_done()
    t.store.committed()
    now = int((EPOCH + timedelta(hours=1)).timestamp() * 1000)
    taken, more, size = t.take_due(0, now, limit=2)
    assert (taken, more, len(t.unreadable), size) == ([], True, 2, 2 * len(unknown))
    t.unreadable.clear()
    taken, more, size = t.take_due(0, now, budget=150)
    assert (taken, more, len(t.unreadable)) == ([], True, 2)
