"""A scheduler that gets a partition back after another group member held it reads what was written
meanwhile before it releases a due timer: librdkafka's cached end of the partition is the old one."""

import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from confluent_kafka import Consumer

from processors.scheduler import Scheduler
from tests.integration.conftest import read_all
from tests.integration.test_inbox import command
from tidings.codec import default_codec
from tidings.config import Settings
from tidings.events import DeliveryOutcome, InboxItemSeen, RecipientErased
from tidings.kafka import EventProducer, Output
from tidings.kafka import config as kafka_config
from tidings.topics import names


def test_an_erasure_written_while_the_partition_was_elsewhere_stops_the_due_timer(
    namespace: Callable[..., Settings],
) -> None:
    s = namespace(partitions=1)
    n, group = names(s), f"scheduler-{s.topic_prefix}"
    scheduler = Scheduler(s, instance="0", group_id=group)
    thread = threading.Thread(target=scheduler.run)
    thread.start()
    due = datetime.now(UTC) + timedelta(seconds=15)
    timer = command("ada", "quiet hours").model_copy(
        update={"not_before": due, "requested_at": datetime.now(UTC)}
    )
    with EventProducer(s) as producer:
        producer.produce(Output.event(n.scheduled, timer))
        seen = InboxItemSeen(
            tenant_id="acme", recipient_id="bob", notification_id=uuid.uuid4(), delivery_id=uuid.uuid4()
        )
        producer.produce(Output.event(n.engagement, seen))
        producer.flush()
        deadline = time.monotonic() + 60
        while scheduler.loop.committed_records < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        other = Consumer(
            kafka_config.consumer(s, group, **{"partition.assignment.strategy": "range", "client.id": "aaa"})
        )
        other.subscribe([n.scheduled, n.engagement])
        while not other.assignment() and time.monotonic() < deadline:
            other.poll(0.1)
        assert other.assignment(), "the range assignor gives the partitions to the first member id"
        started = time.monotonic()
        while time.monotonic() - started < 2:
            other.poll(0.1)
        producer.produce(Output.event(n.scheduled, RecipientErased(tenant_id="acme", recipient_id="ada")))
        producer.flush()
        while datetime.now(UTC) < due + timedelta(seconds=1):
            other.poll(0.1)
        other.close()
    while scheduler.loop.committed_records < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1)
    scheduler.stop()
    thread.join(timeout=60)
    outcomes = [default_codec().decode(r.value or b"") for r in read_all(s, n.outcomes)]
    assert [(o.status, o.reason) for o in outcomes if isinstance(o, DeliveryOutcome)] == [
        ("CANCELLED", "erased")
    ]
