import uuid

from tidings.config import Settings
from tidings.kafka import apply_topics
from tidings.topics import DAY_MS, TopicSpec, capped, registry


def test_apply_is_idempotent_for_the_registry(stack: Settings) -> None:
    reports = apply_topics(stack, registry(stack))
    assert {r.action for r in reports} == {"ok"}, [r for r in reports if r.action != "ok"]


def test_apply_creates_then_reports_drift(stack: Settings) -> None:
    name = f"drift.{uuid.uuid4().hex[:8]}"
    spec = TopicSpec(name, "k", (), partitions=2, retention_ms=DAY_MS)
    assert [r.action for r in apply_topics(stack, [spec])] == ["created"]
    assert [r.action for r in apply_topics(stack, [spec])] == ["ok"]
    changed = TopicSpec(name, "k", (), partitions=4, retention_ms=2 * DAY_MS, cleanup_policy="delete")
    [report] = apply_topics(stack, [changed])
    assert report.action == "drift"
    assert any(d.startswith("partitions 2 != 4") for d in report.drift)
    assert any(d.startswith("retention.ms 86400000 != 172800000") for d in report.drift)


def test_apply_alters_a_drifted_config_but_never_partitions(stack: Settings) -> None:
    name = f"alter.{uuid.uuid4().hex[:8]}"
    assert [r.action for r in apply_topics(stack, [TopicSpec(name, "k", (), partitions=2)])] == ["created"]
    shorter = TopicSpec(name, "k", (), partitions=2, retention_ms=DAY_MS)
    [altered] = apply_topics(stack, [shorter], alter=True)
    assert (altered.action, altered.drift) == ("altered", [])
    assert altered.altered == ["retention.ms 604800000 != 86400000"]
    assert [r.action for r in apply_topics(stack, [shorter])] == ["ok"]
    wider = TopicSpec(name, "k", (), partitions=3, retention_ms=DAY_MS)
    [report] = apply_topics(stack, [wider], alter=True)
    assert (report.action, report.drift, report.altered) == ("drift", ["partitions 2 != 3"], [])


def test_lifting_the_personal_data_cap_removes_the_daily_segment_roll(stack: Settings) -> None:
    name = f"uncap.{uuid.uuid4().hex[:8]}"
    plain = TopicSpec(name, "k", (), partitions=1)
    capped_spec = capped(plain, 30 * DAY_MS)
    assert [r.action for r in apply_topics(stack, [capped_spec])] == ["created"]
    [report] = apply_topics(stack, [plain])
    assert (report.action, report.drift) == (
        "drift",
        ["segment.ms 86400000 != (default)"],
    )
    [altered] = apply_topics(stack, [plain], alter=True)
    assert (altered.action, altered.drift) == ("altered", [])
    assert [r.action for r in apply_topics(stack, [plain])] == ["ok"]
    assert [r.action for r in apply_topics(stack, [capped_spec])] == ["drift"]
