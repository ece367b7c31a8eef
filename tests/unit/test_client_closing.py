"""A send that fails inside `with Client()` keeps its error, and the id to retry with, when closing
fails too (no broker: a port nobody listens on)."""

import pytest

from tests.ports import free_port
from tidings.client import Client
from tidings.config import Settings
from tidings.errors import KafkaUnavailable


def test_a_failed_send_keeps_the_id_to_retry_with_when_closing_fails_too() -> None:
    settings = Settings(kafka_bootstrap=f"127.0.0.1:{free_port()}")
    with pytest.raises(KafkaUnavailable) as raised, Client(settings, source="test", timeout=0.5) as client:
        client.send(tenant="acme", recipient="u1", type="order.shipped", data={"order": 1})
    assert raised.value.notification_id is not None
    assert "not acknowledged" in str(raised.value)
    assert any("closing the client failed too" in note for note in raised.value.__notes__)


def test_closing_without_a_failure_still_reports_records_not_acknowledged() -> None:
    settings = Settings(kafka_bootstrap=f"127.0.0.1:{free_port()}")
    with (
        pytest.raises(KafkaUnavailable, match="1 records not acknowledged"),
        Client(settings, source="test", timeout=0.5) as client,
    ):
        client.send(tenant="acme", recipient="u1", type="order.shipped", data={"order": 1}, wait=False)
