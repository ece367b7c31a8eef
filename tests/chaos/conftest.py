from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Mapping, Sequence

from tests.integration.conftest import database, group_id, namespace, stack, topic_factory, topology
from tidings.config import Settings
from tidings.kafka.consumer import TopicFollower

__all__ = [
    "Committed",
    "database",
    "group_id",
    "kill_mid_work",
    "namespace",
    "stack",
    "topic_factory",
    "topology",
]


class Committed:
    """Counts the records committed to some topics so far (read_committed), so that a test kills a
    process after it has visibly done part of its work: a kill at a fixed time could land before a
    slow start had handled anything, and the test then passed without testing a kill mid-work."""

    def __init__(self, s: Settings, topics: Sequence[str]) -> None:
        self.followers = [TopicFollower(s, t) for t in topics]
        self.seen = 0

    def count(self) -> int:
        self.seen += sum(len(f.poll(500, 0.05)) for f in self.followers)
        return self.seen

    def beyond(self, at_least: int, timeout: float = 120.0) -> int:
        """The count once it reaches `at_least`, or what it is when `timeout` seconds have passed."""
        deadline = time.monotonic() + timeout
        while self.count() < at_least and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.seen

    def close(self) -> None:
        for f in self.followers:
            f.close()


def kill_mid_work(
    s: Settings, argv: Sequence[str], env: Mapping[str, str], outputs: Sequence[str], step: int
) -> None:
    """Starts `argv` three times, each time SIGKILLing it once it has committed at least `step` more
    records to `outputs` (asserting that it did, within two minutes)."""
    committed = Committed(s, outputs)
    try:
        for _ in range(3):
            before = committed.count()
            proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            after = committed.beyond(before + step)
            assert proc.poll() is None, f"{argv[1:3]} exited before the kill"
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            assert after >= before + step, f"{argv[1:3]} committed {after - before} records before the kill"
    finally:
        committed.close()
