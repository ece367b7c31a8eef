"""A template that builds a gigabyte string does not crash-loop the router: with TIDINGS_MEMORY_LIMIT_MB
the allocation fails inside the render, the request is REJECTED and dead-lettered, and the next request
is routed."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.integration.test_cli import TIDINGS
from tests.integration.test_router import commands, decoded
from tidings.catalog import parse_type
from tidings.client import Client
from tidings.config import Settings
from tidings.events import DeliveryOutcome
from tidings.topics import names

HUGE = "{{ ('%99999d' * 10000) % ((1,) * 10000) }}"
"""About a gigabyte, in steps the sandbox's one-step bounds do not see."""


@pytest.mark.timeout(300)
def test_a_template_that_exhausts_memory_is_rejected_and_the_router_goes_on(topology: Settings) -> None:
    s = topology
    templates = {"in_app": {"default": {"title": "Hi", "body": "{{ text }}"}}}
    with Client(s) as client:
        client.publish(
            parse_type("*", {"key": "note", "category": "c", "channels": ["in_app"], "templates": templates})
        )
        hog = {"in_app": {"default": {"title": "Hi", "body": HUGE}}}
        client.publish(
            parse_type("*", {"key": "hog", "category": "c", "channels": ["in_app"], "templates": hog})
        )
        bad = client.send(tenant="acme", recipient="ada", type="hog", data={})
        good = client.send(tenant="acme", recipient="ada", type="note", data={"text": "after the hog"})
    env = os.environ | {
        "TIDINGS_TOPIC_PREFIX": s.topic_prefix,
        "TIDINGS_PARTITIONS": str(s.partitions),
        "TIDINGS_MEMORY_LIMIT_MB": "600",
    }
    run = subprocess.run(
        [TIDINGS, "run", "router", "--idle-exit", "5"], env=env, capture_output=True, text=True, timeout=240
    )
    assert run.returncode == 0, run.stderr[-2000:]
    outcomes = [o for o in decoded(s, names(s).outcomes) if isinstance(o, DeliveryOutcome)]
    assert {(o.notification_id, o.status) for o in outcomes} == {(bad, "REJECTED"), (good, "QUEUED")}
    rejected = next(o for o in outcomes if o.status == "REJECTED")
    assert "MemoryError" in (rejected.detail or ""), rejected
    assert [c.notification_id for c in commands(s)] == [good]
    assert len(decoded(s, names(s).dlq)) == 1
