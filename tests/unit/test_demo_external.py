"""`tidings demo` on services it did not start only when told: it would publish example types, migrate
the database and join the live consumer groups."""

import os
import subprocess
import sys
from pathlib import Path

from tests.ports import free_port

TIDINGS = str(Path(sys.executable).with_name("tidings"))


def test_the_demo_refuses_services_named_by_the_environment(tmp_path: Path) -> None:
    env = os.environ | {
        "TIDINGS_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}",
        "TIDINGS_DEVSTACK_DIR": str(tmp_path / "stack"),
        "COLUMNS": "300",
    }
    result = subprocess.run([TIDINGS, "demo"], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "refused: TIDINGS_KAFKA_BOOTSTRAP name services" in " ".join(result.stderr.split())
    assert "--external" in result.stderr
    assert not (tmp_path / "stack").exists()
