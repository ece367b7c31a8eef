import socket
import subprocess
import sys
import threading

import pytest
from confluent_kafka import KafkaError, KafkaException

from tidings.kafka import default_slot, guard
from tidings.kafka.config import is_fatal


def test_a_message_reporting_FATAL_counts_as_fatal_though_not_flagged() -> None:
    assert is_fatal(KafkaError(KafkaError._FATAL, "static consumer fenced"))
    assert is_fatal(KafkaError(KafkaError._TRANSPORT, "x", fatal=True))
    assert not is_fatal(KafkaError(KafkaError._TRANSPORT, "broker down", retriable=True))


def test_within_returns_the_result_or_raises_the_calls_own_error() -> None:
    assert guard.within(5, lambda: 42, "answer") == 42
    with pytest.raises(ZeroDivisionError):
        guard.within(5, lambda: 1 // 0, "divide")


def test_a_call_that_outlives_its_deadline_becomes_a_fatal_kafka_error() -> None:
    release = threading.Event()
    with pytest.raises(KafkaException) as caught:
        guard.within(0.2, release.wait, "send_offsets_to_transaction")
    release.set()
    assert is_fatal(caught.value.args[0])
    assert "send_offsets_to_transaction did not return" in caught.value.args[0].str()


def test_processes_started_without_an_instance_on_one_host_take_slots_of_their_own() -> None:
    """Two routers on one machine with the host alone as their slot fenced each other until both gave up."""
    code = "from tidings.kafka import default_slot; print(default_slot())"
    slots = {
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        for _ in "ab"
    }
    assert len(slots | {default_slot() + "\n"}) == 3
    assert all(s.startswith(socket.gethostname() + "-") for s in slots)
