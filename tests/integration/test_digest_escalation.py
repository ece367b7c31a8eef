"""Digest windows (router) and escalation timers (scheduler) on the real broker."""

import json
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from processors import router_digests
from processors.router import Router
from tests.integration.conftest import read_all
from tests.integration.scheduling import SkewedScheduler
from tests.integration.test_router import commands, decoded, publish_catalog, run_router
from tidings.audit import history
from tidings.catalog import parse_type
from tidings.client import Client
from tidings.codec import default_codec
from tidings.config import Settings
from tidings.events import (
    DeliveryCommand,
    DeliveryOutcome,
    InboxItemMarkedUnread,
    InboxItemSeen,
    NotificationOpened,
    NotificationRequested,
)
from tidings.ids import delivery_id, new_notification_id
from tidings.kafka.records import partition_for
from tidings.topics import names

LIKED: dict[str, Any] = {
    "key": "post.liked",
    "category": "social",
    "channels": ["in_app", "email"],
    "templates": {
        "in_app": {"default": {"title": "{{ by }} liked {{ post }}"}},
        "email": {"default": {"subject": "{{ by }} liked {{ post }}", "body": "{{ by }} liked {{ post }}."}},
    },
    "digest": {
        "window": "2s",
        "templates": {
            "email": {
                "default": {
                    "subject": "{{ count }} new likes",
                    "body": "{% for l in items %}{{ l.by }} liked {{ l.post }}; {% endfor %}",
                }
            }
        },
    },
}


def outcomes_of(s: Settings) -> list[DeliveryOutcome]:
    return [o for o in decoded(s, names(s).outcomes) if isinstance(o, DeliveryOutcome)]


def test_requests_in_a_window_become_one_digest_and_a_cancelled_one_leaves_it(topology: Settings) -> None:
    s = topology
    with Client(s) as client:
        client.publish(parse_type("*", LIKED))
        client.update_recipient(tenant="acme", recipient="ada", email="ada@example.com")
        client.update_recipient(tenant="acme", recipient="bob", email="bob@example.com")
        client.update_preferences(tenant="acme", recipient="bob", digest={"social": "off"})
        likes = [
            client.send(tenant="acme", recipient="ada", type="post.liked", data={"by": by, "post": "P1"})
            for by in ("Cy", "Di", "Ed")
        ]
        client.cancel(tenant="acme", recipient="ada", notification_id=likes[1], reason="unliked")
        for by in ("Fay", "Gus"):
            client.send(tenant="acme", recipient="bob", type="post.liked", data={"by": by, "post": "P2"})
    run_router(s, idle=6.0)

    sent = commands(s)
    emails = [c for c in sent if c.channel == "email"]
    ada = [c for c in emails if c.recipient_id == "ada"]
    assert len(ada) == 1, [c.content for c in ada]
    assert ada[0].content.subject == "2 new likes"
    assert ada[0].content.body == "Cy liked P1; Ed liked P1; "
    assert sorted(c.content.subject or "" for c in emails if c.recipient_id == "bob") == [
        "Fay liked P2",
        "Gus liked P2",
    ]
    assert Counter(c.recipient_id for c in sent if c.channel == "in_app") == {"ada": 3, "bob": 2}

    (digest,) = [
        r for r in decoded(s, names(s).requested) if isinstance(r, NotificationRequested) and r.digest_of
    ]
    assert digest.digest_of == [likes[0], likes[2]] and digest.notification_id == ada[0].notification_id
    email_outcomes = Counter(
        (o.notification_id, o.status, o.reason) for o in outcomes_of(s) if o.channel == "email"
    )
    for nid in (likes[0], likes[2]):
        assert email_outcomes[(nid, "DEFERRED", "digest")] == 1
        assert email_outcomes[(nid, "QUEUED", "digested")] == 1
    assert email_outcomes[(likes[1], "CANCELLED", "unliked")] == 1
    assert email_outcomes[(likes[1], "QUEUED", "digested")] == 0
    assert email_outcomes[(digest.notification_id, "QUEUED", None)] == 1
    audited = [e for _, e in history(s, str(likes[0]))]
    assert digest in audited and isinstance(audited[0], NotificationRequested)


def test_digests_due_together_close_a_few_per_transaction_and_all_go_out(
    topology: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = topology
    monkeypatch.setattr(router_digests, "MAX_DIGESTS_PER_TICK", 2)
    people = [f"p{i}" for i in range(5)]
    with Client(s) as client:
        client.publish(parse_type("*", LIKED))
        for p in people:
            client.update_recipient(tenant="acme", recipient=p, email=f"{p}@example.com")
            for by in ("Cy", "Di"):
                client.send(tenant="acme", recipient=p, type="post.liked", data={"by": by, "post": "P"})
    run_router(s, idle=6.0)
    emails = Counter(c.recipient_id for c in commands(s) if c.channel == "email")
    assert emails == dict.fromkeys(people, 1)


def test_a_burst_of_due_digests_in_one_partition_does_not_hold_back_another_partitions(
    topology: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each tick started at the lowest partition: everyone's daily digest due at 09:00 there held back
    every other partition's digests until the burst was drained."""
    s = topology
    monkeypatch.setattr(router_digests, "MAX_DIGESTS_PER_TICK", 1)
    hourly = LIKED | {"digest": LIKED["digest"] | {"window": "1h"}}
    on = {p: [r for r in (f"r{i}" for i in range(200)) if partition_for(f"acme/{r}", 3) == p] for p in (0, 2)}
    crowd, lonely = on[0][:6], on[2][0]
    with Client(s) as client:
        client.publish(parse_type("*", hourly))
        for r in [*crowd, lonely]:
            client.update_recipient(tenant="acme", recipient=r, email=f"{r}@example.com", wait=False)
            client.send(
                tenant="acme", recipient=r, type="post.liked", data={"by": "Cy", "post": "P"}, wait=False
            )
        client.flush()
    run_skewed(s, 0, records=14)
    run_skewed(s, 1)
    digested = [
        (r.timestamp_ms, request.recipient_id)
        for r in read_all(s, names(s).requested)
        if isinstance(request := default_codec().decode(r.value or b""), NotificationRequested)
        and request.digest_of
    ]
    assert sorted(who for _, who in digested) == sorted([*crowd, lonely])
    at = dict((who, ts) for ts, who in digested)
    ahead = [who for who in crowd if at[who] < at[lonely]]
    assert len(ahead) <= 1, f"{len(ahead)} of the crowd's digests went out before the lonely one"


def run_skewed(s: Settings, days: int, records: int | None = None) -> None:
    """A router whose clock is `days` ahead, until it committed `records` input records (an open digest
    keeps it from idling out), else until it idles out."""
    router = Router(
        s,
        instance="0",
        group_id=f"router-{s.topic_prefix}",
        clock=lambda: datetime.fromtimestamp(time.time() + days * 86400, UTC),
    )
    thread = threading.Thread(target=router.run, kwargs={"idle_exit_after": 3.0})
    thread.start()
    deadline = time.monotonic() + 60
    while records is not None and router.loop.committed_records < records and time.monotonic() < deadline:
        time.sleep(0.1)
    if records is not None:
        router.stop()
    thread.join(timeout=60)
    if thread.is_alive():
        router.stop()
        thread.join()
    assert records is None or router.loop.committed_records >= records


def test_a_cancellation_takes_its_item_out_of_a_digest_due_after_the_dedupe_window(
    topology: Settings,
) -> None:
    """The router remembers a digested request until a day after its digest is due: a 14-day window
    outlived the 7-day dedupe mark, and the cancelled item went out in the digest all the same."""
    s = topology
    fortnightly = LIKED | {"key": "post.shared", "digest": LIKED["digest"] | {"window": "14d"}}
    with Client(s) as client:
        client.publish(parse_type("*", fortnightly))
        client.update_recipient(tenant="acme", recipient="ada", email="ada@example.com")
        shared = client.send(
            tenant="acme", recipient="ada", type="post.shared", data={"by": "Cy", "post": "P"}
        )
    run_skewed(s, 0, records=2)
    with Client(s) as client:
        client.cancel(tenant="acme", recipient="ada", notification_id=shared, reason="unshared")
    run_skewed(s, 8, records=1)
    run_skewed(s, 15)
    email = Counter((o.status, o.reason) for o in outcomes_of(s) if o.channel == "email")
    assert email[("DEFERRED", "digest")] == 1 and email[("CANCELLED", "unshared")] == 1
    assert email[("QUEUED", "digested")] == 0 and not [c for c in commands(s) if c.channel == "email"]


def test_a_cancelled_scheduled_request_delivered_again_after_the_dedupe_window_stays_cancelled(
    topology: Settings,
) -> None:
    """A request scheduled a month ahead and cancelled, then delivered again 8 days later (an outbox
    retry, a DLQ replay): the router had forgotten both after 7 days, planned it again, and the new
    timer fired."""
    s = topology
    request = NotificationRequested(
        tenant_id="acme",
        notification_id=new_notification_id(),
        recipient_id="ada",
        notification_type="post.liked",
        data_json=json.dumps({"by": "Cy", "post": "P"}),
        scheduled_at=datetime.now(UTC) + timedelta(days=30),
    )
    with Client(s) as client:
        client.publish(parse_type("*", LIKED))
        client.update_recipient(tenant="acme", recipient="ada", email="ada@example.com")
        client.publish(request)
    run_skewed(s, 0)
    with Client(s) as client:
        client.cancel(tenant="acme", recipient="ada", notification_id=request.notification_id)
    run_skewed(s, 0)
    with Client(s) as client:
        client.publish(request)
    run_skewed(s, 8)
    deferred = [
        c
        for c in decoded(s, names(s).scheduled)
        if isinstance(c, DeliveryCommand) and c.notification_id == request.notification_id
    ]
    assert sorted(c.channel for c in deferred) == ["email", "in_app"], "planned once, not again"
    mine = [o for o in outcomes_of(s) if o.notification_id == request.notification_id]
    assert Counter((o.status, o.reason) for o in mine)[("SKIPPED", "cancelled")] == 1


def test_an_escalation_is_dropped_when_the_notification_was_engaged_with_first(topology: Settings) -> None:
    s = topology
    publish_catalog(s)  # comment.mention: in_app and push now, email after 5 minutes unless seen
    with Client(s) as client:
        client.update_recipient(tenant="acme", recipient="ada", email="ada@example.com")
        client.register_device(tenant="acme", recipient="ada", device_id="p", platform="fcm", token="t-1")
        seen_early, ignored, opened_late = (
            client.send(
                tenant="acme", recipient="ada", type="comment.mention", data={"by": "Bo", "thread": t}
            )
            for t in ("T1", "T2", "T3")
        )
        client.publish(
            InboxItemSeen(
                tenant_id="acme",
                recipient_id="ada",
                notification_id=seen_early,
                delivery_id=delivery_id(seen_early, "in_app", "ada"),
            )
        )
        client.publish(
            InboxItemMarkedUnread(
                tenant_id="acme",
                recipient_id="ada",
                notification_id=seen_early,
                delivery_id=delivery_id(seen_early, "in_app", "ada"),
            )
        )
    run_router(s)
    immediate = Counter(c.channel for c in commands(s))
    assert immediate == {"in_app": 3, "push": 3}

    running = SkewedScheduler(s)
    running.wait_committed(5)
    with Client(s) as client:
        client.publish(
            NotificationOpened(
                tenant_id="acme",
                recipient_id="ada",
                notification_id=opened_late,
                delivery_id=delivery_id(opened_late, "push", "t-1"),
                channel="push",
            )
        )
    running.wait_committed(6)
    running.advance(6 * 60)
    scheduler = running.join()

    emails = [c for c in commands(s) if c.channel == "email"]
    assert [c.notification_id for c in emails] == [ignored]
    assert emails[0].unless == "seen"
    outcomes = outcomes_of(s)
    email_outcomes = {
        nid: Counter(
            (o.status, o.reason) for o in outcomes if o.notification_id == nid and o.channel == "email"
        )
        for nid in (seen_early, ignored, opened_late)
    }
    assert email_outcomes[ignored] == {("DEFERRED", "escalation"): 1, ("QUEUED", "released"): 1}
    assert email_outcomes[seen_early] == {("DEFERRED", "escalation"): 1, ("SKIPPED", "engaged"): 1}
    assert email_outcomes[opened_late] == {("DEFERRED", "escalation"): 1, ("SKIPPED", "engaged"): 1}
    assert scheduler.escalations_dropped == 2
    assert scheduler.loop.dead_letters == 0, "marking an item unread is no poison and revives nothing"


def test_a_bucket_no_digest_can_be_made_of_rejects_its_items_instead_of_stopping_the_router(
    topology: Settings,
) -> None:
    """A number beyond a double's range (`1e400`) was valid JSON to the codec, infinity to Python,
    and `Infinity` (not JSON) in the digest: the punctuation raised on every restart. Requests are now
    refused at the codec; a bucket an earlier release filled is rejected item by item."""
    from datetime import UTC, datetime

    import pytest
    from pydantic import ValidationError

    from processors import digest
    from processors.router import Router

    with pytest.raises(ValidationError, match="beyond the range of a double"):
        NotificationRequested(
            tenant_id="acme", recipient_id="ada", notification_type="post.liked", data_json='{"n": 1e400}'
        )
    now = datetime.now(UTC)
    items = [
        digest.Item(notification_id=new_notification_id(), data={"n": n}, size=10) for n in (1, float("inf"))
    ]
    bucket = digest.Bucket(
        tenant_id="acme",
        recipient_id="ada",
        notification_type="post.liked",
        channels=["email"],
        opened_at=now,
        due=now,
        items=items,
    )
    router = Router(topology, instance="0", group_id=f"router-{topology.topic_prefix}")
    router.catalog.apply(parse_type("*", LIKED))
    router.digest_due.restore(0, [])
    try:
        outputs = router._closed(0, bucket, now)
    finally:
        router.follower.close()
    rejected = [default_codec().decode(o.value or b"") for o in outputs]
    assert [(o.notification_id, o.status, o.reason) for o in rejected if isinstance(o, DeliveryOutcome)] == [
        (i.notification_id, "REJECTED", "invalid") for i in items
    ]


def test_another_tenants_engagement_with_the_same_id_does_not_drop_an_escalation(topology: Settings) -> None:
    """Engagement is remembered per tenant: a recipient of one tenant marking seen an item whose id
    another tenant's notification has (ids can be chosen or derived) dropped that one's escalation,
    whether the engagement came before it or after."""
    import uuid
    from datetime import UTC, datetime, timedelta

    from processors.scheduler import Scheduler
    from tidings.events import DeliveryCommand, Event, RenderedContent
    from tidings.kafka import Incoming

    codec = default_codec()
    scheduler = Scheduler(topology, group_id=f"scheduler-{topology.topic_prefix}")
    stores = (scheduler.store, scheduler.engaged, scheduler.erased)
    for store in stores:
        store.restore(0, [])
    offset = iter(range(1, 100))

    def feed(topic: str, event: Event) -> list[Event]:
        out = scheduler.handle(Incoming(topic, 0, next(offset), event.key.encode(), codec.encode(event)))
        for store in stores:
            store.record_done()
            store.committed()
        return [codec.decode(o.value or b"") for o in out]

    def escalation(nid: uuid.UUID, tenant: str = "globex") -> DeliveryCommand:
        return DeliveryCommand(
            tenant_id=tenant,
            delivery_id=uuid.uuid4(),
            notification_id=nid,
            recipient_id="bob",
            notification_type="comment.mention",
            channel="email",
            priority="normal",
            address="bob@example.com",
            content=RenderedContent(body="you were mentioned"),
            not_before=datetime.now(UTC) + timedelta(minutes=5),
            unless="seen",
        )

    def seen(nid: uuid.UUID, tenant: str = "acme") -> InboxItemSeen:
        return InboxItemSeen(
            tenant_id=tenant, recipient_id="mallory", notification_id=nid, delivery_id=uuid.uuid4()
        )

    n = names(topology)
    first, second = uuid.uuid4(), uuid.uuid4()
    assert feed(n.scheduled, escalation(first)) == []
    assert feed(n.engagement, seen(first)) == []
    assert feed(n.engagement, seen(second)) == []
    assert feed(n.scheduled, escalation(second)) == []
    assert len(scheduler.store.keys(0)) >= 2
    dropped = feed(n.engagement, seen(first, tenant="globex"))
    assert [(o.tenant_id, o.status, o.reason) for o in dropped if isinstance(o, DeliveryOutcome)] == [
        ("globex", "SKIPPED", "engaged")
    ]
