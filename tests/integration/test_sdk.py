import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from tests.integration.conftest import read_all
from tidings.client import Client
from tidings.codec import default_codec
from tidings.config import Settings
from tidings.errors import InvalidEvent
from tidings.events import DeviceRegistered, NotificationRequested, ProviderFeedback
from tidings.topics import names


def test_send_produces_a_decodable_request_keyed_by_tenant_and_recipient(topology: Settings) -> None:
    expires = datetime.now(UTC) + timedelta(hours=1)
    with Client(topology, source="test") as client:
        nid = client.send(
            tenant="acme",
            recipient="u-42",
            type="order.shipped",
            data={"order": "A-1", "n": 2},
            priority="high",
            channels=["email", "push"],
            expires_at=expires,
            to={"email": "a@b.c"},
        )
    found = None
    for record in read_all(topology, names(topology).requested):
        event = record.decode()
        if isinstance(event, NotificationRequested) and event.notification_id == nid:
            found = (record, event)
            break
    assert found is not None
    record, event = found
    assert record.key == b"acme/u-42"
    assert record.header("traceparent") is not None
    assert event.data == {"order": "A-1", "n": 2} and event.priority == "high"
    assert event.channels == ["email", "push"] and event.recipient_overrides == {"email": "a@b.c"}
    assert event.expires_at == expires.replace(microsecond=expires.microsecond // 1000 * 1000)
    assert event.correlation_id == str(nid) and event.source == "test" and nid.version == 7


def test_idempotency_key_gives_a_stable_id(topology: Settings) -> None:
    with Client(topology) as client:
        first = client.send(tenant="acme", recipient="u", type="t", idempotency_key="order-9", wait=False)
        second = client.send(tenant="acme", recipient="u", type="t", idempotency_key="order-9", wait=False)
    assert first == second


def test_invalid_input_is_refused_before_producing(stack: Settings) -> None:
    with Client(stack) as client:
        with pytest.raises(InvalidEvent, match="tenant_id"):
            client.send(tenant="a/b", recipient="u", type="t")
        with pytest.raises(InvalidEvent, match="JSON"):
            client.send(tenant="a", recipient="u", type="t", data={"x": object()})
        with pytest.raises(InvalidEvent, match="channels"):
            client.send(tenant="a", recipient="u", type="t", channels=["fax"])


def test_publish_any_event_to_a_topic(stack: Settings, topic_factory: Callable[..., str]) -> None:
    topic = topic_factory()
    events = [
        DeviceRegistered(
            tenant_id="acme",
            recipient_id="u1",
            device_id="d1",
            platform="webpush",
            token="https://push.example/abc",
            keys={"p256dh": "k", "auth": "a"},
        ),
        ProviderFeedback(
            tenant_id="acme",
            recipient_id="u1",
            kind="hard_bounce",
            channel="email",
            address="u1@example.com",
            provider="smtp",
        ),
    ]
    with Client(stack) as client:
        for event in events:
            client.publish(event, topic=topic, wait=False)
    records = read_all(stack, topic)
    assert sorted(
        (default_codec().decode(r.value or b"") for r in records), key=lambda e: e.event_id.int
    ) == sorted(events, key=lambda e: e.event_id.int)


def test_a_waited_send_reports_its_own_record_and_flush_the_unwaited(
    namespace: Callable[..., Settings], topic_factory: Callable[..., str]
) -> None:
    """One producer's failures are not shared out: a record nobody waited for is reported by flush(),
    a waited send (or membership change) by itself, and a failed send or broadcast names the id to
    retry with."""
    import threading

    from tidings.kafka import admin
    from tidings.kafka.producer import DeliveryFailed

    s = namespace()
    tiny = topic_factory("tiny", partitions=1, extra_config={"max.message.bytes": "200"})
    admin._alter(admin.admin(s), names(s).requested, {"max.message.bytes": "200"}, 30)
    big = DeviceRegistered(tenant_id="acme", recipient_id="r", device_id="d", platform="fcm", token="t" * 500)
    fine = DeviceRegistered(tenant_id="acme", recipient_id="r", device_id="d", platform="fcm", token="t")
    with Client(s) as client:
        client.publish(big, topic=tiny, wait=False)
        client.add_members(tenant="acme", audience="beta", recipients=["r"])
        client.publish(fine, wait=True)
        with pytest.raises(DeliveryFailed, match="1 records failed"):
            client.flush()
        client.flush()
        with pytest.raises(DeliveryFailed) as failed:
            client.send(tenant="acme", recipient="r", type="order.shipped", data={"note": "x" * 500})
        assert failed.value.notification_id is not None
        admin._alter(admin.admin(s), names(s).broadcasts, {"max.message.bytes": "200"}, 30)
        refused, note = None, {"note": "x" * 500}
        for _ in range(40):
            try:
                client.broadcast(tenant="acme", audience="beta", type="order.shipped", data=note)
            except DeliveryFailed as exc:
                refused = exc
                break
            time.sleep(0.25)  # the broker applies an altered topic config a moment after it answers
        assert refused is not None and refused.broadcast_id is not None, "the id to retry with"
        outcomes: dict[str, object] = {}

        def send(name: str, event: DeviceRegistered, topic: str | None) -> None:
            try:
                client.publish(event, topic=topic)
                outcomes[name] = "ok"
            except DeliveryFailed as exc:
                outcomes[name] = exc

        threads = [
            threading.Thread(target=send, args=("fine", fine, None)),
            threading.Thread(target=send, args=("big", big, tiny)),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        client.flush()
    assert outcomes["fine"] == "ok" and isinstance(outcomes["big"], DeliveryFailed)
    values = [r.decode() for r in read_all(s, names(s).recipients)]
    assert values.count(fine) == 2
