import pytest

from tidings.config import Settings
from tidings.topics import (
    CATALOG,
    DLQ,
    OUTCOMES,
    REQUESTED,
    TopicSpec,
    changelog,
    changelog_spec,
    parse_tiers,
    registry,
    retry,
    tier_seconds,
)


def test_registry_holds_every_design_topic() -> None:
    names = {s.name for s in registry(Settings())}
    for expected in [
        REQUESTED,
        "notifications.recipients",
        CATALOG,
        "notifications.engagement",
        "notifications.feedback",
        "notifications.scheduled",
        OUTCOMES,
        DLQ,
        "notifications.delivery.email",
        "notifications.delivery.push.urgent",
        "notifications.delivery.sms.retry.10s",
        "notifications.delivery.webhook.retry.6h",
        "notifications.delivery.in_app",
    ]:
        assert expected in names
    assert len(names) == len(registry(Settings()))


def test_per_recipient_topics_share_the_partition_count() -> None:
    s = Settings(partitions=12)
    counts = {spec.partition_count(s) for spec in registry(s) if spec.per_recipient}
    assert counts == {12}
    assert changelog_spec("router", "dedupe").partition_count(s) == 12


def test_policies() -> None:
    specs = {s.name: s for s in registry(Settings())}
    assert specs[CATALOG].config() == {"cleanup.policy": "compact"}
    assert specs[REQUESTED].config()["retention.ms"] == "-1"
    assert specs[OUTCOMES].key == "notification_id"
    assert changelog("router", "recipients") == "tidings.router.recipients.changelog"
    assert changelog_spec("router", "dedupe").config()["cleanup.policy"] == "compact"


def test_retry_tiers() -> None:
    assert tier_seconds("10s") == 10 and tier_seconds("6h") == 21600 and tier_seconds("2d") == 172800
    assert parse_tiers("10s, 1m,1h") == ["10s", "1m", "1h"]
    assert retry("email", "1m") == "notifications.delivery.email.retry.1m"
    with pytest.raises(ValueError):
        parse_tiers("1m,10s")
    with pytest.raises(ValueError):
        tier_seconds("ten seconds")
    names = {s.name for s in registry(Settings(retry_tiers="30s,5m"))}
    assert (
        "notifications.delivery.sms.retry.30s" in names
        and "notifications.delivery.sms.retry.10s" not in names
    )


def n_changelogs(specs: list[TopicSpec]) -> list[str]:
    return sorted(
        spec.name
        for spec in specs
        if spec.config()["cleanup.policy"] == "compact" and "changelog" in spec.name
    )


def test_prefix_namespaces_every_topic() -> None:
    from tidings.topics import names

    s = Settings(topic_prefix="staging.")
    assert all(spec.name.startswith(("staging.notifications.", "staging.tidings.")) for spec in registry(s))
    assert n_changelogs(registry(s)) == [
        "staging.tidings.audience.broadcasts.changelog",
        "staging.tidings.audience.jobs.changelog",
        "staging.tidings.audience.members.changelog",
        "staging.tidings.router.digest_due.changelog",
        "staging.tidings.router.digests.changelog",
        "staging.tidings.router.recipients.changelog",
        "staging.tidings.router.seen.changelog",
        "staging.tidings.router.throttles.changelog",
        "staging.tidings.scheduler.engaged.changelog",
        "staging.tidings.scheduler.erased.changelog",
        "staging.tidings.scheduler.timers.changelog",
    ]
    n = names(s)
    assert n.requested == "staging.notifications.requested"
    assert n.delivery("sms", urgent=True) == "staging.notifications.delivery.sms.urgent"
    assert n.changelog("router", "seen") == "staging.tidings.router.seen.changelog"


def test_personal_data_days_caps_every_deleting_topic_and_nothing_else() -> None:
    plain = {s.name: s for s in registry(Settings())}
    capped = {s.name: s for s in registry(Settings(personal_data_days=30))}
    month = 30 * 86_400_000
    assert plain[REQUESTED].retention_ms < 0 and capped[REQUESTED].retention_ms == month
    assert capped["notifications.recipients"].retention_ms == month
    assert capped[DLQ].retention_ms == month
    assert capped["notifications.broadcasts"] == plain["notifications.broadcasts"], "membership rebuilds"
    for name, spec in capped.items():
        before = plain[name]
        if spec.cleanup_policy == "compact" or name == "notifications.broadcasts":
            assert spec == before, name
            continue
        assert spec.config()["segment.ms"] == str(86_400_000), name
        if 0 <= before.retention_ms <= month:
            assert spec.retention_ms == before.retention_ms, name
        else:
            assert spec.retention_ms == month, name


def test_personal_data_days_refuses_to_cut_a_retry_tier_short() -> None:
    with pytest.raises(ValueError, match="retry tier"):
        Settings(personal_data_days=7, retry_tiers="10s,1h,3d")
    assert registry(Settings(personal_data_days=7, retry_tiers="10s,1h,2d"))


def test_changelogs_are_compacted_within_a_day_so_an_erased_value_leaves_the_log() -> None:
    spec = changelog_spec("router", "recipients")
    assert spec.config()["max.compaction.lag.ms"] == str(86_400_000)
