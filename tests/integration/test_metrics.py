"""A `tidings run` process with TIDINGS_METRICS_PORT serves its counters and consumer lag while it runs."""

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.integration.test_router import publish_catalog
from tests.ports import free_port
from tidings.client import Client
from tidings.config import Settings

TIDINGS = str(Path(sys.executable).with_name("tidings"))


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return str(r.read().decode())


def value(text: str, name: str) -> float:
    found = re.search(rf"^{name}{{[^}}]*}} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else -1.0


def test_a_running_router_serves_its_counters_and_lag(topology: Settings, tmp_path: Path) -> None:
    s = topology
    publish_catalog(s)
    with Client(s) as client:
        client.update_recipient(tenant="acme", recipient="ada", email="ada@example.com", wait=False)
        for i in range(40):
            data = {"order": f"A-{i}", "carrier": "DHL"}
            client.send(tenant="acme", recipient="ada", type="order.shipped", data=data, wait=False)
        for _ in range(5):
            client.send(tenant="acme", recipient="ada", type="password.reset", data={"link": "x"}, wait=False)
    port = free_port()
    env = os.environ | {
        "TIDINGS_KAFKA_BOOTSTRAP": s.kafka_bootstrap,
        "TIDINGS_TOPIC_PREFIX": s.topic_prefix,
        "TIDINGS_PARTITIONS": str(s.partitions),
        "TIDINGS_METRICS_PORT": str(port),
    }
    log = tmp_path / "router.log"
    requested = re.escape(s.topic_prefix + "notifications.requested")
    with log.open("wb") as out:
        proc = subprocess.Popen([TIDINGS, "run", "router", "--instance", "m0"], env=env, stderr=out)
    try:
        deadline, text, lags = time.monotonic() + 90, "", []
        while value(text, "tidings_records_committed_total") < 46 or not lags or any(float(v) for v in lags):
            assert proc.poll() is None, log.read_text()[-2000:]
            assert time.monotonic() < deadline, text[-2000:]
            time.sleep(0.5)
            try:
                text = scrape(port)
            except OSError:
                continue
            lags = re.findall(rf'tidings_consumer_lag{{[^}}]*topic="{requested}"}} (\S+)', text)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    assert 'component="router",instance="m0"' in text
    assert value(text, "tidings_records_committed_total") == 46
    assert value(text, "tidings_dead_letters_total") == 0
    assert value(text, "tidings_requests_throttled_total") == 2
    assert lags == ["0.0"]  # one recipient: one partition consumed, read to its end
