"""What a provider's later report implies for a delivery's status."""

import uuid
from datetime import UTC, datetime

import pytest

from gateways.outputs import outcome, reported_outcome
from tidings.codec import default_codec
from tidings.events import DeliveryCommand, DeliveryOutcome, ProviderFeedback, RenderedContent
from tidings.topics import Names
from tidings.vocabulary import INT32_MAX

DELIVERY, NOTIFICATION = uuid.uuid4(), uuid.uuid4()
AT = datetime(2026, 11, 25, 17, 0, tzinfo=UTC)


def report(kind: str, **changes: object) -> ProviderFeedback:
    fields: dict[str, object] = {
        "tenant_id": "acme",
        "kind": kind,
        "channel": "email",
        "address": "a@example.com",
        "recipient_id": "ada",
        "delivery_id": DELIVERY,
        "notification_id": NOTIFICATION,
        "provider": "ses",
        "provider_timestamp": AT,
        "detail": "250 OK",
    }
    return ProviderFeedback(**(fields | changes))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kind", "status", "reason"),
    [("delivered", "DELIVERED", "delivered"), ("hard_bounce", "FAILED", "bounced")],
)
def test_delivered_and_hard_bounces_move_the_delivery(kind: str, status: str, reason: str) -> None:
    outcome = reported_outcome(report(kind))
    assert outcome is not None
    assert (outcome.status, outcome.reason, outcome.delivery_id, outcome.notification_id) == (
        status,
        reason,
        DELIVERY,
        NOTIFICATION,
    )
    assert (outcome.occurred_at, outcome.provider, outcome.channel, outcome.recipient_id) == (
        AT,
        "ses",
        "email",
        "ada",
    )
    again = reported_outcome(report(kind, event_id=uuid.uuid4(), detail="retried webhook"))
    assert again is not None and again.event_id == outcome.event_id


@pytest.mark.parametrize("kind", ["soft_bounce", "complaint", "unsubscribe", "sms_stop"])
def test_reports_that_imply_no_status_yield_nothing(kind: str) -> None:
    assert reported_outcome(report(kind)) is None


def test_a_report_without_our_ids_yields_nothing() -> None:
    assert reported_outcome(report("delivered", delivery_id=None)) is None
    assert reported_outcome(report("hard_bounce", notification_id=None)) is None


def test_the_outcome_of_a_command_at_the_last_attempt_number_is_valid() -> None:
    """Outcomes count attempts from 1: a command of attempt INT32_MAX was sent, and its outcome then
    failed validation at every start of the gateway."""
    command = DeliveryCommand(
        tenant_id="acme",
        delivery_id=DELIVERY,
        notification_id=NOTIFICATION,
        recipient_id="ada",
        notification_type="order.shipped",
        channel="email",
        priority="normal",
        address="a@example.com",
        content=RenderedContent(subject="s", body="b"),
        attempt=INT32_MAX,
    )
    for status, reason in (("SENT", None), ("FAILED", "bounced")):
        out = outcome(Names(), command, status, reason)  # type: ignore[arg-type]
        decoded = default_codec().decode(out.value)
        assert isinstance(decoded, DeliveryOutcome) and decoded.attempt == INT32_MAX
