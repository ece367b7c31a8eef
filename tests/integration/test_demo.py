import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tidings.config import Settings

TIDINGS = str(Path(sys.executable).with_name("tidings"))


@pytest.mark.timeout(300)
def test_demo_runs_the_pipeline_end_to_end(stack: Settings) -> None:
    env = os.environ | {"TIDINGS_TOPIC_PREFIX": f"demo{uuid.uuid4().hex[:6]}.", "COLUMNS": "200"}
    result = subprocess.run([TIDINGS, "demo"], env=env, capture_output=True, text=True, timeout=280)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "5 requests planned: 10 delivery commands, 13 outcomes" in result.stderr
    assert "Ihre Bestellung A-1001 ist unterwegs" in result.stdout
    assert "5 notifications in PostgreSQL" in result.stderr
    assert "opted_out" in result.stdout and "dead letters" in result.stderr
