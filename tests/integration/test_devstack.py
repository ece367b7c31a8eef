"""A second, private stack on other ports: up, idempotent up, status, down."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.ports import free_port
from tidings.config import Settings
from tidings.devstack import kafka
from tidings.devstack.common import pid_alive
from tidings.errors import DevStackError

TIDINGS = str(Path(sys.executable).with_name("tidings"))


@pytest.mark.timeout(300)
def test_up_is_idempotent_and_down_stops_all_three(stack: Settings, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")}
    env |= {
        "TIDINGS_DEVSTACK_DIR": str(tmp_path / "stack"),
        "TIDINGS_DEV_KAFKA_PORT": "29092",
        "TIDINGS_DEV_POSTGRES_PORT": "25432",
        "TIDINGS_DEV_REDIS_PORT": "26379",
    }

    def tidings(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([TIDINGS, *args], capture_output=True, text=True, timeout=240, env=env)

    try:
        first = tidings("dev", "up")
        assert first.returncode == 0, first.stderr
        assert first.stderr.count("started") == 3
        again = tidings("dev", "up")
        assert again.returncode == 0 and again.stderr.count("already running") == 3, again.stderr
        status = tidings("dev", "status")
        assert status.returncode == 0 and "127.0.0.1:29092" in status.stdout
        env_out = tidings("dev", "env").stdout
        assert "127.0.0.1:29092" in env_out and ":25432/" in env_out and ":26379/" in env_out
    finally:
        down = tidings("dev", "down")
    assert down.returncode == 0, down.stderr
    assert down.stderr.count("stopped") == 3, down.stderr
    after = tidings("dev", "status")
    assert after.returncode == 3 and after.stdout.count("stopped") == 3


def test_external_services_are_used_not_started(stack: Settings, tmp_path: Path) -> None:
    env = os.environ | {
        "TIDINGS_DEVSTACK_DIR": str(tmp_path / "unused"),
        "TIDINGS_KAFKA_BOOTSTRAP": stack.kafka_bootstrap,
        "TIDINGS_POSTGRES_DSN": stack.postgres_dsn,
        "TIDINGS_REDIS_URL": stack.redis_url,
    }
    result = subprocess.run([TIDINGS, "dev", "up"], capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 0 and result.stderr.count("external, not started") == 3
    status = subprocess.run([TIDINGS, "dev", "status"], capture_output=True, text=True, timeout=60, env=env)
    assert status.returncode == 0 and status.stdout.count("external") == 3


def _processes_under(root: Path) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            if str(root).encode() in cmdline:
                found.append(int(proc.name))
    return found


@pytest.mark.timeout(120)
def test_a_broker_missing_its_readiness_deadline_is_stopped_not_left_running(
    stack: Settings, tmp_path: Path
) -> None:
    """A broker that is not ready in time was left running with its pid file: a slow start in a test
    fixture kept a 1 GB JVM for the rest of the session, and the next `up` found a half-started one."""
    root, port, controller = tmp_path / "kafka", free_port(), free_port()
    slow = Settings(kafka_bootstrap=f"127.0.0.1:{port}")
    with pytest.raises(DevStackError, match="Kafka"):
        kafka.up(slow, timeout=0.5, root=root, port=port, controller=controller)
    assert pid_alive(root / "pid") is None and not (root / "pid").exists()
    assert _processes_under(root) == []
