"""The audience processor's fold and expansion, driven without a broker: commits, aborts and crashes
(a new expander restored from the changelog written so far) are simulated by hand."""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any
from uuid import UUID, uuid4, uuid5

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from processors import audience
from processors.audience import Expander
from processors.plan import Catalog
from tidings.broadcasts import membership
from tidings.catalog import parse_type
from tidings.codec import default_codec
from tidings.errors import InvalidEvent
from tidings.events import (
    AudienceMembersAdded,
    AudienceMembersRemoved,
    BroadcastCancelled,
    BroadcastRequested,
    Event,
    NotificationCancelled,
    NotificationRequested,
)
from tidings.kafka import Incoming, Output, records
from tidings.kafka.records import partition_for
from tidings.topics import Names

NAMES = Names("t.")
CODEC = default_codec()


def catalog() -> Catalog:
    c = Catalog()
    c.apply(
        parse_type(
            "*",
            {
                "key": "news",
                "category": "marketing",
                "channels": ["in_app"],
                "templates": {"in_app": {"default": {"title": "{{ headline }}"}}},
            },
        )
    )
    return c


class Harness:
    """One partition of the processor, with its changelog kept across simulated crashes."""

    def __init__(self) -> None:
        self.changelog: dict[str, list[Output]] = defaultdict(list)
        self.outputs: list[Output] = []
        self.offset = 0
        self.restart()

    def restart(self) -> None:
        self.x = Expander(NAMES, catalog(), CODEC)
        for store in self.x.stores:
            records = [
                Incoming(o.topic, 0, i, o.key, o.value) for i, o in enumerate(self.changelog[store.topic])
            ]
            store.restore(0, records)

    def _commit(self, outputs: list[Output]) -> None:
        for store in self.x.stores:
            self.changelog[store.topic] += store.changelog()
            store.committed()
        self.outputs += outputs

    def feed(self, event: Event, *, crash: bool = False) -> list[Output]:
        record = Incoming(NAMES.broadcasts, 0, self.offset, event.key.encode(), CODEC.encode(event))
        outputs = list(self.x.handle(record))
        for store in self.x.stores:
            store.record_done()
        if crash:
            self.restart()
            return self.feed(event)
        self.offset += 1
        self._commit(outputs)
        return outputs

    def tick(self, *, crash: bool = False) -> list[Output]:
        outputs = self.x.advance_all()
        if crash:
            self.restart()
            return []
        self._commit(outputs)
        return outputs

    def drain(self) -> None:
        for _ in range(10_000):
            if not self.x.pending():
                return
            self.tick()
        raise AssertionError("expansion never finished")

    def events(self) -> list[Event]:
        return [CODEC.decode(o.value or b"") for o in self.outputs if o.topic == NAMES.requested]


def added(*recipients: str, audience_id: str = "all") -> AudienceMembersAdded:
    return AudienceMembersAdded(tenant_id="acme", audience_id=audience_id, recipient_ids=list(recipients))


def removed(*recipients: str, audience_id: str = "all") -> AudienceMembersRemoved:
    return AudienceMembersRemoved(tenant_id="acme", audience_id=audience_id, recipient_ids=list(recipients))


def broadcast(bid: UUID | None = None, **changes: Any) -> BroadcastRequested:
    fields: dict[str, Any] = {
        "tenant_id": "acme",
        "audience_id": "all",
        "broadcast_id": bid or uuid4(),
        "notification_type": "news",
        "data_json": '{"headline": "hi"}',
    }
    return BroadcastRequested(**(fields | changes))


def cancelled(bid: UUID) -> BroadcastCancelled:
    return BroadcastCancelled(tenant_id="acme", audience_id="all", broadcast_id=bid, reason="oops")


def requested_to(h: Harness, bid: UUID) -> list[str]:
    return [
        e.recipient_id for e in h.events() if isinstance(e, NotificationRequested) and e.broadcast_id == bid
    ]


def test_each_member_gets_one_request_with_a_derived_id_on_its_own_key() -> None:
    h = Harness()
    h.feed(added("u1", "u2", "u3"))
    b = broadcast(priority="high", channels=["in_app"])
    outputs = h.feed(b)
    assert [o.topic for o in outputs] == [NAMES.requested] * 3
    assert [o.key for o in outputs] == [b"acme/u1", b"acme/u2", b"acme/u3"]
    for event in h.events():
        assert isinstance(event, NotificationRequested)
        assert event.notification_id == uuid5(b.broadcast_id, event.recipient_id)
        assert (event.broadcast_id, event.data_json, event.priority, event.channels) == (
            b.broadcast_id,
            b.data_json,
            "high",
            ["in_app"],
        )
    assert not h.x.pending()


def test_a_broadcast_covers_the_members_at_its_place_in_the_topic(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(audience, "SLICE", 2)
    monkeypatch.setattr(audience, "MAX_PER_TICK", 2)
    h = Harness()
    h.feed(added("u1", "u2", "u3", "u4", "u5"))
    b = broadcast()
    assert len(h.feed(b)) == 2
    h.feed(added("late"))
    h.feed(removed("u4"))
    h.feed(added("u4"))
    h.drain()
    assert requested_to(h, b.broadcast_id) == ["u1", "u2", "u3", "u5"]


def test_a_repeated_broadcast_id_is_ignored_and_an_unknown_type_refused() -> None:
    h = Harness()
    h.feed(added("u1"))
    b = broadcast()
    h.feed(b)
    assert h.feed(b) == []
    with pytest.raises(InvalidEvent, match="unknown notification type"):
        h.feed(broadcast(notification_type="nope"))


def test_cancelling_midway_stops_the_expansion_and_cancels_the_members_reached(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(audience, "SLICE", 3)
    monkeypatch.setattr(audience, "MAX_PER_TICK", 3)
    h = Harness()
    h.feed(added(*[f"u{i}" for i in range(10)]))
    b = broadcast()
    h.feed(b)
    h.feed(cancelled(b.broadcast_id))
    h.drain()
    assert requested_to(h, b.broadcast_id) == ["u0", "u1", "u2"]
    withdrawn = [e for e in h.events() if isinstance(e, NotificationCancelled)]
    assert [(e.recipient_id, e.reason) for e in withdrawn] == [("u0", "oops"), ("u1", "oops"), ("u2", "oops")]
    assert all(e.notification_id == uuid5(b.broadcast_id, e.recipient_id) for e in withdrawn)


def test_cancelling_a_finished_broadcast_cancels_every_member_still_in_the_audience() -> None:
    h = Harness()
    h.feed(added("u1", "u2", "u3"))
    b = broadcast()
    h.feed(b)
    h.feed(removed("u2"))
    h.feed(cancelled(b.broadcast_id))
    assert [e.recipient_id for e in h.events() if isinstance(e, NotificationCancelled)] == ["u1", "u3"]
    assert h.feed(cancelled(b.broadcast_id)) == []


def test_a_cancellation_that_comes_first_means_the_broadcast_never_starts() -> None:
    h = Harness()
    h.feed(added("u1"))
    b = broadcast()
    h.feed(cancelled(b.broadcast_id))
    assert h.feed(b) == []


def test_audiences_are_apart_and_membership_is_idempotent() -> None:
    h = Harness()
    h.feed(added("u1", "u1", "u2"))
    h.feed(added("u2", audience_id="other"))
    h.feed(added("u1"))
    h.feed(removed("nobody"))
    b = broadcast()
    h.feed(b)
    assert requested_to(h, b.broadcast_id) == ["u1", "u2"]


def test_membership_events_are_chunked_and_bounded() -> None:
    events = membership(tenant="acme", audience="all", recipients=[f"u{i}" for i in range(2500)])
    assert [len(e.recipient_ids) for e in events] == [1000, 1000, 500]
    with pytest.raises(ValueError):
        AudienceMembersAdded(tenant_id="acme", audience_id="all", recipient_ids=["u"] * 1001)
    with pytest.raises(ValueError, match="audience"):
        AudienceMembersAdded(tenant_id="acme", audience_id="a/b", recipient_ids=["u"])


OPS = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.lists(st.integers(0, 40), min_size=1, max_size=8)),
        st.tuples(st.just("remove"), st.lists(st.integers(0, 40), min_size=1, max_size=4)),
        st.tuples(st.just("broadcast"), st.none()),
        st.tuples(st.just("tick"), st.booleans()),
    ),
    max_size=30,
)


@settings(max_examples=150, deadline=None)
@given(ops=OPS, slice_size=st.integers(1, 7), crash_feeds=st.lists(st.booleans(), max_size=30))
def test_crashes_anywhere_neither_lose_nor_double_a_member_request(
    ops: list[tuple[str, Any]], slice_size: int, crash_feeds: list[bool]
) -> None:
    """With no removal after a broadcast, each broadcast reaches exactly the members at its place,
    once, however the work is cut into transactions and wherever the process dies."""
    original = audience.SLICE, audience.MAX_PER_TICK
    audience.SLICE, audience.MAX_PER_TICK = slice_size, 2 * slice_size
    try:
        h = Harness()
        members: set[str] = set()
        expected: Counter[tuple[UUID, str]] = Counter()
        crashes = iter(crash_feeds)
        for op, arg in ops:
            if op == "tick":
                h.tick(crash=arg)
                continue
            if op == "remove":
                h.drain()
                members -= {f"u{i}" for i in arg}
                h.feed(removed(*[f"u{i}" for i in arg]), crash=next(crashes, False))
            elif op == "add":
                members |= {f"u{i}" for i in arg}
                h.feed(added(*[f"u{i}" for i in arg]), crash=next(crashes, False))
            else:
                b = broadcast()
                expected.update((b.broadcast_id, m) for m in members)
                h.feed(b, crash=next(crashes, False))
        h.drain()
        made = Counter(
            (e.broadcast_id, e.recipient_id)
            for e in h.events()
            if isinstance(e, NotificationRequested) and e.broadcast_id is not None
        )
        assert made == expected
    finally:
        audience.SLICE, audience.MAX_PER_TICK = original


def test_concurrent_broadcasts_take_turns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(audience, "SLICE", 10)
    monkeypatch.setattr(audience, "MAX_PER_TICK", 20)
    h = Harness()
    h.feed(added(*[f"u{i}" for i in range(200)]))
    ids = [uuid4() for _ in range(5)]
    for bid in ids:
        h.feed(broadcast(bid))
    for _ in range(10):
        h.tick()
    made = Counter(e.broadcast_id for e in h.events() if isinstance(e, NotificationRequested))
    assert sorted(made[bid] for bid in ids) == [50] * 5


def test_a_job_that_cannot_go_on_is_dead_lettered_and_ended(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(audience, "SLICE", 1)
    monkeypatch.setattr(audience, "MAX_PER_TICK", 1)
    h = Harness()
    h.feed(added("u1", "u2", "u3"))
    b, other = broadcast(), broadcast()
    h.feed(b)
    h.feed(other)
    h.x.jobs.delete(0, f"r\0acme\0{b.broadcast_id}")
    h._commit([])
    outputs = [o for _ in range(6) for o in h.tick()]
    [letter] = [o for o in outputs if o.topic == NAMES.dlq]
    assert (
        dict(letter.headers)["tidings.error.message"]
        == f"broadcast {b.broadcast_id} has no stored request".encode()
    )
    assert dict(letter.headers)["tidings.replayable"] == b"false", "its value is progress, not a record"
    assert not h.x.pending()
    assert requested_to(h, other.broadcast_id) == ["u1", "u2", "u3"]
    assert requested_to(h, b.broadcast_id) == ["u1"]
    assert h.feed(b) == []


def test_large_data_makes_smaller_transactions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(audience, "MAX_TXN_BYTES", 1024 * 1024)
    h = Harness()
    h.feed(added(*[f"u{i}" for i in range(100)]))
    big = '{"headline": "' + "x" * 100_000 + '"}'
    first = h.feed(broadcast(data_json=big))
    assert 2 <= len(first) <= 1024 * 1024 // audience.BATCH // len(big)
    assert sum(len(o.value or b"") for o in h.tick()) <= 1024 * 1024 + 120_000


def test_a_batch_of_broadcasts_shares_one_transactions_size(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each broadcast of a batch took a whole transaction's budget: five of 250 KB made 83 MB."""
    monkeypatch.setattr(audience, "MAX_TXN_BYTES", 1024 * 1024)
    h = Harness()
    h.feed(added(*[f"u{i}" for i in range(100)]))
    big = '{"headline": "' + "x" * 100_000 + '"}'
    read = [o for _ in range(audience.BATCH) for o in h.feed(broadcast(data_json=big))]
    assert 0 < sum(len(o.value or b"") for o in read) <= 1024 * 1024 + 120_000 * audience.BATCH
    h.drain()
    assert len(h.events()) == 100 * audience.BATCH


def test_a_member_request_over_the_record_limit_is_dead_lettered_by_the_punctuation_too(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Made by a punctuation (the first members had left, so reading the broadcast made nothing), an
    oversized request failed the commit every pending broadcast shares, at every punctuation."""
    monkeypatch.setattr(audience, "MAX_SCAN", 2)
    monkeypatch.setattr(records, "MAX_RECORD_BYTES", 20_000)
    h = Harness()
    h.feed(added("u0", "u1", "u2"))
    h.feed(removed("u0", "u1"))
    near = '{"headline": "' + "x" * 19_700 + '"}'
    assert h.feed(b := broadcast(data_json=near)) == []
    other = broadcast()
    h.feed(other)
    outputs = [o for _ in range(3) for o in h.tick()]
    [letter] = [o for o in outputs if o.topic == NAMES.dlq]
    assert b"over the 20000 a record may be" in dict(letter.headers)["tidings.error.message"]
    assert requested_to(h, b.broadcast_id) == [] and requested_to(h, other.broadcast_id) == ["u2"]
    assert not h.x.pending()
    h.feed(added("v", audience_id="b"))
    with pytest.raises(InvalidEvent, match="over the 20000"):
        h.feed(broadcast(data_json=near, audience_id="b"))


@pytest.mark.parametrize("field", ["source", "actor_id"])
def test_every_field_of_the_broadcast_counts_toward_a_transactions_size(
    monkeypatch: pytest.MonkeyPatch, field: str
) -> None:
    """Counting the data alone, a 900 KB `source` made 500 requests (450 MB) in one transaction."""
    monkeypatch.setattr(audience, "MAX_TXN_BYTES", 1024 * 1024)
    h = Harness()
    h.feed(added(*[f"u{i}" for i in range(100)]))
    first = h.feed(broadcast(**{field: "s" * 100_000}))
    assert 1 <= len(first) <= 10
    for _ in range(3):
        assert sum(len(o.value or b"") for o in h.tick()) <= 1024 * 1024 + 120_000


def test_a_broadcast_id_belongs_to_one_audience() -> None:
    h = Harness()
    h.feed(added("u1"))
    b = broadcast()
    h.feed(b)
    with pytest.raises(InvalidEvent, match="went to audience 'all', not 'other'"):
        h.feed(BroadcastCancelled(tenant_id="acme", audience_id="other", broadcast_id=b.broadcast_id))
    with pytest.raises(InvalidEvent, match="went to audience 'all'"):
        h.feed(broadcast(b.broadcast_id, audience_id="other"))


def test_idempotency_keys_derive_one_broadcast_id_per_audience() -> None:
    from tidings.broadcasts import broadcast_request

    one = broadcast_request(tenant="acme", audience="a", type="news", idempotency_key="k")
    again = broadcast_request(tenant="acme", audience="a", type="news", idempotency_key="k")
    other = broadcast_request(tenant="acme", audience="b", type="news", idempotency_key="k")
    assert one.broadcast_id == again.broadcast_id != other.broadcast_id


def test_a_broadcast_scheduled_far_ahead_can_be_cancelled_until_30_days_after_it_is_due() -> None:
    """Remembered 30 days from its expansion, a broadcast scheduled 300 days ahead and cancelled on day
    31 was found by nothing: every member got it, and the cancellation answered 202."""
    import time
    from datetime import UTC, datetime, timedelta

    h = Harness()
    h.feed(added("u1", "u2"))
    b = broadcast(scheduled_at=datetime.now(UTC) + timedelta(days=300))
    h.feed(b)
    day = 24 * 3600
    h.x.finished.clock = lambda: time.time() + 31 * day
    h.feed(cancelled(b.broadcast_id))
    assert [e.recipient_id for e in h.events() if isinstance(e, NotificationCancelled)] == ["u1", "u2"]
    h.x.finished.clock = lambda: time.time() + 331 * day
    assert h.x.job(0, f"acme\0{b.broadcast_id}") is None


def test_a_far_scheduled_broadcast_cancelled_midway_stays_a_duplicate_until_it_was_due(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Kept 30 days from its cancellation, a repeat of the request (an SDK retry, a replay) on day 31
    expanded the cancelled broadcast again."""
    import time
    from datetime import UTC, datetime, timedelta

    monkeypatch.setattr(audience, "SLICE", 1)
    h = Harness()
    h.feed(added("u1", "u2", "u3"))
    b = broadcast(scheduled_at=datetime.now(UTC) + timedelta(days=300))
    h.feed(b)
    h.feed(cancelled(b.broadcast_id))
    h.drain()
    h.x.finished.clock = lambda: time.time() + 31 * 24 * 3600
    assert h.feed(b) == []
    assert requested_to(h, b.broadcast_id) == ["u1"]


def test_one_id_given_where_a_list_of_ids_is_expected_is_refused_not_spelled_out() -> None:
    from tidings.broadcasts import membership
    from tidings.erasure import erasure
    from tidings.errors import InvalidEvent

    with pytest.raises(InvalidEvent, match=r"recipients is a list of ids, not one id: \['ada'\]"):
        membership(tenant="acme", audience="beta", recipients="ada")
    with pytest.raises(InvalidEvent, match="audiences is a list of ids"):
        erasure(tenant="acme", recipient="ada", audiences="beta")
    [added] = membership(tenant="acme", audience="beta", recipients=["ada"])
    assert added.recipient_ids == ["ada"]


def test_an_event_on_another_partition_than_its_key_hashes_to_is_refused_not_sent_to_nobody() -> None:
    x = Expander(NAMES, catalog(), CODEC)
    x.partition_counts = {NAMES.broadcasts: 3}
    for store in x.stores:
        for p in range(3):
            store.restore(p, [])
    right = partition_for("acme/all", 3)
    wrong = (right + 1) % 3

    def on(p: int, event: Event) -> list[Output]:
        outputs = x.handle(Incoming(NAMES.broadcasts, p, 0, event.key.encode(), CODEC.encode(event)))
        for store in x.stores:
            store.record_done()
            store.committed()
        return outputs

    on(right, added("u1", "u2"))
    for event in (added("u3"), broadcast(), removed("u1"), cancelled(uuid4())):
        with pytest.raises(InvalidEvent, match=f"on partition {wrong}, but .* 'acme/all' on {right} of 3"):
            on(wrong, event)
    assert len(on(right, broadcast())) == 2
