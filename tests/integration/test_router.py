"""The router on the real broker: catalog, recipients, requests in; commands, outcomes, dead letters out."""

import json
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from processors.router import Router
from tests.integration.conftest import read_all
from tidings.catalog import load
from tidings.client import Client
from tidings.codec import default_codec
from tidings.config import Settings
from tidings.events import DeliveryCommand, DeliveryOutcome, Event, NotificationRequested, RecipientErased
from tidings.ids import new_notification_id
from tidings.kafka import EventProducer, Output
from tidings.kafka.records import header_map
from tidings.topics import names

ROOT = Path(__file__).resolve().parents[2]
CHANNELS = ("email", "sms", "push", "in_app", "webhook")


def publish_catalog(s: Settings) -> None:
    with Client(s) as client:
        for t in load(ROOT / "catalog"):
            client.publish(t, wait=False)


def run_router(s: Settings, idle: float = 4.0) -> Router:
    router = Router(s, instance="0", group_id=f"router-{s.topic_prefix}")
    thread = threading.Thread(target=router.run, kwargs={"idle_exit_after": idle})
    thread.start()
    thread.join(timeout=180)
    assert not thread.is_alive()
    return router


def decoded(s: Settings, topic: str) -> list[Event]:
    return [default_codec().decode(r.value or b"") for r in read_all(s, topic)]


def commands(s: Settings) -> list[DeliveryCommand]:
    n = names(s)
    found: list[Any] = []
    for channel in CHANNELS:
        found += decoded(s, n.delivery(channel)) + decoded(s, n.delivery(channel, urgent=True))
    return [c for c in found if isinstance(c, DeliveryCommand)]


def test_requests_become_commands_on_the_right_lanes_with_outcomes(topology: Settings) -> None:
    s = topology
    publish_catalog(s)
    with Client(s) as client:
        client.update_recipient(
            tenant="acme",
            recipient="ada",
            email="ada@example.com",
            phone="+4915112345678",
            locale="de-AT",
            name="Ada",
        )
        client.register_device(
            tenant="acme", recipient="ada", device_id="phone", platform="fcm", token="tok-1"
        )
        client.update_recipient(tenant="acme", recipient="bob", email="bob@example.com")
        client.update_preferences(
            tenant="acme",
            recipient="bob",
            rules=[{"scope": "category", "key": "orders", "channel": "email", "enabled": False}],
        )
        shipped = client.send(
            tenant="acme", recipient="ada", type="order.shipped", data={"order": "A-1", "carrier": "DHL"}
        )
        reset = client.send(
            tenant="acme", recipient="ada", type="password.reset", data={"link": "https://x/r"}
        )
        bob = client.send(
            tenant="acme", recipient="bob", type="order.shipped", data={"order": "B-1", "carrier": "UPS"}
        )
        client.send(
            tenant="acme",
            recipient="ada",
            type="order.shipped",
            notification_id=shipped,
            data={"order": "A-1", "carrier": "DHL"},
        )
    run_router(s)

    found = commands(s)
    by_nid = Counter((c.notification_id, c.channel) for c in found)
    assert by_nid == Counter(
        {
            (shipped, "email"): 1,
            (shipped, "push"): 1,
            (shipped, "in_app"): 1,
            (reset, "email"): 1,
            (reset, "sms"): 1,
            (bob, "in_app"): 1,
        }
    )
    email = next(c for c in found if c.notification_id == shipped and c.channel == "email")
    assert email.content.subject == "Ihre Bestellung A-1 ist unterwegs" and email.locale == "de"
    urgent = decoded(s, names(s).delivery("sms", urgent=True))
    assert [c.notification_id for c in urgent] == [reset]  # type: ignore[attr-defined]

    outcomes = [o for o in decoded(s, names(s).outcomes) if isinstance(o, DeliveryOutcome)]
    bob_outcomes = {(o.channel, o.status, o.reason) for o in outcomes if o.notification_id == bob}
    assert bob_outcomes == {
        ("in_app", "QUEUED", None),
        ("email", "SKIPPED", "opted_out"),
        ("push", "SKIPPED", "no_address"),
    }
    assert [o.reason for o in outcomes if o.notification_id == shipped and o.status == "SKIPPED"] == [
        "duplicate"
    ]


def test_poison_requests_are_dead_lettered_and_rejected_while_valid_ones_flow(topology: Settings) -> None:
    s = topology
    n = names(s)
    publish_catalog(s)
    codec = default_codec()

    def request(**changes: Any) -> dict[str, Any]:
        nid = new_notification_id()
        base = {
            "event_id": new_notification_id(),
            "tenant_id": "acme",
            "occurred_at": int(time.time() * 1000),
            "correlation_id": str(nid),
            "notification_id": nid,
            "recipient_id": "u1",
            "notification_type": "order.shipped",
            "data_json": '{"order": "X", "carrier": "Y"}',
            "priority": None,
            "channels": ["in_app"],
            "scheduled_at": None,
            "expires_at": None,
            "locale": None,
            "recipient_overrides": None,
            "actor_id": None,
            "broadcast_id": None,
            "source": None,
        }
        return base | changes

    valid = [request() for _ in range(6)]
    poison = {
        "garbage": b"\x00\x01 definitely not avro",
        "wrong schema": codec.encode_record(
            "DeliveryOutcome",
            {
                "event_id": new_notification_id(),
                "tenant_id": "acme",
                "occurred_at": 0,
                "correlation_id": None,
                "notification_id": (wrong_nid := new_notification_id()),
                "delivery_id": None,
                "recipient_id": "u1",
                "channel": None,
                "status": "QUEUED",
                "reason": None,
                "provider": None,
                "provider_message_id": None,
                "attempt": 0,
                "template_version": None,
                "detail": None,
            },
        ),
        "missing fields": codec.encode_record("NotificationRequested", missing := request(recipient_id="")),
        "1 MB payload": codec.encode_record(
            "NotificationRequested", big := request(data_json=json.dumps({"blob": "x" * 1_000_000}))
        ),
        "unknown type": codec.encode_record(
            "NotificationRequested", unknown := request(notification_type="nope")
        ),
        "tenant no outcome can carry": codec.encode_record(
            "NotificationRequested", untenanted := request(tenant_id="acme\n")
        ),
    }
    badly_addressed = request(recipient_id="u1\n")
    poison["recipient no outcome can carry"] = codec.encode_record("NotificationRequested", badly_addressed)
    valid.append(request())
    outputs = []
    for i, v in enumerate(valid):
        outputs.append(Output(n.requested, b"acme/u1", codec.encode_record("NotificationRequested", v)))
        if i < len(poison):
            outputs.append(Output(n.requested, b"acme/u1", list(poison.values())[i]))
    with EventProducer(s) as producer:
        for out in outputs:
            producer.produce(out)
    router = run_router(s)

    assert {c.notification_id for c in commands(s)} == {v["notification_id"] for v in valid}
    letters = [r for r in read_all(s, n.dlq)]
    assert sorted(r.value or b"" for r in letters) == sorted(poison.values())
    reasons = {header_map(r.headers)["tidings.error.type"] for r in letters}
    assert reasons == {"BadMagic", "InvalidEvent"}
    rejected = {
        o.notification_id
        for o in decoded(s, n.outcomes)
        if isinstance(o, DeliveryOutcome) and o.status == "REJECTED"
    }
    assert rejected == {
        wrong_nid,
        missing["notification_id"],
        big["notification_id"],
        unknown["notification_id"],
        untenanted["notification_id"],
        badly_addressed["notification_id"],
    }
    tenants = {
        o.notification_id: o.tenant_id for o in decoded(s, n.outcomes) if isinstance(o, DeliveryOutcome)
    }
    assert (tenants[untenanted["notification_id"]], tenants[badly_addressed["notification_id"]]) == (
        "-",
        "acme",
    )
    assert router.loop.dead_letters == len(poison)


def test_a_throttled_type_passes_its_limit_per_recipient_and_keeps_counting_across_restarts(
    topology: Settings,
) -> None:
    s = topology
    publish_catalog(s)
    link = {"link": "https://x/r"}
    with Client(s) as client:
        for r in ("ada", "bob"):
            client.update_recipient(tenant="acme", recipient=r, email=f"{r}@example.com")
        adas = [
            client.send(tenant="acme", recipient="ada", type="password.reset", data=link) for _ in range(5)
        ]
        bobs = client.send(tenant="acme", recipient="bob", type="password.reset", data=link)
    run_router(s)
    with Client(s) as client:
        later = client.send(tenant="acme", recipient="ada", type="password.reset", data=link)
        client.cancel(tenant="acme", recipient="ada", notification_id=adas[4])
    run_router(s)

    sent = {c.notification_id for c in commands(s)}
    assert sent == {*adas[:3], bobs}
    outcomes = [o for o in decoded(s, names(s).outcomes) if isinstance(o, DeliveryOutcome)]
    throttled = {o.notification_id: o for o in outcomes if o.reason == "throttled"}
    assert set(throttled) == {*adas[3:], later}
    assert {(o.status, o.channel, o.detail) for o in throttled.values()} == {
        ("SKIPPED", None, "at most 3 per 900 s of password.reset")
    }
    assert [o.status for o in outcomes if o.notification_id == adas[4]] == ["SKIPPED"], "cancel is a no-op"
    assert decoded(s, names(s).scheduled) == []


def test_a_scheduled_request_counts_against_its_throttle_when_it_is_due(topology: Settings) -> None:
    """password.reset allows 3 per 15 minutes: three scheduled a day ahead left no room for one now,
    and took room from a fourth due at the same time only if counted when made."""
    from datetime import UTC, datetime, timedelta

    s = topology
    publish_catalog(s)
    link = {"link": "https://x/r"}
    tomorrow = datetime.now(UTC) + timedelta(days=1)
    with Client(s) as client:
        client.update_recipient(tenant="acme", recipient="ada", email="ada@example.com")
        ahead = [
            client.send(
                tenant="acme", recipient="ada", type="password.reset", data=link, scheduled_at=tomorrow
            )
            for _ in range(4)
        ]
        now = [
            client.send(tenant="acme", recipient="ada", type="password.reset", data=link) for _ in range(2)
        ]
    run_router(s)
    outcomes = [o for o in decoded(s, names(s).outcomes) if isinstance(o, DeliveryOutcome)]
    assert {o.notification_id for o in outcomes if o.reason == "throttled"} == {ahead[3]}
    assert {c.notification_id for c in commands(s)} == set(now)
    assert {e.notification_id for e in decoded(s, names(s).scheduled)} == set(ahead[:3])


def test_an_event_that_would_outgrow_the_recipients_state_record_is_dead_lettered(topology: Settings) -> None:
    """Properties merge: nine updates of 200 KB each made a 1.8 MB changelog record, which failed every
    transaction that carried it. The updates that would pass 512 KiB (in UTF-8: 40,000 CJK characters
    are 120 KB, five of them 600 KB) go to the DLQ; the rest flows."""
    s = topology
    publish_catalog(s)
    with Client(s) as client:
        client.update_recipient(tenant="acme", recipient="big", email="big@example.com", wait=False)
        for i in range(6):
            client.update_recipient(
                tenant="acme", recipient="big", properties={f"k{i}": "中" * 40_000}, wait=False
            )
        nid = client.send(
            tenant="acme", recipient="big", type="order.shipped", data={"order": "A-1", "carrier": "DHL"}
        )
    router = run_router(s)
    assert router.loop.dead_letters == 2
    letters = [header_map(r.headers) for r in read_all(s, names(s).dlq)]
    assert [x["tidings.error.type"] for x in letters] == ["InvalidEvent"] * 2
    assert all("over 524288" in x["tidings.error.message"] for x in letters)
    assert {c.channel for c in commands(s) if c.notification_id == nid} >= {"email"}


def test_records_whose_header_key_is_not_utf8_are_applied_without_their_headers(
    topology: Settings,
) -> None:
    """confluent-kafka raises on reading such headers: the router stopped on the record at every start.
    Then it dead-lettered them, while the projections applied them: an erasure written so left the
    person erased in the API and routed to by the router."""
    from tests.raw_headers import RAW_KEY, Raw, produce_raw

    s = topology
    n = names(s)
    publish_catalog(s)
    with Client(s) as client:
        for who in ("u1", "u2"):
            client.update_recipient(tenant="acme", recipient=who, email=f"{who}@example.com")
    sent = [
        NotificationRequested(
            tenant_id="acme",
            notification_id=new_notification_id(),
            recipient_id=who,
            notification_type="order.shipped",
            data_json='{"order": "X", "carrier": "Y"}',
            channels=["email"],
        )
        for who in ("u1", "u1", "u2")
    ]
    erased = RecipientErased(tenant_id="acme", recipient_id="u2")
    outputs = [Output.event(n.requested, r) for r in sent[:2]]
    produce_raw(s, [Raw(outputs[0]), Raw(outputs[1], RAW_KEY)])
    produce_raw(s, [Raw(Output.event(n.recipients, erased), RAW_KEY)])
    time.sleep(0.05)
    produce_raw(s, [Raw(Output.event(n.requested, sent[2]))])
    router = run_router(s)

    planned = {c.notification_id: c.recipient_id for c in commands(s)}
    assert planned == {sent[0].notification_id: "u1", sent[1].notification_id: "u1"}
    after = [o for o in decoded(s, n.outcomes) if isinstance(o, DeliveryOutcome)]
    assert ("SKIPPED", "no_address") in {
        (o.status, o.reason) for o in after if o.notification_id == sent[2].notification_id
    }
    assert read_all(s, n.dlq) == [] and router.loop.dead_letters == 0
