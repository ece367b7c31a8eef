"""Three broadcasts to 64,000 members in all; the audience processor is SIGKILLed three times while it
expands them, after 1.0, 0.6 and 0.3 s of work.

Reading notifications.requested read_committed afterwards must show exactly one request per member of
each broadcast as the audience stood at the broadcast's place in the topic: nobody missing, nobody
twice, nobody who joined later or left before. At least two of the kills must land before the
expansion is complete (how far the last one gets depends on the machine), or the test proves nothing.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from uuid import UUID

import pytest

from tests.integration.conftest import read_all
from tidings.catalog import load
from tidings.client import Client
from tidings.codec import default_codec
from tidings.config import Settings
from tidings.events import NotificationRequested
from tidings.topics import names

ROOT = Path(__file__).resolve().parents[2]
TIDINGS = str(Path(sys.executable).with_name("tidings"))
pytestmark = pytest.mark.timeout(600)


def pump(proc: subprocess.Popen[str], lines: queue.Queue[str]) -> None:
    for line in proc.stderr or ():
        lines.put(line)


def members(prefix: str, count: int) -> list[str]:
    return [f"{prefix}-{i}" for i in range(count)]


def test_audience_killed_three_times_makes_each_member_request_once(topology: Settings) -> None:
    s = topology
    expected: Counter[tuple[UUID, str]] = Counter()
    with Client(s, source="test") as client:
        for t in load(ROOT / "catalog"):
            client.publish(t, wait=False)
        big = members("fan", 30_000)
        client.add_members(tenant="acme", audience="fans", recipients=big + members("gone", 500), wait=False)
        client.remove_members(tenant="acme", audience="fans", recipients=members("gone", 500), wait=False)
        small = members("staff", 3_000)
        client.add_members(tenant="acme", audience="staff", recipients=small, wait=False)
        first = client.broadcast(tenant="acme", audience="fans", type="order.shipped", wait=False)
        second = client.broadcast(tenant="acme", audience="staff", type="order.shipped", wait=False)
        late = members("late", 1_000)
        client.add_members(tenant="acme", audience="fans", recipients=late, wait=False)
        third = client.broadcast(tenant="acme", audience="fans", type="order.shipped", wait=False)
        client.add_members(tenant="acme", audience="fans", recipients=members("later", 100))
    expected.update((first, m) for m in big)
    expected.update((second, m) for m in small)
    expected.update((third, m) for m in big + late)

    env = os.environ | {"TIDINGS_TOPIC_PREFIX": s.topic_prefix, "TIDINGS_PARTITIONS": str(s.partitions)}
    argv = [TIDINGS, "run", "audience", "--instance", "0", "--idle-exit", "3"]
    progress = []
    for delay in (1.0, 0.6, 0.3):
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        lines: queue.Queue[str] = queue.Queue()
        reader = threading.Thread(target=pump, args=(proc, lines))
        reader.start()
        restores = 3 * s.partitions
        while restores:
            restores -= "restored" in lines.get(timeout=60)
        time.sleep(delay)
        assert proc.poll() is None, "the audience processor exited before the kill"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        reader.join()
        if proc.stderr:
            proc.stderr.close()
        progress.append(len(read_all(s, names(s).requested)))
    final = subprocess.run(argv, env=env, timeout=300, capture_output=True, text=True)
    assert final.returncode == 0, final.stderr[-2000:]

    made: Counter[tuple[UUID, str]] = Counter()
    for record in read_all(s, names(s).requested):
        event = default_codec().decode(record.value or b"")
        assert isinstance(event, NotificationRequested) and event.broadcast_id is not None
        assert record.key == f"acme/{event.recipient_id}".encode()
        made[(event.broadcast_id, event.recipient_id)] += 1
    missing = set(expected) - set(made)
    extra = set(made) - set(expected)
    doubled = [k for k, n in made.items() if n > 1]
    print(f"committed after each kill: {progress}; missing {len(missing)}, extra {len(extra)}")
    interrupted = sum(p < sum(expected.values()) for p in progress)
    assert interrupted >= 2, "fewer than two kills came while the expansion was under way"
    assert (len(missing), len(extra), len(doubled)) == (0, 0, 0)
