"""Record views for the operator CLI: decoded, and without the secrets the records carry."""

import json
import uuid

from tidings.codec import default_codec
from tidings.events import DeliveryCommand, DestinationUpdated, RenderedContent
from tidings.kafka import Incoming
from tidings.views import event_view, record_view


def view_of(event: DeliveryCommand | DestinationUpdated) -> dict[str, object]:
    value = default_codec().encode(event)
    return record_view(Incoming("t", 0, 7, event.key.encode(), value))


def test_signing_secrets_and_push_auth_keys_are_not_printed() -> None:
    secret = "whsec_" + "A" * 32
    command = DeliveryCommand(
        tenant_id="acme",
        delivery_id=uuid.uuid4(),
        notification_id=uuid.uuid4(),
        recipient_id="ada",
        notification_type="invoice.due",
        channel="webhook",
        priority="normal",
        address="https://hooks.example/x",
        address_params={"secret": secret, "key_auth": "c2VjcmV0", "platform": "webpush"},
        content=RenderedContent(data_json="{}"),
    )
    destination = DestinationUpdated(
        tenant_id="acme", destination_id="d", url="https://hooks.example/d", secret=secret
    )
    for event in (command, destination):
        record = Incoming("t", 0, 7, event.key.encode(), default_codec().encode(event))
        printed = json.dumps(view_of(event)) + json.dumps(event_view(record, event))
        assert secret not in printed and "c2VjcmV0" not in printed, printed
        assert "[redacted]" in printed
    value = view_of(command)["value"]
    assert isinstance(value, dict) and value["address_params"]["platform"] == "webpush"
