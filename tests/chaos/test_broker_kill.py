"""The broker itself is SIGKILLed twice while the router works, and restarted on the same data.

A private single-node broker (own ports, own data directory) is used, so the shared one the rest of the
suite runs on is never disturbed. The router keeps running through both outages; it is restarted only if
it exits (as a supervisor would), and the test reports how often that happened. Reading the command
topics read_committed afterwards must show exactly the planned commands: none missing, none doubled.
"""

import os
import random
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from processors.plan import Catalog
from tests.chaos.test_router_kill import (
    ROOT,
    TIDINGS,
    assert_exactly,
    committed_commands,
    expected_commands,
    lag,
    produce,
    profiles,
    requests,
)
from tidings.catalog import load
from tidings.client import Client
from tidings.config import Settings
from tidings.devstack import kafka
from tidings.devstack.common import pid_alive
from tidings.kafka import apply_topics
from tidings.topics import registry

pytestmark = pytest.mark.timeout(900)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivateBroker:
    def __init__(self, root: Path) -> None:
        self.root, self.port, self.controller = root, free_port(), free_port()
        self.settings = Settings(
            kafka_bootstrap=f"127.0.0.1:{self.port}", topic_prefix="bk.", partitions=3, retry_tiers="10s"
        )

    def start(self) -> None:
        kafka.up(self.settings, root=self.root, port=self.port, controller=self.controller)

    def kill(self) -> None:
        pid = pid_alive(self.root / "pid")
        assert pid is not None, "the private broker is not running"
        os.killpg(pid, signal.SIGKILL)
        while pid_alive(self.root / "pid"):
            time.sleep(0.1)

    def stop(self) -> None:
        kafka.down(self.root)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[PrivateBroker]:
    b = PrivateBroker(tmp_path / "kafka")
    b.start()
    try:
        yield b
    finally:
        b.stop()


class Supervised:
    """`tidings run router`, started again whenever it exits, as a process supervisor would."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env, self.restarts, self.log = env, 0, log
        self.proc = self._start()

    def _start(self) -> subprocess.Popen[bytes]:
        with self.log.open("ab") as out:
            return subprocess.Popen(
                [TIDINGS, "run", "router", "--instance", "0"],
                env=self.env,
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def recoveries(self) -> int:
        return self.log.read_text(errors="replace").count("Kafka client unusable")

    def check(self) -> None:
        if self.proc.poll() is not None:
            self.restarts += 1
            self.proc = self._start()

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def wait_for_lag(s: Settings, router: Supervised, below: int, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while lag(s) > below:
        router.check()
        assert time.monotonic() < deadline, f"router lag stayed above {below}"
        time.sleep(0.2)


def test_broker_sigkill_twice_loses_and_duplicates_no_command(broker: PrivateBroker, tmp_path: Path) -> None:
    s, rng = broker.settings, random.Random(11)
    apply_topics(s, registry(s))
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")} | {
        "TIDINGS_KAFKA_BOOTSTRAP": s.kafka_bootstrap,
        "TIDINGS_TOPIC_PREFIX": s.topic_prefix,
        "TIDINGS_PARTITIONS": str(s.partitions),
    }
    catalog_types = load(ROOT / "catalog")
    catalog = Catalog()
    for t in catalog_types:
        catalog.apply(t)
    first = profiles(rng, 100)
    batch_a, batch_b = requests(rng, 3000, 100), requests(rng, 3000, 100)

    with Client(s) as client:
        produce(s, [*catalog_types, *first, *batch_a], client)
    router = Supervised(env, tmp_path / "router.log")
    try:
        wait_for_lag(s, router, below=2000)
        broker.kill()  # 1: mid-stream, transactions open
        time.sleep(2)
        broker.start()
        router.check()
        with Client(s) as client:
            produce(s, batch_b, client)
        wait_for_lag(s, router, below=2500)
        broker.kill()  # 2: mid-stream again
        time.sleep(2)
        broker.start()
        wait_for_lag(s, router, below=0)
        router.check()
    finally:
        router.stop()

    expected = expected_commands(catalog, (first, batch_a, batch_b))
    found = committed_commands(s)
    print(
        f"broker killed twice: {len(found)} commands, router restarts {router.restarts}, "
        f"in-process client replacements {router.recoveries()}"
    )
    assert_exactly(expected, found, phase_a={r.notification_id for r in batch_a})
    assert len(expected) > 5000
    assert router.restarts == 0, "the router exited during a broker outage instead of riding it out"
