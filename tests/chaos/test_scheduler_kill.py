"""1,500 deferred commands due over ~15 s; the scheduler process is SIGKILLed three times meanwhile,
each time after it has released at least 50 more of them.

Reading the delivery lanes read_committed afterwards must show every command exactly once, none
released before it was due, and one QUEUED `released` outcome per command.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.chaos.conftest import kill_mid_work
from tests.integration.conftest import read_all
from tidings.codec import default_codec
from tidings.config import Settings
from tidings.events import DeliveryCommand, DeliveryOutcome, RenderedContent
from tidings.kafka import EventProducer, Output
from tidings.topics import names

TIDINGS = str(Path(sys.executable).with_name("tidings"))
COUNT, SPREAD_MS, STEP = 1500, 15_000, 50
pytestmark = pytest.mark.timeout(600)


def test_scheduler_killed_three_times_releases_each_timer_once_and_on_time(topology: Settings) -> None:
    s, n = topology, names(topology)
    rng = random.Random(7)
    start = datetime.now(UTC) + timedelta(seconds=1)
    commands = [
        DeliveryCommand(
            tenant_id="acme",
            delivery_id=uuid.uuid4(),
            notification_id=uuid.uuid4(),
            recipient_id=f"user-{i % 150}",
            notification_type="comment.mention",
            channel=rng.choice(["push", "sms"]),
            priority=rng.choice(["normal", "high"]),
            address="+4915112345678",
            content=RenderedContent(title="t", body=f"b{i}"),
            not_before=start + timedelta(milliseconds=rng.randrange(0, SPREAD_MS)),
        )
        for i in range(COUNT)
    ]
    with EventProducer(s) as producer:
        for c in commands:
            producer.produce(Output.event(n.scheduled, c))
    env = os.environ | {
        "TIDINGS_TOPIC_PREFIX": s.topic_prefix,
        "TIDINGS_PARTITIONS": str(s.partitions),
        "TIDINGS_RETRY_TIERS": s.retry_tiers,
    }
    argv = [TIDINGS, "run", "scheduler", "--instance", "0", "--idle-exit", "3"]
    lanes = [n.delivery(c, urgent=u) for c in ("push", "sms") for u in (False, True)]
    kill_mid_work(s, argv, env, lanes, STEP)
    final = subprocess.run(argv, env=env, timeout=300, capture_output=True, text=True)
    assert final.returncode == 0, final.stderr[-2000:]

    due = {c.delivery_id: c.not_before for c in commands}
    released: Counter[Any] = Counter()
    for channel in ("push", "sms"):
        for topic in (n.delivery(channel), n.delivery(channel, urgent=True)):
            for record in read_all(s, topic):
                command = default_codec().decode(record.value or b"")
                assert isinstance(command, DeliveryCommand)
                released[command.delivery_id] += 1
                not_before = due[command.delivery_id]
                assert not_before is not None and record.timestamp_ms >= not_before.timestamp() * 1000 - 5
                assert topic.endswith(".urgent") == (command.priority == "high")
    missing = set(due) - set(released)
    assert not missing, f"{len(missing)} never released; last run: {final.stderr[-3000:]}"
    assert set(released.values()) == {1}
    queued = {
        (o.delivery_id, o.event_id)
        for o in (default_codec().decode(r.value or b"") for r in read_all(s, n.outcomes))
        if isinstance(o, DeliveryOutcome) and o.status == "QUEUED"
    }
    assert len(queued) == len({d for d, _ in queued}) == COUNT
