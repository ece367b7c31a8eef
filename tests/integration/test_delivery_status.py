"""The delivery-status projection when outcomes come before their request."""

from __future__ import annotations

import uuid

from tests.integration.test_projections import project, rows
from tidings.config import Settings
from tidings.events import DeliveryOutcome, NotificationRequested
from tidings.kafka import EventProducer, Output
from tidings.topics import names


def test_a_cancel_naming_another_recipient_read_before_the_request_does_not_take_the_notification(
    database: Settings,
) -> None:
    """A cancel naming bob for ada's notification, accepted before the projection knew it, is CANCELLED
    on bob's partition; read first, it made the notification bob's for good: his history and export
    listed it, ada's did not, and her own cancel was refused as naming the wrong recipient."""
    s = database
    nid = uuid.uuid4()
    cancelled = DeliveryOutcome(
        tenant_id="acme", notification_id=nid, recipient_id="bob", status="CANCELLED", reason="cancelled"
    )
    request = NotificationRequested(
        tenant_id="acme", notification_id=nid, recipient_id="ada", notification_type="invoice.due"
    )
    with EventProducer(s) as producer:
        producer.produce(Output.event(names(s).outcomes, cancelled))
    project(s, "delivery_status")
    with EventProducer(s) as producer:
        producer.produce(Output.event(names(s).requested, request))
    project(s, "delivery_status")
    assert rows(s, "SELECT recipient_id, notification_type FROM notifications") == [("ada", "invoice.due")]


def test_a_rebuild_under_a_prefix_without_the_topics_stops_before_emptying_the_tables(
    database: Settings,
) -> None:
    """Against a wrong prefix or cluster every topic read as empty: the tables were truncated, the
    offsets deleted, and the rebuild reported success."""
    import pytest

    from projections.base import Projection, Runner
    from tidings.errors import UnknownTopic

    s = database
    request = NotificationRequested(
        tenant_id="acme", notification_id=uuid.uuid4(), recipient_id="ada", notification_type="invoice.due"
    )
    with EventProducer(s) as producer:
        producer.produce(Output.event(names(s).requested, request))
    project(s, "delivery_status")
    elsewhere = Settings(**(s.model_dump() | {"topic_prefix": f"missing{uuid.uuid4().hex[:6]}."}))
    runner = Runner(elsewhere, Projection.registry["delivery_status"]())
    try:
        with pytest.raises(UnknownTopic, match=r"notifications\.requested"):
            runner.rebuild()
    finally:
        runner.close()
    assert rows(s, "SELECT recipient_id FROM notifications") == [("ada",)]
    assert rows(s, "SELECT count(*) FROM projection_offsets") != [(0,)]


def test_a_rebuild_refuses_to_drop_rows_whose_records_retention_deleted(database: Settings) -> None:
    """Outcomes are kept 30 days: a rebuild truncated the tables and replayed what was left, so every
    older notification lost its deliveries and timeline, and the rebuild reported success."""
    import pytest
    from confluent_kafka import TopicPartition

    from projections.base import HistoryLost, Projection, Runner
    from tidings.kafka import end_offsets
    from tidings.kafka.admin import admin

    s = database
    old, new = uuid.uuid4(), uuid.uuid4()
    with EventProducer(s) as producer:
        for nid in (old, new):
            request = NotificationRequested(
                tenant_id="acme", notification_id=nid, recipient_id="ada", notification_type="invoice.due"
            )
            producer.produce(Output.event(names(s).requested, request))
    project(s, "delivery_status")
    assert len(rows(s, "SELECT notification_id FROM notifications")) == 2
    [(held, end)] = [(p, e) for p, e in end_offsets(s, names(s).requested).items() if e]
    assert end == 2
    client = admin(s)
    for future in client.delete_records([TopicPartition(names(s).requested, held, 1)]).values():
        future.result(timeout=30)
    runner = Runner(s, Projection.registry["delivery_status"]())
    try:
        with pytest.raises(HistoryLost, match=r"1 records of .*notifications\.requested are gone"):
            runner.rebuild()
        assert len(rows(s, "SELECT notification_id FROM notifications")) == 2
        runner.rebuild(drop_lost=True)
    finally:
        runner.close()
    assert rows(s, "SELECT notification_id FROM notifications") == [(new,)]
