"""Projections on the real stack: rows and offsets in one PostgreSQL transaction, rebuilds, feedback rules."""

from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from projections import Projection, Runner
from tests.integration.conftest import table_checksums
from tests.integration.test_router import publish_catalog, run_router
from tidings.client import Client
from tidings.config import Settings
from tidings.events import DeviceRegistered, ProviderFeedback

T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def project(s: Settings, name: str, idle: float = 3.0) -> None:
    runner = Runner(s, Projection.registry[name]())
    try:
        runner.run(idle_exit_after=idle)
    finally:
        runner.close()


def rows(s: Settings, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(s.postgres_dsn) as conn:
        return conn.execute(sql.encode(), args).fetchall()  # type: ignore[arg-type]


def test_delivery_status_follows_the_router_and_rebuilds_identically(database: Settings) -> None:
    s = database
    publish_catalog(s)
    with Client(s) as client:
        client.update_recipient(
            tenant="acme", recipient="ada", email="ada@example.com", phone="+4915112345678"
        )
        nid = client.send(
            tenant="acme", recipient="ada", type="order.shipped", data={"order": "A", "carrier": "B"}
        )
        bad = client.send(tenant="acme", recipient="ada", type="order.shipped", data={})
    run_router(s)
    project(s, "delivery_status")
    [(status, type_)] = rows(
        s, "SELECT status, notification_type FROM notifications WHERE notification_id = %s", nid
    )
    assert (status, type_) == ("QUEUED", "order.shipped")
    channels = rows(
        s, "SELECT channel, status, reason FROM deliveries WHERE notification_id = %s ORDER BY 1", nid
    )
    assert channels == [("email", "QUEUED", None), ("in_app", "QUEUED", None)]
    assert rows(s, "SELECT status FROM notifications WHERE notification_id = %s", bad) == [("REJECTED",)]
    assert rows(s, "SELECT count(*) FROM delivery_events WHERE notification_id = %s", nid) == [(3,)]
    tables = ["notifications", "deliveries", "delivery_events"]
    before = table_checksums(s, tables)
    runner = Runner(s, Projection.registry["delivery_status"]())
    runner.rebuild()
    runner.close()
    assert table_checksums(s, tables) == before


def feedback(
    kind: str, address: str = "a@x.io", channel: str = "email", at: datetime = T0, **kw: Any
) -> ProviderFeedback:
    return ProviderFeedback(
        tenant_id="acme",
        recipient_id="u",
        kind=kind,
        channel=channel,
        address=address,
        occurred_at=at,
        provider="test",
        **kw,
    )


def test_feedback_rules(database: Settings) -> None:
    s = database
    day = timedelta(days=1)
    events = [
        feedback("hard_bounce", "hard@x.io"),
        feedback("soft_bounce", "two@x.io", at=T0),
        feedback("soft_bounce", "two@x.io", at=T0 + day),
        feedback("soft_bounce", "three@x.io", at=T0 + 2 * day),
        feedback("soft_bounce", "three@x.io", at=T0),
        feedback("soft_bounce", "three@x.io", at=T0 + day),
        feedback("soft_bounce", "spread@x.io", at=T0),
        feedback("soft_bounce", "spread@x.io", at=T0 + 5 * day),
        feedback("soft_bounce", "spread@x.io", at=T0 + 10 * day),
        feedback("soft_bounce", "retried@x.io", at=T0),
        feedback("soft_bounce", "retried@x.io", at=T0),
        feedback("soft_bounce", "retried@x.io", at=T0 + day),
        feedback("complaint", "Complains@X.io"),
        feedback("sms_stop", "+4915112345678", "sms", at=T0),
        feedback("sms_start", "+4915112345678", "sms", at=T0 + day),
        feedback("sms_start", "+4915199999999", "sms", at=T0 + day),
        feedback("sms_stop", "+4915199999999", "sms", at=T0),
        feedback("unsubscribe", "cat@x.io", category="marketing"),
    ]
    dup = feedback("hard_bounce", "dup@x.io")
    events += [dup, dup, feedback("hard_bounce", "dup@x.io", at=T0 - day)]
    with Client(s) as client:
        for e in events:
            client.publish(e, wait=False)
    project(s, "suppressions")
    table = {
        a: (active, reason)
        for a, active, reason in rows(s, "SELECT address, active, reason FROM suppressions")
    }
    assert table == {
        "hard@x.io": (True, "hard_bounce"),
        "three@x.io": (True, "soft_bounce_limit"),
        "complains@x.io": (True, "complaint"),
        "+4915112345678": (False, "sms_start"),
        "+4915199999999": (False, "sms_start"),
        "dup@x.io": (True, "hard_bounce"),
    }
    assert rows(s, "SELECT since FROM suppressions WHERE address = 'dup@x.io'") == [(T0 - day,)]


@pytest.mark.parametrize("first", ["feedback", "devices"])
def test_devices_invalidated_unless_registered_later_in_any_order(database: Settings, first: str) -> None:
    """Each group projected before the other is read: the feedback before the registrations, or after."""
    s = database
    later = DeviceRegistered(
        tenant_id="acme",
        recipient_id="u",
        device_id="phone",
        platform="fcm",
        token="tok",
        occurred_at=T0 + timedelta(hours=2),
    )
    early = DeviceRegistered(
        tenant_id="acme", recipient_id="v", device_id="tab", platform="apns", token="old", occurred_at=T0
    )
    invalid = [feedback("token_invalid", t, "push", at=T0 + timedelta(hours=1)) for t in ("old", "tok")]
    groups = [invalid, [later, early]] if first == "feedback" else [[later, early], invalid]
    for group in groups:
        with Client(s) as client:
            for event in group:
                client.publish(event, wait=False)
        project(s, "devices")
    assert rows(s, "SELECT device_id, active FROM devices ORDER BY 1") == [("phone", True), ("tab", False)]


def test_cli_migrate_status_and_rebuild(database: Settings) -> None:
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    s = database
    tidings = str(Path(sys.executable).with_name("tidings"))
    env = os.environ | {
        "TIDINGS_TOPIC_PREFIX": s.topic_prefix,
        "TIDINGS_POSTGRES_DSN": s.postgres_dsn,
        "TIDINGS_PARTITIONS": str(s.partitions),
    }

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([tidings, *args], env=env, capture_output=True, text=True, timeout=120)

    assert "nothing, up to date" in cli("db", "migrate").stderr
    publish_catalog(s)
    with Client(s) as client:
        client.update_recipient(tenant="acme", recipient="ada", email="ada@example.com")
        nid = client.send(tenant="acme", recipient="ada", type="password.reset", data={"link": "x"})
    run_router(s)
    assert cli("run", "projection", "delivery_status", "--idle-exit", "3").returncode == 0
    status = cli("status", str(nid), "--json")
    assert status.returncode == 0, status.stderr
    body = json.loads(status.stdout)
    assert (
        body["notification"]["status"] == "QUEUED"
        and body["notification"]["notification_type"] == "password.reset"
    )
    assert [(d["channel"], d["status"]) for d in body["deliveries"]] == [("email", "QUEUED")]
    rebuilt = cli("projections", "rebuild", "delivery_status")
    assert rebuilt.returncode == 0 and "rebuilt delivery_status" in rebuilt.stderr, rebuilt.stderr
    assert json.loads(cli("status", str(nid), "--json").stdout) == body
    assert cli("status", "00000000-0000-0000-0000-000000000000").returncode == 1


def test_text_with_nul_characters_is_stored_not_a_crash(database: Settings) -> None:
    """PostgreSQL text cannot hold NUL; Avro strings can. The projection stores U+FFFD instead of
    crash-looping on the record."""
    import uuid

    from tidings.events import DeliveryOutcome
    from tidings.kafka import EventProducer, Output
    from tidings.topics import names

    s = database
    nid, did = uuid.uuid4(), uuid.uuid4()
    outcome = DeliveryOutcome(
        tenant_id="acme",
        notification_id=nid,
        delivery_id=did,
        recipient_id="ada",
        channel="email",
        status="FAILED",
        reason="smtp 550\x00",
        detail="mailbox\x00unknown",
    )
    feedback = ProviderFeedback(
        tenant_id="acme", kind="hard_bounce", channel="email", address="a\x00@example.com", detail="x\x00"
    )
    with EventProducer(s) as producer:
        producer.produce(Output.event(names(s).outcomes, outcome))
        producer.produce(Output.event(names(s).feedback, feedback))
    project(s, "delivery_status")
    project(s, "suppressions")
    assert rows(s, "SELECT reason FROM deliveries WHERE delivery_id = %s", did) == [("smtp 550\ufffd",)]
    assert rows(s, "SELECT address FROM suppressions") == [("a\ufffd@example.com",)]


def test_a_record_postgresql_refuses_goes_to_the_dlq_and_the_rest_is_stored(database: Settings) -> None:
    """A token too long for its index fails the batch on every retry; the batch is written again one
    record at a time, the refused record is dead-lettered with PostgreSQL's error and the others stay."""
    import random

    from tests.integration.conftest import read_all
    from tidings.events import RecipientUpdated
    from tidings.kafka.records import header_map
    from tidings.topics import names

    s = database
    rng = random.Random(7)
    huge = "".join(chr(rng.randrange(0x4E00, 0x9FFF)) for _ in range(1_000))

    def device(recipient: str, token: str) -> DeviceRegistered:
        return DeviceRegistered(
            tenant_id="acme", recipient_id=recipient, device_id="d", platform="fcm", token=token
        )

    with Client(s) as client:
        for event in (device("a", "tok-a"), device("b", huge), device("c", "tok-c")):
            client.publish(event, wait=False)
        client.publish(
            RecipientUpdated(
                tenant_id="acme", recipient_id="n", name="a\x00b", properties_json='{"k\\u0000": "v\\u0000"}'
            ),
            wait=False,
        )
    project(s, "devices")
    project(s, "recipients")
    assert rows(s, "SELECT recipient_id, token FROM devices ORDER BY 1") == [("a", "tok-a"), ("c", "tok-c")]
    letters = [header_map(r.headers) for r in read_all(s, names(s).dlq)]
    assert [(x["tidings.error.type"], x["tidings.source.topic"]) for x in letters] == [
        ("ProgramLimitExceeded", names(s).recipients)
    ]
    ends = rows(s, "SELECT sum(next_offset) FROM projection_offsets WHERE projection = 'devices'")
    assert ends == [(4,)]
    assert rows(s, "SELECT name, state->'properties' FROM recipients WHERE recipient_id = 'n'") == [
        ("a\ufffdb", {"k\ufffd": "v\ufffd"})
    ]


def test_a_lone_surrogate_in_properties_is_dead_lettered_and_the_rest_is_stored(database: Settings) -> None:
    """`{"nick": "\\ud800"}` is JSON's syntax, and the API and SDK let it through; folded into the
    recipient's state it failed pydantic's serializer, not PostgreSQL, and the projection stopped on it
    at every restart."""
    from tests.integration.conftest import read_all
    from tidings.events import RecipientUpdated
    from tidings.kafka import EventProducer, Output
    from tidings.kafka.records import header_map
    from tidings.topics import names

    s = database
    fields = RecipientUpdated(tenant_id="acme", recipient_id="ada").model_dump()
    poison = RecipientUpdated.model_construct(**fields | {"properties_json": '{"nick": "\\ud800"}'})
    later = RecipientUpdated(
        tenant_id="acme", recipient_id="ada", name="Ada", properties_json='{"n": "\\ud83d\\ude00"}'
    )
    with EventProducer(s) as producer:
        producer.produce(Output.event(names(s).recipients, poison))
        producer.produce(Output.event(names(s).recipients, later))
    project(s, "recipients")
    assert rows(s, "SELECT name, state->'properties' FROM recipients") == [("Ada", {"n": "\U0001f600"})]
    letters = [header_map(r.headers) for r in read_all(s, names(s).dlq)]
    assert [(x["tidings.error.type"], x["tidings.source.topic"]) for x in letters] == [
        ("InvalidEvent", names(s).recipients)
    ]


def test_a_writer_behind_the_stored_offsets_writes_nothing(database: Settings) -> None:
    """A consumer the group replaced can still hold a batch the new owner has written past; its write
    would move the offsets back and older rows over newer ones."""
    import pytest

    from projections.base import StaleOffsets
    from tests.integration.conftest import read_all
    from tidings.events import RecipientUpdated
    from tidings.topics import names

    s = database
    with Client(s) as client:
        for i in range(6):
            client.publish(RecipientUpdated(tenant_id="acme", recipient_id="z", name=f"v{i}"), wait=False)
    records = list(read_all(s, names(s).recipients))
    runner = Runner(s, Projection.registry["recipients"]())
    try:
        runner.store(records)
        with pytest.raises(StaleOffsets, match="stored at 6, past 2"):
            runner.store(records[2:4])
    finally:
        runner.close()
    assert rows(s, "SELECT name FROM recipients WHERE recipient_id = 'z'") == [("v5",)]
    assert rows(s, "SELECT next_offset FROM projection_offsets WHERE projection = 'recipients'") == [(6,)]


def test_a_notification_reads_where_its_deliveries_are_now(database: Settings) -> None:
    """A delivery QUEUED and then FAILED (a bounce, retries used up, an undelivered SMS) left its
    notification QUEUED, RETRYING or SENT for good: the summary ranked every outcome ever received."""
    import uuid

    from tidings.events import DeliveryOutcome
    from tidings.kafka import EventProducer, Output
    from tidings.topics import names

    s = database
    plans: dict[str, list[list[tuple[str, str | None]]]] = {
        "failed": [[("email", "QUEUED")], [("email", "RETRYING")], [("email", "FAILED")]],
        "sms failed, email sent": [
            [("email", "QUEUED"), ("sms", "QUEUED"), ("sms", "SENT")],
            [("email", "SENT"), ("sms", "FAILED")],
        ],
        "expired and cancelled": [
            [("push", "QUEUED"), ("email", "DEFERRED")],
            [("push", "EXPIRED"), ("email", "CANCELLED")],
        ],
        "duplicate, then delivered": [[(None, "SKIPPED"), ("email", "QUEUED")], [("email", "DELIVERED")]],
    }
    ids = {name: uuid.uuid4() for name in plans}
    for step in range(3):
        with EventProducer(s) as producer:
            for name, steps in plans.items():
                for channel, status in steps[step] if step < len(steps) else []:
                    outcome = DeliveryOutcome(
                        tenant_id="acme",
                        notification_id=ids[name],
                        delivery_id=uuid.uuid5(ids[name], channel) if channel else None,
                        recipient_id="ada",
                        channel=channel,
                        status=status,  # type: ignore[arg-type]
                    )
                    producer.produce(Output.event(names(s).outcomes, outcome))
        project(s, "delivery_status")
    found = dict(rows(s, "SELECT notification_id, status FROM notifications"))
    assert {name: found[nid] for name, nid in ids.items()} == {
        "failed": "FAILED",
        "sms failed, email sent": "SENT",
        "expired and cancelled": "EXPIRED",
        "duplicate, then delivered": "DELIVERED",
    }


def test_the_recipients_projection_skips_what_the_router_refuses_for_size(database: Settings) -> None:
    """API reads and routing agree: a third 200 KB property puts the state over the router's 512 KB."""
    import json

    from tidings.events import RecipientUpdated
    from tidings.kafka import EventProducer, Output
    from tidings.topics import names

    s = database
    with EventProducer(s) as producer:
        for key in "abc":
            big = json.dumps({key: "x" * 200_000})
            event = RecipientUpdated(tenant_id="acme", recipient_id="ada", properties_json=big)
            producer.produce(Output.event(names(s).recipients, event))
        small = RecipientUpdated(tenant_id="acme", recipient_id="ada", email="ada@example.com")
        producer.produce(Output.event(names(s).recipients, small))
    project(s, "recipients")
    [(email, state)] = rows(s, "SELECT email, state FROM recipients")
    assert (email, sorted(state["properties"])) == ("ada@example.com", ["a", "b"])


def test_one_tenants_events_about_another_tenants_ids_touch_only_their_own_rows(database: Settings) -> None:
    """Ids come from callers: globex cancels acme's notification id, or reports a bounce of acme's
    delivery id, before acme's own records are projected, even with the event id acme's will have."""
    import uuid

    from tidings.events import DeliveryOutcome, NotificationRequested
    from tidings.kafka import EventProducer, Output
    from tidings.topics import names

    s = database
    nid, did, eid = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    forged = [
        DeliveryOutcome(tenant_id="globex", notification_id=nid, recipient_id="eve", status="CANCELLED"),
        DeliveryOutcome(
            event_id=eid,
            tenant_id="globex",
            notification_id=nid,
            delivery_id=did,
            channel="email",
            status="FAILED",
        ),
    ]
    request = NotificationRequested(
        tenant_id="acme", notification_id=nid, recipient_id="ada", notification_type="order.shipped"
    )
    sent = DeliveryOutcome(
        event_id=eid,
        tenant_id="acme",
        notification_id=nid,
        delivery_id=did,
        recipient_id="ada",
        channel="email",
        status="SENT",
    )
    n = names(s)
    with EventProducer(s) as producer:
        for event in forged:
            producer.produce(Output.event(n.outcomes, event))
    project(s, "delivery_status")
    with EventProducer(s) as producer:
        producer.produce(Output.event(n.requested, request))
        producer.produce(Output.event(n.outcomes, sent))
    project(s, "delivery_status")
    assert rows(
        s, "SELECT tenant_id, recipient_id, notification_type, status FROM notifications ORDER BY 1"
    ) == [
        ("acme", "ada", "order.shipped", "SENT"),
        ("globex", "eve", None, "FAILED"),
    ]
    assert rows(s, "SELECT tenant_id, status FROM deliveries ORDER BY 1") == [
        ("acme", "SENT"),
        ("globex", "FAILED"),
    ]
    assert rows(s, "SELECT tenant_id, status FROM delivery_events ORDER BY 1, 2") == [
        ("acme", "SENT"),
        ("globex", "CANCELLED"),
        ("globex", "FAILED"),
    ]


def test_an_error_of_the_setup_stops_the_projection_and_dead_letters_nothing(database: Settings) -> None:
    """A table missing (a release started before `tidings db migrate`) is no record's fault: every
    record would go to the DLQ, and a replay of requests older than the dedupe window sends again."""
    import pytest

    from tests.integration.conftest import read_all
    from tidings.topics import names

    s = database
    with Client(s) as client:
        for i in range(3):
            client.publish(
                DeviceRegistered(
                    tenant_id="acme", recipient_id=f"r{i}", device_id="d", platform="fcm", token="t"
                )
            )
    with psycopg.connect(s.postgres_dsn) as conn:
        conn.execute("DROP TABLE token_invalidations")
    runner = Runner(s, Projection.registry["devices"]())
    try:
        with pytest.raises(psycopg.errors.UndefinedTable):
            runner.store(list(read_all(s, names(s).recipients)))
    finally:
        runner.close()
    assert list(read_all(s, names(s).dlq)) == []
    assert rows(s, "SELECT count(*) FROM projection_offsets") == [(0,)]


def test_offsets_stored_past_a_partitions_end_stop_the_projection_with_the_reason(database: Settings) -> None:
    """A topic created again: the consumer would start over and every batch would be older than the
    stored offsets, refused for ever by the fence."""
    import pytest

    from tidings.errors import OffsetsPastEnd
    from tidings.topics import names

    s = database
    with Client(s) as client:
        client.publish(
            DeviceRegistered(tenant_id="acme", recipient_id="r", device_id="d", platform="fcm", token="t")
        )
    with psycopg.connect(s.postgres_dsn) as conn:
        for p in range(s.partitions):
            conn.execute(
                "INSERT INTO projection_offsets VALUES ('devices', %s, %s, 1000)", (names(s).recipients, p)
            )
    with pytest.raises(OffsetsPastEnd, match=r"ends at \d+ but offsets are stored up to 1000"):
        project(s, "devices")


def test_a_topic_created_again_stops_the_projection_until_it_is_rebuilt(database: Settings) -> None:
    """Offsets count the old topic's records: the new topic's first records would be skipped."""
    import time

    import pytest

    from tidings.errors import TopicRecreated
    from tidings.kafka import apply_topics
    from tidings.kafka.admin import admin
    from tidings.topics import names, registry

    s = database

    def register(recipients: range) -> None:
        with Client(s) as client:
            for i in recipients:
                client.publish(
                    DeviceRegistered(
                        tenant_id="acme", recipient_id=f"r{i}", device_id="d", platform="fcm", token=f"t{i}"
                    )
                )

    register(range(3))
    project(s, "devices")
    topic = names(s).recipients
    client = admin(s)
    [future] = client.delete_topics([topic], operation_timeout=30).values()
    future.result()
    deadline = time.monotonic() + 60
    while [r.action for r in apply_topics(s, [t for t in registry(s) if t.name == topic])] != ["created"]:
        assert time.monotonic() < deadline, "the topic was not created again"
        time.sleep(0.5)
    register(range(10, 40))
    with pytest.raises(TopicRecreated, match=f"{topic} was deleted and created again"):
        project(s, "devices")
    runner = Runner(s, Projection.registry["devices"]())
    try:
        runner.rebuild()
    finally:
        runner.close()
    project(s, "devices")
    assert rows(s, "SELECT count(*) FROM devices") == [(30,)]
