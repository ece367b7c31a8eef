"""Cancelling a notification on the real broker: before the router sees it, and while it is deferred."""

import json
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg

from processors.plan import Catalog, plan
from processors.recipients import RecipientState
from projections import Projection, Runner
from tests.integration.conftest import read_all
from tests.integration.scheduling import SkewedScheduler
from tests.integration.test_router import commands, decoded, publish_catalog, run_router
from tidings.catalog import load
from tidings.client import Client
from tidings.config import Settings
from tidings.events import DeliveryOutcome, NotificationCancelled, NotificationRequested
from tidings.ids import new_notification_id
from tidings.kafka import EventProducer, Output
from tidings.topics import names

SHIPPED = {"order": "A-1", "carrier": "DHL"}


def test_a_cancelled_deferred_notification_is_never_released(database: Settings) -> None:
    s = database
    publish_catalog(s)
    later = datetime.now(UTC) + timedelta(minutes=10)
    early = new_notification_id()
    with Client(s) as client:
        client.update_recipient(tenant="acme", recipient="ada", email="ada@example.com")
        client.register_device(tenant="acme", recipient="ada", device_id="p", platform="fcm", token="t-1")
        keep = client.send(
            tenant="acme", recipient="ada", type="order.shipped", data=SHIPPED, scheduled_at=later
        )
        drop = client.send(
            tenant="acme", recipient="ada", type="order.shipped", data=SHIPPED, scheduled_at=later
        )
        for _ in range(2):  # a client retrying its DELETE: the second changes nothing
            client.cancel(tenant="acme", recipient="ada", notification_id=drop, reason="order returned")
            client.cancel(tenant="acme", recipient="ada", notification_id=early)
        client.send(tenant="acme", recipient="ada", type="order.shipped", data=SHIPPED, notification_id=early)
    run_router(s)
    scheduler = SkewedScheduler(s)
    scheduler.wait_committed(7)
    scheduler.advance(11 * 60)  # the deferrals come due only after the cancellation was handled
    scheduler.join()

    released = Counter(c.notification_id for c in commands(s))
    assert released == {keep: 3}, released
    outcomes = [o for o in decoded(s, names(s).outcomes) if isinstance(o, DeliveryOutcome)]
    by = {
        nid: Counter((o.status, o.reason) for o in outcomes if o.notification_id == nid)
        for nid in (keep, drop)
    }
    assert by[keep] == {("DEFERRED", "scheduled"): 3, ("QUEUED", "released"): 3}
    assert by[drop] == {("DEFERRED", "scheduled"): 3, ("CANCELLED", "order returned"): 3}
    assert [(o.status, o.reason) for o in outcomes if o.notification_id == early] == [
        ("CANCELLED", "cancelled"),
        ("SKIPPED", "cancelled"),
    ]

    runner = Runner(s, Projection.registry["delivery_status"]())
    try:
        runner.run(idle_exit_after=3)
    finally:
        runner.close()
    with psycopg.connect(s.postgres_dsn) as conn:
        rows = dict(conn.execute("SELECT notification_id, status FROM notifications").fetchall())
        deliveries = conn.execute(
            "SELECT DISTINCT status FROM deliveries WHERE notification_id = %s", (drop,)
        )
        assert [r[0] for r in deliveries] == ["CANCELLED"]
    assert (rows[keep], rows[drop], rows[early]) == ("QUEUED", "CANCELLED", "CANCELLED")


def test_a_cancellation_the_router_no_longer_remembers_still_reaches_the_scheduler(
    database: Settings,
) -> None:
    """The router remembers requests for its 7-day dedupe window; a request scheduled further ahead and
    cancelled after that has its timers only in the scheduler. The deferral below is what a router
    wrote for it then; the router that reads the cancellation has never seen the request."""
    s = database
    publish_catalog(s)
    catalog = Catalog()
    for published in load(Path(__file__).parents[2] / "catalog"):
        catalog.apply(published)
    now = datetime.now(UTC)
    request = NotificationRequested(
        tenant_id="acme",
        notification_id=new_notification_id(),
        recipient_id="ada",
        notification_type="order.shipped",
        data_json=json.dumps(SHIPPED),
        scheduled_at=now + timedelta(minutes=10),
    )
    deferred = plan(request, RecipientState(email="ada@example.com"), catalog, now).deferred
    assert sorted(c.channel for c in deferred) == ["email", "in_app"]
    with EventProducer(s) as producer:
        for command in deferred:
            producer.produce(Output.event(names(s).scheduled, command))
    [partition] = {r.partition for r in read_all(s, names(s).scheduled)}
    forged = NotificationCancelled(
        tenant_id="globex", recipient_id="mallory", notification_id=request.notification_id, reason="forged"
    )
    with EventProducer(s) as producer:  # another tenant naming acme's id, on the same partition
        producer.produce(replace(Output.event(names(s).scheduled, forged), partition=partition))
    with Client(s) as client:
        client.cancel(tenant="acme", recipient="ada", notification_id=request.notification_id, reason="gone")
    run_router(s)
    scheduler = SkewedScheduler(s)
    scheduler.wait_committed(4)
    scheduler.advance(11 * 60)
    scheduler.join()

    assert [c for c in commands(s) if c.notification_id == request.notification_id] == []
    outcomes = [o for o in decoded(s, names(s).outcomes) if isinstance(o, DeliveryOutcome)]
    assert {o.reason for o in outcomes if o.notification_id == request.notification_id} == {"gone"}
    assert Counter(
        (o.channel, o.status) for o in outcomes if o.notification_id == request.notification_id
    ) == {
        (None, "CANCELLED"): 1,
        ("email", "CANCELLED"): 1,
        ("in_app", "CANCELLED"): 1,
    }
