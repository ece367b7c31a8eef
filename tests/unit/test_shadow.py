"""Shadow evaluation: each request is planned with the catalog and recipient state of its own time, and
only requests the candidate catalog changes are reported, channel by channel."""

from datetime import UTC, datetime, timedelta
from typing import Any

from processors.plan import Catalog
from processors.recipients import RecipientState, WebhookEndpoint
from tests.unit.test_plan import TEMPLATES, catalog, request
from tidings.catalog import parse_type
from tidings.events import NotificationTypePublished, PreferencesUpdated, RecipientUpdated
from tidings.ids import new_notification_id
from tidings.kafka import Incoming
from tidings.shadow import Shadow, decisions, merged

T0 = datetime(2026, 6, 15, 12, 0, tzinfo=UTC)


def published(version: int, **changes: Any) -> NotificationTypePublished:
    raw = {
        "key": "order.shipped",
        "category": "orders",
        "channels": ["email", "in_app"],
        "templates": TEMPLATES,
    } | changes
    return parse_type("*", raw).model_copy(update={"version": version, "occurred_at": T0})


def history(shadow: Shadow, *events: Any) -> list[Any]:
    """Observe (event, minutes after T0) pairs, comparing every request; the changes found."""
    found = []
    for event, minutes in events:
        change = shadow.observe(event, T0 + timedelta(minutes=minutes), compare=True)
        if change is not None:
            found.append(change)
    return found


def test_decisions_are_the_plans_outcomes_and_a_rejection_is_one_decision() -> None:
    state = RecipientState(email="u1@example.com")
    assert decisions(request(), state, catalog(channels=["email", "sms"]), T0) == (
        ("email", "QUEUED", ""),
        ("sms", "SKIPPED", "no_address"),
    )
    broken = catalog(
        channels=["email"], templates={"email": {"default": {"subject": "{{ order.no.such }}", "body": "b"}}}
    )
    [(channel, status, reason)] = decisions(request(), state, broken, T0)
    assert (channel, status) == ("*", "REJECTED") and "template order.shipped v1 email" in reason


def test_a_candidate_that_drops_a_channel_reports_the_requests_it_would_change() -> None:
    shadow = Shadow([published(3, channels=["in_app"])])
    joined = RecipientUpdated(tenant_id="acme", recipient_id="u1", email="u1@example.com", occurred_at=T0)
    changes = history(
        shadow,
        (published(1), 0),
        (joined, 1),
        (request(), 2),
        (request(recipient_id="u2"), 3),
    )
    assert shadow.compared == 2
    assert [c.transitions() for c in changes] == [
        [("email", "QUEUED", "nothing")],
        [("email", "SKIPPED no_address", "nothing")],
    ]
    assert shadow.summary == {
        ("order.shipped", "email", "QUEUED", "nothing"): 1,
        ("order.shipped", "email", "SKIPPED no_address", "nothing"): 1,
    }
    view = changes[0].view()
    assert view["changes"] == [{"channel": "email", "before": "QUEUED", "after": "nothing"}]
    assert "u1@example.com" not in str(view)


def test_each_request_sees_the_recorded_catalog_and_preferences_of_its_own_time() -> None:
    shadow = Shadow([published(3, channels=["in_app", "email"])])
    joined = RecipientUpdated(tenant_id="acme", recipient_id="u1", email="u1@example.com", occurred_at=T0)
    opted_out = PreferencesUpdated(
        tenant_id="acme",
        recipient_id="u1",
        rules=[{"scope": "category", "key": "orders", "channel": "email", "enabled": False}],
        occurred_at=T0,
    )
    first, second = request(notification_id=new_notification_id()), request()
    changes = history(
        shadow,
        (published(1), 0),
        (joined, 1),
        (first, 2),
        (opted_out, 3),
        (published(2, channels=["in_app"]), 4),
        (second, 5),
    )
    assert [c.request.notification_id for c in changes] == [second.notification_id]
    assert changes[0].before == (("in_app", "QUEUED", ""),)
    assert changes[0].transitions() == [("email", "nothing", "SKIPPED opted_out")]


def test_requests_outside_the_comparison_are_not_planned() -> None:
    shadow = Shadow([published(2, channels=["in_app"])])
    shadow.observe(published(1), T0, compare=False)
    assert shadow.observe(request(), T0, compare=False) is None
    assert shadow.compared == 0 and not shadow.summary


def record(topic: str, partition: int, offset: int, at: int) -> Incoming:
    return Incoming(topic, partition, offset, None, b"", [], at)


def test_records_interleave_as_the_router_aligns_them() -> None:
    rank = {"catalog": 0, "recipients": 1, "feedback": 2, "requested": 3}
    streams = {
        ("recipients", 0): [record("recipients", 0, 0, 20), record("recipients", 0, 1, 10)],
        ("feedback", 0): [record("feedback", 0, 0, 10)],
        ("requested", 0): [record("requested", 0, 0, 10), record("requested", 0, 1, 30)],
        ("catalog", 0): [record("catalog", 0, 0, 25)],
    }
    order = [(r.topic, r.offset) for r in merged(streams, rank)]
    assert order == [
        ("feedback", 0),
        ("requested", 0),
        ("recipients", 0),
        ("recipients", 1),
        ("catalog", 0),
        ("requested", 1),
    ]


def test_requests_older_than_the_oldest_kept_catalog_version_are_planned_with_it() -> None:
    shadow = Shadow([published(3, channels=["in_app"])])
    shadow.seed([published(2), published(5)])
    joined = RecipientUpdated(tenant_id="acme", recipient_id="u1", email="u1@example.com", occurred_at=T0)
    [change] = history(shadow, (joined, 0), (request(), 1))
    assert change.before == (("email", "QUEUED", ""), ("in_app", "QUEUED", ""))


def test_a_request_plan_cannot_build_is_rejected_with_the_render_check_s_reason() -> None:
    data = catalog(
        channels=["webhook"], templates={"webhook": {"default": {"data_json": '{"a": {{ amount }}}'}}}
    )
    state = RecipientState(webhooks={"h": WebhookEndpoint(url="https://h.example.com/x", secret="whsec_x")})
    req = request(data_json='{"amount": "NaN"}', channels=["webhook"])
    [(channel, status, reason)] = decisions(req, state, data, T0)
    assert (channel, status) == ("*", "REJECTED")
    assert reason == "template order.shipped v1 webhook: data_json: rendered text is not a JSON object: " + (
        "not valid JSON: NaN is not JSON"
    )


def test_a_request_plan_raises_an_unknown_error_for_is_rejected_by_type_without_quoting_its_data() -> None:
    class Broken(Catalog):
        def get(self, tenant: str, key: str) -> Any:
            raise RuntimeError(f"secret {key}")

    [(channel, status, reason)] = decisions(request(), RecipientState(), Broken(), T0)
    assert (channel, status, reason) == ("*", "REJECTED", "RuntimeError")


def test_a_new_condition_shows_which_past_requests_it_would_hold_back() -> None:
    shadow = Shadow([published(2, channel_conditions={"email": "data.order.startswith('B')"})])
    joined = RecipientUpdated(tenant_id="acme", recipient_id="u1", email="u1@example.com", occurred_at=T0)
    changes = history(
        shadow,
        (published(1), 0),
        (joined, 1),
        (request(data_json='{"order": "A-1"}'), 2),
        (request(data_json='{"order": "B-2"}'), 3),
    )
    assert shadow.compared == 2
    assert [c.transitions() for c in changes] == [[("email", "QUEUED", "SKIPPED condition")]]
