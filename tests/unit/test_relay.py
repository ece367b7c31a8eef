"""The relay's pure part: which outcomes go to which destinations, as what commands."""

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from processors.relay import Destinations, disabled, relay, relay_engagement
from tidings.events import (
    RELAY_RECIPIENT,
    DeliveryOutcome,
    DestinationRemoved,
    DestinationUpdated,
    InboxItemRead,
    InboxItemSeen,
    NotificationClicked,
    ProviderFeedback,
)

NOW = datetime(2026, 6, 15, 12, 0, tzinfo=UTC)
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def destination(name: str, tenant: str = "acme", **changes: Any) -> DestinationUpdated:
    fields = {"tenant_id": tenant, "destination_id": name, "url": f"https://hooks.example.com/{name}"}
    return DestinationUpdated(**(fields | {"secret": SECRET} | changes))


def outcome(status: str = "SENT", **changes: Any) -> DeliveryOutcome:
    fields: dict[str, Any] = {
        "tenant_id": "acme",
        "notification_id": uuid.uuid4(),
        "delivery_id": uuid.uuid4(),
        "recipient_id": "ada",
        "channel": "email",
        "status": status,
        "provider": "smtp",
        "occurred_at": NOW - timedelta(seconds=1),
    }
    return DeliveryOutcome(**(fields | changes))


def table(*events: DestinationUpdated | DestinationRemoved) -> Destinations:
    found = Destinations()
    for e in events:
        found.apply(e)
    return found


def test_an_outcome_goes_to_each_enabled_destination_of_its_tenant_that_wants_its_status() -> None:
    destinations = table(
        destination("all"),
        destination("failures", statuses=["FAILED"]),
        destination("off", enabled=False),
        destination("other", tenant="globex"),
    )
    sent = relay(outcome("SENT"), destinations, NOW)
    assert [c.recipient_id for c in sent] == [RELAY_RECIPIENT + "all"]
    failed = relay(outcome("FAILED"), destinations, NOW)
    assert sorted(c.address for c in failed) == [
        "https://hooks.example.com/all",
        "https://hooks.example.com/failures",
    ]


def test_a_destination_id_whose_relay_recipient_is_no_identifier_is_refused() -> None:
    """At 237 characters the relay's recipient id (`tidings:destination:<id>`) passes 256: the
    destination was taken, and every outcome of the tenant was then dead-lettered."""
    longest = destination("d" * 236)
    [command] = relay(outcome(), table(longest), NOW)
    assert command.recipient_id == RELAY_RECIPIENT + "d" * 236
    with pytest.raises(ValidationError):
        destination("d" * 237)


def test_the_command_is_a_signed_webhook_of_the_outcome_with_derived_ids() -> None:
    o = outcome("DELIVERED", reason=None, detail="250 ok")
    [c] = relay(o, table(destination("all")), NOW)
    [again] = relay(o, table(destination("all")), NOW + timedelta(seconds=5))
    assert (c.delivery_id, c.notification_id) == (again.delivery_id, again.notification_id)
    assert (c.channel, c.address_params, c.tenant_id) == ("webhook", {"secret": SECRET}, "acme")
    assert c.correlation_id == str(o.notification_id) and c.expires_at == o.occurred_at + timedelta(days=1)
    body = json.loads(c.content.data_json or "")
    assert body["type"] == "delivery.delivered"
    assert body["data"]["notification_id"] == str(o.notification_id) and body["data"]["detail"] == "250 ok"
    assert "address" not in body["data"] and "ada@example.com" not in (c.content.data_json or "")
    other = relay(outcome("DELIVERED"), table(destination("all")), NOW)
    assert other[0].delivery_id != c.delivery_id


def test_outcomes_of_the_relays_own_deliveries_and_stale_ones_are_not_relayed() -> None:
    destinations = table(destination("all"))
    assert relay(outcome(recipient_id=RELAY_RECIPIENT + "all", channel="webhook"), destinations, NOW) == []
    assert relay(outcome(occurred_at=NOW - timedelta(days=2)), destinations, NOW) == []
    assert len(relay(outcome(occurred_at=NOW - timedelta(hours=23)), destinations, NOW)) == 1


def test_the_table_keeps_the_latest_version_and_forgets_removed_destinations() -> None:
    destinations = table(
        destination("a", statuses=["FAILED"]),
        destination("b"),
        destination("a"),
        DestinationRemoved(tenant_id="acme", destination_id="b"),
    )
    assert len(destinations) == 1
    assert [c.recipient_id for c in relay(outcome("SENT"), destinations, NOW)] == [RELAY_RECIPIENT + "a"]


def test_a_destination_the_gateway_gave_up_on_is_disabled_once_and_only_that_one() -> None:
    destinations = table(destination("ops"), destination("off", enabled=False))

    def given_up(name: str, **changes: Any) -> ProviderFeedback:
        fields: dict[str, Any] = {
            "tenant_id": "acme",
            "kind": "endpoint_disabled",
            "channel": "webhook",
            "address": f"https://hooks.example.com/{name}",
            "recipient_id": RELAY_RECIPIENT + name,
        }
        return ProviderFeedback(**(fields | changes))

    feedback = given_up("ops")
    off = disabled(feedback, destinations, NOW)
    assert off is not None and not off.enabled and off.key == "acme/ops" and off.secret == SECRET
    assert off.event_id == disabled(feedback, destinations, NOW + timedelta(seconds=1)).event_id  # type: ignore[union-attr]
    assert disabled(given_up("off"), destinations, NOW) is None
    assert disabled(given_up("ops", address="https://elsewhere.example.com/"), destinations, NOW) is None
    assert disabled(given_up("ops", recipient_id="ops"), destinations, NOW) is None
    assert disabled(given_up("ops", kind="hard_bounce"), destinations, NOW) is None
    assert disabled(given_up("ops", tenant_id="globex"), destinations, NOW) is None


def test_a_give_up_older_than_the_destinations_re_enabling_leaves_it_on() -> None:
    """The relay, behind on feedback, read a 10:02 give-up after the 10:30 re-enable and turned the
    destination off again; nothing told its owner."""
    at = NOW - timedelta(minutes=30)
    destinations = table(destination("ops", occurred_at=at))
    stale = ProviderFeedback(
        tenant_id="acme",
        kind="endpoint_disabled",
        channel="webhook",
        address="https://hooks.example.com/ops",
        recipient_id=RELAY_RECIPIENT + "ops",
        occurred_at=at - timedelta(minutes=28),
    )
    assert disabled(stale, destinations, NOW) is None
    assert disabled(stale.model_copy(update={"occurred_at": at + timedelta(minutes=1)}), destinations, NOW)


def test_engagement_goes_only_to_destinations_that_asked_for_its_kind() -> None:
    destinations = table(
        destination("outcomes"),
        destination("reads", engagements=["read", "clicked"]),
        destination("off", engagements=["read"], enabled=False),
        destination("other", tenant="globex", engagements=["read"]),
    )
    nid, did = uuid.uuid4(), uuid.uuid4()
    ids = {"tenant_id": "acme", "recipient_id": "ada", "notification_id": nid, "delivery_id": did}
    read = InboxItemRead(**ids, occurred_at=NOW - timedelta(seconds=1))
    [c] = relay_engagement(read, destinations, NOW)
    assert c.recipient_id == RELAY_RECIPIENT + "reads" and c.correlation_id == str(nid)
    body = json.loads(c.content.data_json or "")
    assert body["type"] == "engagement.read" and body["data"]["kind"] == "read"
    assert body["data"]["notification_id"] == str(nid) and body["data"]["delivery_id"] == str(did)
    assert relay_engagement(read, destinations, NOW + timedelta(seconds=9)) == [
        c.model_copy(update={"occurred_at": NOW + timedelta(seconds=9)})
    ], "a replayed engagement yields the same delivery id"
    clicked = NotificationClicked(**ids, channel="email", url="https://shop.example.com/o/1")
    [k] = relay_engagement(clicked, destinations, NOW)
    assert json.loads(k.content.data_json or "")["data"]["url"] == "https://shop.example.com/o/1"
    assert relay_engagement(InboxItemSeen(**ids), destinations, NOW) == []
    stale = InboxItemRead(**ids, occurred_at=NOW - timedelta(days=2))
    assert relay_engagement(stale, destinations, NOW) == []


def test_a_provider_report_counts_its_age_from_when_it_reached_the_log() -> None:
    """A bounce the provider reports a day late carries the provider's time: counted from it, it was
    dropped (25 hours) or relayed to expire within the hour, sooner than the retry tiers."""
    late = outcome("FAILED", occurred_at=NOW - timedelta(hours=25))
    destinations = table(destination("all"))
    assert relay(late, destinations, NOW) == []
    [c] = relay(late, destinations, NOW, logged=NOW - timedelta(seconds=2))
    assert c.expires_at == NOW - timedelta(seconds=2) + timedelta(days=1)
    assert relay(late, destinations, NOW, logged=NOW - timedelta(hours=25)) == []
