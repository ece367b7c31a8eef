from tidings.kafka import Incoming
from tidings.kafka.align import Aligner


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def rec(topic: str, partition: int, offset: int, ts: int) -> Incoming:
    return Incoming(topic, partition, offset, None, b"", [], ts)


ASSIGNED = [("req", 0), ("rcp", 0), ("req", 1), ("rcp", 1)]


def test_releases_in_timestamp_order_within_a_partition_group() -> None:
    a = Aligner()
    a.add([rec("req", 0, 0, 20), rec("req", 0, 1, 40), rec("rcp", 0, 0, 10), rec("rcp", 0, 1, 30)])
    out = a.release(ASSIGNED, lambda t, p: True, 100)
    assert [(r.topic, r.timestamp_ms) for r in out] == [("rcp", 10), ("req", 20), ("rcp", 30), ("req", 40)]


def test_waits_for_a_lagging_topic_then_gives_up_after_max_idle() -> None:
    clock = Clock()
    a = Aligner(max_idle=1.0, clock=clock)
    lagging = {("rcp", 0)}

    def caught_up(topic: str, partition: int) -> bool:
        return (topic, partition) not in lagging

    a.add([rec("req", 0, 0, 20)])
    assert a.release(ASSIGNED, caught_up, 100) == []
    a.add([rec("rcp", 0, 0, 10)])
    assert [r.topic for r in a.release(ASSIGNED, caught_up, 100)] == ["rcp"]
    lagging.clear()
    assert [r.topic for r in a.release(ASSIGNED, caught_up, 100)] == ["req"]
    lagging.add(("rcp", 0))
    a.add([rec("req", 0, 1, 50)])
    clock.now += 0.5
    assert a.release(ASSIGNED, caught_up, 100) == []
    clock.now += 1.0
    assert [r.offset for r in a.release(ASSIGNED, caught_up, 100)] == [1]


def test_groups_do_not_block_each_other_and_limit_holds() -> None:
    a = Aligner()
    a.add([rec("req", 1, i, i) for i in range(5)] + [rec("req", 0, 0, 1)])
    out = a.release(ASSIGNED, lambda t, p: not (t == "rcp" and p == 0), 3)
    assert [(r.partition, r.offset) for r in out] == [(1, 0), (1, 1), (1, 2)]
    a.drop([("req", 1)])
    assert a.pending() == 1


def test_equal_timestamps_release_state_topics_first() -> None:
    a = Aligner(first=["rcp"])
    a.add([rec("req", 0, 0, 10), rec("rcp", 0, 0, 10)])
    assert [r.topic for r in a.release(ASSIGNED, lambda t, p: True, 10)] == ["rcp", "req"]
