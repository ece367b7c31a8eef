import json
from dataclasses import replace
from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidings.errors import InvalidEvent, UnreadableState
from tidings.kafka import Incoming
from tidings.state import DueKeys, Store


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def store(clock: Clock | None = None, ttl: timedelta | None = None) -> Store[dict[str, int]]:
    s: Store[dict[str, int]] = Store(
        "tidings.router.test.changelog",
        encode=lambda v: json.dumps(v).encode(),
        decode=json.loads,
        ttl=ttl,
        clock=clock or Clock(),
    )
    s.restore(0, [])
    s.restore(1, [])
    return s


def as_incoming(outputs: list) -> list[Incoming]:  # type: ignore[type-arg]
    return [Incoming(o.topic, o.partition, i, o.key, o.value) for i, o in enumerate(outputs)]


def test_writes_are_visible_to_the_batch_and_kept_only_after_commit() -> None:
    s = store()
    s.put(0, "a", {"n": 1})
    s.record_done()
    assert s.get(0, "a") == {"n": 1}
    s.aborted()
    assert s.get(0, "a") is None
    s.put(0, "a", {"n": 2})
    s.record_done()
    [out] = s.changelog()
    assert (out.topic, out.partition, out.key) == ("tidings.router.test.changelog", 0, b"a")
    s.committed()
    assert s.get(0, "a") == {"n": 2} and s.changelog() == []


def test_a_failed_record_drops_only_its_own_writes() -> None:
    s = store()
    s.put(0, "a", {"n": 1})
    s.record_done()
    s.put(0, "a", {"n": 99})
    s.put(1, "b", {"n": 99})
    s.record_failed()
    assert s.get(0, "a") == {"n": 1} and s.get(1, "b") is None


def test_writes_to_unassigned_partitions_are_refused() -> None:
    with pytest.raises(KeyError):
        store().put(7, "a", {})


def test_ttl_and_purge() -> None:
    clock = Clock()
    s = store(clock, ttl=timedelta(seconds=10))
    s.put(0, "a", {"n": 1})
    s.committed()
    clock.now += 11
    assert s.get(0, "a") is None
    clock.now += 60
    [tombstone] = s.changelog()
    assert tombstone.key == b"a" and tombstone.value is None


def test_an_entry_tells_how_long_it_has_left() -> None:
    clock = Clock()
    s = store(clock, ttl=timedelta(seconds=10))
    s.put(0, "a", {"n": 1})
    s.put(0, "b", {"n": 1}, ttl=timedelta(days=30))
    assert s.left(0, "a") == timedelta(seconds=10) and s.left(0, "b") == timedelta(days=30)
    s.committed()
    clock.now += 4
    assert s.left(0, "a") == timedelta(seconds=6) and s.left(0, "missing") is None
    clock.now += 7
    assert s.left(0, "a") is None and s.left(0, "b") == timedelta(days=30, seconds=-11)
    assert store(clock).left(0, "a") is None


def test_an_entry_that_expired_while_the_partition_was_not_held_is_deleted_from_the_changelog() -> None:
    """Compaction keeps a key's last value: without a tombstone the entry stayed in the changelog for
    good, read again by every restore."""
    clock = Clock()
    s = store(clock, ttl=timedelta(seconds=10))
    s.put(0, "old", {"n": 1})
    s.put(0, "kept", {"n": 2})
    s.put(0, "lasting", {"n": 3}, ttl=timedelta(hours=1))
    s.record_done()
    log = as_incoming(s.changelog())
    clock.now += 11
    later = store(clock, ttl=timedelta(seconds=10))
    assert later.restore(0, log) == 1
    assert (later.get(0, "old"), later.get(0, "lasting")) == (None, {"n": 3})
    clock.now += 61
    assert sorted((o.key, o.value) for o in later.changelog()) == [(b"kept", None), (b"old", None)]


@given(
    st.lists(
        st.tuples(st.sampled_from([0, 1]), st.sampled_from("abc"), st.one_of(st.none(), st.integers())),
        max_size=30,
    )
)
def test_restore_from_changelog_equals_committed_memory(ops: list[tuple[int, str, int | None]]) -> None:
    s = store()
    log = []
    for partition, key, value in ops:
        if value is None:
            s.delete(partition, key)
        else:
            s.put(partition, key, {"v": value})
        s.record_done()
        log += s.changelog()
        s.committed()
    restored = store()
    for partition in (0, 1):
        restored.restore(partition, [r for r in as_incoming(log) if r.partition == partition])
    for partition in (0, 1):
        for key in "abc":
            assert restored.get(partition, key) == s.get(partition, key)


def test_a_heap_rebuilt_inside_a_failed_record_keeps_the_keys_the_record_deleted() -> None:
    s = store()
    due = DueKeys(s)
    s.put(0, "0000000000100/a", {"n": 1})
    due.add(0, "0000000000100/a")
    s.committed()
    s.record_done()
    s.delete(0, "0000000000100/a")
    s.version += 1
    s.put(0, "0000000000200/b", {"n": 2})
    due.add(0, "0000000000200/b")
    s.record_failed()
    assert due.take(0, 1_000) == ["0000000000100/a"]


def test_known_keys_include_staged_deletes_and_writes() -> None:
    s = store()
    s.put(0, "a", {"n": 1})
    s.committed()
    s.delete(0, "a")
    s.put(0, "b", {"n": 2})
    s.put(1, "c", {"n": 3})
    assert (s.keys(0), s.known_keys(0), s.known_keys(1)) == (["b"], ["a", "b"], ["c"])


def test_due_keys_are_taken_at_most_a_limit_at_a_time_in_order() -> None:
    s = store()
    due = DueKeys(s)
    for n in (300, 100, 200, 900):
        key = f"{n:013d}/k{n}"
        s.put(0, key, {"n": n})
        due.add(0, key)
    s.committed()
    assert due.take(0, 500, limit=2) == ["0000000000100/k100", "0000000000200/k200"]
    assert due.take(0, 500, limit=2) == ["0000000000300/k300"]
    assert due.take(0, 1_000) == ["0000000000900/k900"]


def test_a_value_this_release_cannot_decode_fails_only_the_reads_of_its_key() -> None:
    """A newer release's value, restored after a rollback, raised out of the restore (the consumer's
    assignment), and the processor stopped at every restart."""
    writer = store()
    writer.put(0, "readable", {"n": 1})
    writer.put(0, "newer", {"n": 2})
    records = as_incoming(writer.changelog())
    records = [
        r if r.key != b"newer" else replace(r, value=(r.value or b"")[:8] + b"{not json") for r in records
    ]
    reader = store()
    assert reader.restore(0, records) == 2
    assert reader.get(0, "readable") == {"n": 1}
    assert reader.keys(0) == ["newer", "readable"], "listing reads no value"
    with pytest.raises(UnreadableState, match="'newer' is unreadable: JSONDecodeError"):
        reader.get(0, "newer")
    assert isinstance(UnreadableState("x"), InvalidEvent), "a record that needs it is dead-lettered"
    reader.put(0, "newer", {"n": 3})
    reader.record_done()
    reader.committed()
    assert reader.get(0, "newer") == {"n": 3}, "a write replaces it"
