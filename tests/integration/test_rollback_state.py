"""Processors restoring state that a newer release wrote (a rollback during an upgrade): what they
cannot read is dead-lettered when it is needed, and the rest goes on."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from processors.scheduler import Scheduler
from processors.timers import timer_key
from tests.integration.conftest import read_all
from tests.integration.test_cancellation import SHIPPED
from tests.integration.test_inbox import command
from tests.integration.test_router import commands, decoded, publish_catalog, run_router
from tidings.client import Client
from tidings.codec import default_codec
from tidings.config import Settings
from tidings.events import DeliveryCommand, RecipientErased
from tidings.kafka import EventProducer, Output
from tidings.kafka.records import header_map
from tidings.state import Store
from tidings.topics import names


def test_a_timer_written_by_a_newer_release_is_dead_lettered_and_the_others_are_released(
    namespace: Callable[..., Settings],
) -> None:
    s = namespace(partitions=1)
    n = names(s)
    due = datetime.now(UTC) + timedelta(seconds=2)
    readable, newer = (
        command(who, "due").model_copy(update={"not_before": due, "requested_at": datetime.now(UTC)})
        for who in ("ada", "bob")
    )
    unknown = b"\xc3\x01" + bytes(8) + b"a DeliveryCommand of a schema this release lacks"
    written_by_newer: Store[bytes] = Store(n.changelog("scheduler", "timers"), encode=bytes, decode=bytes)
    written_by_newer.restore(0, [])
    written_by_newer.put(0, timer_key(newer), unknown)
    with EventProducer(s) as producer:
        producer.produce(Output.event(n.scheduled, readable))
        for out in written_by_newer.changelog():
            producer.produce(out)
        producer.flush()
    scheduler = Scheduler(s, instance="0", group_id=f"scheduler-{s.topic_prefix}")
    thread = threading.Thread(target=scheduler.run, kwargs={"idle_exit_after": 3})
    thread.start()
    thread.join(timeout=120)
    assert not thread.is_alive()

    lane = [default_codec().decode(r.value or b"") for r in read_all(s, n.delivery("in_app"))]
    assert [c.delivery_id for c in lane if isinstance(c, DeliveryCommand)] == [readable.delivery_id]
    [letter] = read_all(s, n.dlq)
    headers = header_map(letter.headers)
    assert letter.value == unknown and headers["tidings.error.type"] == "UnknownFingerprint"
    assert headers["tidings.source.topic"] == n.scheduled
    assert scheduler.released == 1 and time.time() >= due.timestamp()


def test_a_recipient_state_written_by_a_newer_release_dead_letters_only_that_recipients_requests(
    namespace: Callable[..., Settings],
) -> None:
    """Restoring it raised out of the consumer's assignment: the router stopped at every restart."""
    s = namespace(partitions=1)
    n = names(s)
    publish_catalog(s)
    with Client(s) as client:
        for who in ("ada", "bob"):
            client.update_recipient(tenant="acme", recipient=who, email=f"{who}@example.com", wait=False)
        client.flush()
    run_router(s)
    newer: Store[bytes] = Store(n.changelog("router", "recipients"), encode=bytes, decode=bytes)
    newer.restore(0, [])
    newer.put(0, "acme/ada", b'{"email": "ada@example.com", "quiet_hours": [{"start": "22:00"}]}')
    with EventProducer(s) as producer:
        for out in newer.changelog():
            producer.produce(out)
    with Client(s) as client:
        sent = {
            who: client.send(tenant="acme", recipient=who, type="order.shipped", data=SHIPPED, wait=False)
            for who in ("ada", "bob")
        }
        client.flush()
    run_router(s)

    planned = {c.notification_id for c in commands(s)}
    assert sent["bob"] in planned and sent["ada"] not in planned
    [letter] = read_all(s, n.dlq)
    headers = header_map(letter.headers)
    assert headers["tidings.error.type"] == "UnreadableState"
    assert "'acme/ada' is unreadable" in headers["tidings.error.message"]

    with Client(s) as client:
        client.erase_recipient(tenant="acme", recipient="ada")
    run_router(s)
    forwarded = [e for e in decoded(s, n.scheduled) if isinstance(e, RecipientErased)]
    assert [e.recipient_id for e in forwarded] == ["ada"], "an erasure needs nothing of the state it replaces"
    assert len(read_all(s, n.dlq)) == 1
