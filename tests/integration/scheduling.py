"""A scheduler running in a thread with a clock the test moves forward, so timers minutes away come due
at once after the test has set the stage."""

from __future__ import annotations

import threading
import time

from processors.scheduler import Scheduler
from tidings.config import Settings


class SkewedScheduler:
    def __init__(self, s: Settings, idle_exit_after: float = 3.0) -> None:
        self.skew = 0.0
        self.scheduler = Scheduler(
            s, instance="0", group_id=f"scheduler-{s.topic_prefix}", clock=lambda: time.time() + self.skew
        )
        self.thread = threading.Thread(target=self.scheduler.run, kwargs={"idle_exit_after": idle_exit_after})
        self.thread.start()
        self.deadline = time.monotonic() + 60

    def wait_committed(self, records: int) -> None:
        """Until the scheduler committed this many input records (or a minute passed)."""
        while self.scheduler.loop.committed_records < records and time.monotonic() < self.deadline:
            time.sleep(0.05)

    def advance(self, seconds: float) -> None:
        self.skew += seconds

    def join(self) -> Scheduler:
        self.thread.join(timeout=120)
        assert not self.thread.is_alive()
        return self.scheduler
