"""600 likes for 30 recipients trickle in over ~15 s with a 1 s digest window; the router process is
SIGKILLed three times meanwhile, each time after it has planned at least 20 more likes.

Reading the topics read_committed afterwards must show every like in exactly one digest request, each
digest request planned into exactly one email, and every like's in-app command exactly once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from uuid import UUID

import pytest

from tests.chaos.conftest import kill_mid_work
from tests.integration.test_digest_escalation import LIKED as BASE_LIKED
from tests.integration.test_router import commands, decoded
from tidings.catalog import parse_type
from tidings.client import Client
from tidings.config import Settings
from tidings.events import NotificationRequested
from tidings.topics import names

TIDINGS = str(Path(sys.executable).with_name("tidings"))
LIKES, RECIPIENTS, SPREAD_S, STEP = 600, 30, 15.0, 20
pytestmark = pytest.mark.timeout(600)
LIKED = BASE_LIKED | {"digest": {**BASE_LIKED["digest"], "window": "1s"}}


def test_router_killed_three_times_puts_every_like_in_exactly_one_digest(topology: Settings) -> None:
    s = topology
    with Client(s) as client:
        client.publish(parse_type("*", LIKED))
        for r in range(RECIPIENTS):
            client.update_recipient(tenant="acme", recipient=f"u{r}", email=f"u{r}@example.com", wait=False)
    liked: list[UUID] = []

    def trickle() -> None:
        with Client(s) as client:
            for i in range(LIKES):
                data = {"by": f"fan{i}", "post": f"P{i % 7}"}
                liked.append(
                    client.send(
                        tenant="acme",
                        recipient=f"u{i % RECIPIENTS}",
                        type="post.liked",
                        data=data,
                        wait=False,
                    )
                )
                time.sleep(SPREAD_S / LIKES)
            client.flush()

    env = os.environ | {"TIDINGS_TOPIC_PREFIX": s.topic_prefix, "TIDINGS_PARTITIONS": str(s.partitions)}
    argv = [TIDINGS, "run", "router", "--instance", "0", "--idle-exit", "5"]
    producer = threading.Thread(target=trickle)
    producer.start()
    n = names(s)
    kill_mid_work(s, argv, env, [n.delivery("in_app"), n.delivery("in_app", urgent=True)], STEP)
    producer.join()
    final = subprocess.run(argv, env=env, timeout=300, capture_output=True, text=True)
    assert final.returncode == 0, final.stderr[-2000:]

    digests = [
        r for r in decoded(s, names(s).requested) if isinstance(r, NotificationRequested) and r.digest_of
    ]
    items = Counter(i for d in digests for i in d.digest_of or [])
    assert set(items) == set(liked) and max(items.values()) == 1, "each like in exactly one digest"
    for d in digests:
        data = json.loads(d.data_json)
        assert data["count"] == len(d.digest_of or []) == len(data["items"])
    assert len({d.notification_id for d in digests}) == len(digests)

    sent = commands(s)
    emails = Counter(c.notification_id for c in sent if c.channel == "email")
    assert emails == {d.notification_id: 1 for d in digests}, "one email per digest, no other email"
    inbox = Counter(c.delivery_id for c in sent if c.channel == "in_app")
    assert len(inbox) == LIKES and set(inbox.values()) == {1}
    assert {d.recipient_id for d in digests} == {f"u{r}" for r in range(RECIPIENTS)}
