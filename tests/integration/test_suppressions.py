"""The suppressions projection on real PostgreSQL: two registers per address, and the address lock."""

import threading
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from processors.suppression import OPERATOR
from projections.suppressions import Suppressions
from tests.integration.test_projections import project, rows
from tidings.client import Client
from tidings.config import Settings
from tidings.events import ProviderFeedback

T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)


def feedback(
    kind: str, address: str, at: datetime, provider: str = "sendgrid", recipient: str | None = "u"
) -> ProviderFeedback:
    return ProviderFeedback(
        tenant_id="acme",
        recipient_id=recipient,
        kind=kind,  # type: ignore[arg-type]
        channel="email",
        address=address,
        occurred_at=at,
        provider=provider,
    )


def test_an_operators_lift_uncovers_the_owners_refusal_and_since_keeps_to_its_run(database: Settings) -> None:
    """One reason per row: a hard bounce over an unsubscribe, lifted by an operator, left the address
    open; and a suppression retried after its lift moved `since` back before the lift. The refusal
    uncovered is credited to whoever reported it, not to the operator who lifted the bounce."""
    s = database
    with psycopg.connect(s.postgres_dsn) as conn:
        conn.execute(
            "INSERT INTO suppressions (tenant_id, channel, address, active, reason, source, since,"
            " last_event_at) VALUES ('acme', 'email', 'old@x.io', true, 'complaint', 'ses', %s, %s)",
            (T0, T0),
        )
    events = [
        feedback("unsubscribe", "both@x.io", T0),
        feedback("hard_bounce", "both@x.io", T0 + HOUR),
        feedback("resubscribe", "both@x.io", T0 + 2 * HOUR, OPERATOR),
        feedback("hard_bounce", "run@x.io", T0),
        feedback("resubscribe", "run@x.io", T0 + HOUR),
        feedback("hard_bounce", "run@x.io", T0 + 3 * HOUR),
        feedback("hard_bounce", "run@x.io", T0),
        feedback("hard_bounce", "old@x.io", T0 + HOUR),
        feedback("resubscribe", "old@x.io", T0 + 2 * HOUR, OPERATOR),
    ]
    with Client(s) as client:
        for e in events:
            client.publish(e, wait=False)
    project(s, "suppressions")
    table = rows(s, "SELECT address, active, reason, since, source FROM suppressions ORDER BY address")
    assert table == [
        ("both@x.io", True, "unsubscribe", T0, "sendgrid"),
        ("old@x.io", True, "complaint", T0, "ses"),
        ("run@x.io", True, "hard_bounce", T0 + 3 * HOUR, "sendgrid"),
    ]


def test_two_processes_count_each_others_soft_bounces(database: Settings) -> None:
    """Under READ COMMITTED each transaction saw two bounces, the other's third not yet committed, and
    neither suppressed; the address lock makes the second wait for the first and count all three."""
    s = database
    done = threading.Event()

    def second() -> None:
        with psycopg.connect(s.postgres_dsn) as conn, conn.cursor() as cur:
            Suppressions().apply(cur, [feedback("soft_bounce", "soft@x.io", T0 + 2 * HOUR)])
        done.set()

    with psycopg.connect(s.postgres_dsn) as conn:
        with conn.cursor() as cur:
            Suppressions().apply(cur, [feedback("soft_bounce", "soft@x.io", T0 + h * HOUR) for h in (0, 1)])
        waiting = threading.Thread(target=second)
        waiting.start()
        assert not done.wait(1.0), "the second transaction ran while the first held the address"
    waiting.join(10)
    assert done.is_set()
    assert rows(s, "SELECT active, reason, since FROM suppressions") == [
        (True, "soft_bounce_limit", T0 + 2 * HOUR)
    ]


def test_a_rebuild_that_cannot_reach_kafka_leaves_the_table_as_it_was(database: Settings) -> None:
    """It truncated first: through a Kafka outage the suppressions (and the recipients table inbound STOP
    is matched against) stayed empty."""
    from projections import Projection, Runner

    s = database
    with Client(s) as client:
        client.publish(feedback("hard_bounce", "kept@x.io", T0))
    project(s, "suppressions")
    away = s.model_copy(update={"kafka_bootstrap": "127.0.0.1:9"})
    runner = Runner(away, Projection.registry["suppressions"]())
    try:
        with pytest.raises(Exception, match=r"(?i)kafka|broker|transport"):
            runner.rebuild()
    finally:
        runner.close()
    assert rows(s, "SELECT address FROM suppressions") == [("kept@x.io",)]


def test_an_address_two_recipients_share_is_suppressed_until_both_are_lifted(database: Settings) -> None:
    """The router keeps suppressions per recipient: one row per address, lifted by either recipient's
    lift (or by a lift naming a recipient who held nothing), listed the address open while the router
    still held it back for the other. Feedback naming no recipient, and a row kept before holders, are
    lifted by any recipient's lift, as they were; a refusal kept before holders stays under a
    recipient's bounce lifted since."""
    s = database
    with psycopg.connect(s.postgres_dsn) as conn:
        conn.execute(
            "INSERT INTO suppressions (tenant_id, channel, address, active, reason, source, since,"
            " last_event_at) VALUES ('acme', 'email', 'old@x.io', true, 'hard_bounce', 'ses', %s, %s),"
            " ('acme', 'email', 'kept@x.io', true, 'complaint', 'ses', %s, %s)",
            (T0, T0, T0, T0),
        )
    batches = [
        [
            feedback("hard_bounce", "kept@x.io", T0 + HOUR, recipient="b"),
            feedback("hard_bounce", "two@x.io", T0, recipient="a"),
            feedback("hard_bounce", "two@x.io", T0 + HOUR, recipient="b"),
            feedback("hard_bounce", "anon@x.io", T0, recipient=None),
        ],
        [
            feedback("resubscribe", "two@x.io", T0 + 2 * HOUR, OPERATOR, recipient="a"),
            feedback("resubscribe", "two@x.io", T0 + 2 * HOUR, OPERATOR, recipient="c"),
            feedback("resubscribe", "anon@x.io", T0 + HOUR, OPERATOR, recipient="z"),
            feedback("resubscribe", "old@x.io", T0 + HOUR, OPERATOR, recipient="z"),
            feedback("resubscribe", "kept@x.io", T0 + 2 * HOUR, OPERATOR, recipient="b"),
        ],
    ]
    table = "SELECT address, active, reason, since FROM suppressions ORDER BY address"
    holders = "SELECT recipient_id FROM suppression_holders WHERE address = 'two@x.io' AND active"
    seen = []
    for batch in [*batches, [feedback("resubscribe", "two@x.io", T0 + 3 * HOUR, OPERATOR, recipient="b")]]:
        with psycopg.connect(s.postgres_dsn) as conn, conn.cursor() as cur:
            Suppressions().apply(cur, batch)
        seen.append((rows(s, table), rows(s, holders)))
    assert seen[1] == (
        [
            ("anon@x.io", False, "resubscribe", T0 + HOUR),
            ("kept@x.io", True, "complaint", T0),
            ("old@x.io", False, "resubscribe", T0 + HOUR),
            ("two@x.io", True, "hard_bounce", T0 + HOUR),
        ],
        [("b",)],
    ), "lifted for a, two@x.io is still held for b, since b's bounce"
    assert seen[2][0][3] == ("two@x.io", False, "resubscribe", T0 + 3 * HOUR) and seen[2][1] == []


def test_holders_converge_whatever_the_order_and_a_lift_kept_before_holders_still_wins(
    database: Settings,
) -> None:
    """Found by review: a row lifted before holders was suppressed again by an older bounce for one
    recipient redelivered after the upgrade; a lift reached feedback naming no recipient only if that
    came first; and a row lifted showed the latest lift of the holders its batch read, not of all."""
    s = database
    with psycopg.connect(s.postgres_dsn) as conn:
        conn.execute(
            "INSERT INTO suppressions (tenant_id, channel, address, active, reason, source, since,"
            " last_event_at) VALUES ('acme', 'email', 'was@x.io', false, 'resubscribe', 'api', %s, %s)",
            (T0 + 10 * HOUR, T0 + 10 * HOUR),
        )
    anon_bounce = feedback("hard_bounce", "anon@x.io", T0 + 5 * HOUR, recipient=None)
    anon_lift = feedback("resubscribe", "anon@x.io", T0 + 10 * HOUR, OPERATOR, recipient="r")
    anon2_bounce = anon_bounce.model_copy(update={"address": "anon2@x.io"})
    anon2_lift = anon_lift.model_copy(update={"address": "anon2@x.io"})
    batches = [
        [feedback("hard_bounce", "was@x.io", T0 + 5 * HOUR, recipient="r")],
        [anon_bounce],
        [anon_lift],
        [anon2_lift],
        [anon2_bounce],
        [feedback("hard_bounce", "late@x.io", T0, recipient=who) for who in ("a", "b")],
        [feedback("resubscribe", "late@x.io", T0 + 20 * HOUR, OPERATOR, recipient="a")],
        [feedback("resubscribe", "late@x.io", T0 + 15 * HOUR, OPERATOR, recipient="b")],
    ]
    for batch in batches:
        with psycopg.connect(s.postgres_dsn) as conn, conn.cursor() as cur:
            Suppressions().apply(cur, batch)
    table = rows(s, "SELECT address, active, since FROM suppressions ORDER BY address")
    assert table == [
        ("anon2@x.io", False, T0 + 10 * HOUR),
        ("anon@x.io", False, T0 + 10 * HOUR),
        ("late@x.io", False, T0 + 20 * HOUR),
        ("was@x.io", False, T0 + 10 * HOUR),
    ]


@pytest.mark.parametrize("erased_first", [False, True])
def test_an_erasure_takes_the_recipients_holders_and_the_addresses_only_it_held(
    database: Settings, erased_first: bool
) -> None:
    """Holders named the erased recipient beside its addresses for good (the router had forgotten its
    suppressions). Whichever projection reads first, and after a rebuild, the same rows are left:
    another recipient's hold on a shared address, a lift's effect on feedback naming nobody, and what
    a recipient created again under the id reported after the erasure."""
    from projections.base import Projection, Runner
    from tests.integration.conftest import table_checksums

    s = database
    before = [
        feedback("hard_bounce", "shared@x.io", T0, recipient="ada"),
        feedback("hard_bounce", "shared@x.io", T0 + HOUR, recipient="bob"),
        feedback("complaint", "own@x.io", T0, recipient="ada"),
        feedback("soft_bounce", "own@x.io", T0 + HOUR, recipient="ada"),
        feedback("hard_bounce", "nobody@x.io", T0, recipient=None),
        feedback("resubscribe", "nobody@x.io", T0 + 2 * HOUR, recipient="ada"),
    ]
    again = feedback("hard_bounce", "again@x.io", datetime.now(UTC) + timedelta(days=1), recipient="ada")

    def publish(events: list[ProviderFeedback]) -> None:
        with Client(s) as client:
            for e in events:
                client.publish(e, wait=False)

    if not erased_first:
        publish(before)
        project(s, "suppressions")
    with Client(s) as client:
        client.erase_recipient(tenant="acme", recipient="ada")
    project(s, "recipients")
    publish(([] if not erased_first else before) + [again])
    project(s, "suppressions")

    tables = ["suppressions", "suppression_holders", "soft_bounces"]
    assert rows(s, "SELECT address, recipient_id FROM suppression_holders ORDER BY 1, 2") == [
        ("again@x.io", "ada"),
        ("nobody@x.io", ""),
        ("shared@x.io", "bob"),
    ]
    assert rows(s, "SELECT address, active FROM suppressions ORDER BY 1") == [
        ("again@x.io", True),
        ("nobody@x.io", False),
        ("shared@x.io", True),
    ]
    assert rows(s, "SELECT count(*) FROM soft_bounces") == [(0,)]
    kept = table_checksums(s, tables)
    runner = Runner(s, Projection.registry["suppressions"]())
    try:
        runner.rebuild()
    finally:
        runner.close()
    assert table_checksums(s, tables)["suppression_holders"] == kept["suppression_holders"]
    assert rows(s, "SELECT address, active FROM suppressions ORDER BY 1") == [
        ("again@x.io", True),
        ("nobody@x.io", False),
        ("shared@x.io", True),
    ]
