"""The timers benchmark runs and reports what it measured (small, so it stays a check, not a measurement)."""

import json

import pytest

from benchmarks import timers


def test_the_timers_benchmark_prints_one_json_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert timers.main(["--timers", "300", "--due", "10", "--runs", "1", "--json"]) == 0
    [line] = capsys.readouterr().out.splitlines()
    result = json.loads(line)
    assert result["benchmark"] == "timers" and result["pending_timers"] == 300
    assert {"punctuation_nothing_due_ms", "punctuation_10_due_ms", "full_scan_ms"} <= result.keys()
