import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from processors.plan import Catalog, plan
from processors.preferences import quiet_until
from processors.recipients import RecipientState, Suppression, address_key, fold
from tidings.catalog import parse_type
from tidings.errors import InvalidEvent
from tidings.events import (
    DeviceRegistered,
    NotificationRequested,
    PreferenceRule,
    PreferencesUpdated,
    ProviderFeedback,
    QuietHours,
)
from tidings.ids import delivery_id, new_notification_id
from tidings.vocabulary import DECODED

NOW = datetime(2026, 6, 15, 12, 0, tzinfo=UTC)
TEMPLATES = {
    "email": {
        "default": {"subject": "Order {{ order }}", "html": "<b>{{ order }}</b>"},
        "de": {"subject": "Bestellung {{ order }}", "body": "Bestellung {{ order }} ist unterwegs"},
    },
    "sms": {"default": {"body": "Order {{ order }}"}},
    "push": {"default": {"title": "Order", "body": "{{ order }}"}},
    "in_app": {"default": {"title": "Order {{ order }}"}},
    "webhook": {"default": {"data_json": '{"order": {{ order|tojson }}}'}},
}


def catalog(**changes: Any) -> Catalog:
    raw = {
        "key": "order.shipped",
        "category": "orders",
        "channels": ["email", "sms", "push", "in_app"],
        "templates": TEMPLATES,
    } | changes
    c = Catalog()
    c.apply(parse_type("*", raw))
    return c


def request(**changes: Any) -> NotificationRequested:
    base: dict[str, Any] = {
        "tenant_id": "acme",
        "notification_id": new_notification_id(),
        "recipient_id": "u1",
        "notification_type": "order.shipped",
        "data_json": '{"order": "A-1"}',
        "occurred_at": NOW,
    }
    return NotificationRequested(**(base | changes))


def recipient(**changes: Any) -> RecipientState:
    state = RecipientState(email="u1@example.com", phone="+4915112345678", **changes)
    return fold(
        state,
        DeviceRegistered(
            tenant_id="acme",
            recipient_id="u1",
            device_id="d1",
            platform="fcm",
            token="fcm-token",
            occurred_at=NOW,
        ),
    )


def skipped(p: Any) -> dict[str, str]:
    return {o.channel: o.reason for o in p.outcomes if o.status == "SKIPPED"}


def test_everything_allowed_yields_one_command_per_channel_and_address() -> None:
    req = request()
    p = plan(req, recipient(), catalog(), NOW)
    assert sorted(c.channel for c in p.commands) == ["email", "in_app", "push", "sms"]
    email = next(c for c in p.commands if c.channel == "email")
    assert email.delivery_id == delivery_id(req.notification_id, "email", "u1@example.com")
    assert email.content.subject == "Order A-1" and email.content.html == "<b>A-1</b>"
    assert email.template_version == 1 and email.priority == "normal" and email.locale == "default"
    push = next(c for c in p.commands if c.channel == "push")
    assert push.address == "fcm-token" and push.address_params["platform"] == "fcm"
    assert [o.status for o in p.outcomes] == ["QUEUED"] * 4


def test_plan_is_deterministic_in_its_ids() -> None:
    req = request()
    first = {c.delivery_id for c in plan(req, recipient(), catalog(), NOW).commands}
    assert first == {c.delivery_id for c in plan(req, recipient(), catalog(), NOW).commands}


@pytest.mark.parametrize(
    "rules,critical,muted,expected_off",
    [
        ({}, False, True, {"email", "sms", "push", "in_app"}),
        ({}, True, True, set()),
        ({"category:orders:*": False}, True, False, set()),
        ({"category:orders:*": False}, False, False, {"email", "sms", "push", "in_app"}),
        (
            {"category:orders:*": False, "type:order.shipped:email": True},
            False,
            False,
            {"sms", "push", "in_app"},
        ),
        (
            {"category:orders:email": True, "type:order.shipped:*": False},
            False,
            False,
            {"email", "sms", "push", "in_app"},
        ),
        (
            {"type:order.shipped:*": False, "type:order.shipped:push": True},
            False,
            False,
            {"email", "sms", "in_app"},
        ),
        ({"category:orders:sms": False, "category:orders:*": True}, False, False, {"sms"}),
        ({"type:order.shipped:sms": True}, False, True, {"email", "sms", "push", "in_app"}),
    ],
)
def test_precedence(rules: dict[str, bool], critical: bool, muted: bool, expected_off: set[str]) -> None:
    p = plan(request(), recipient(rules=rules, muted=muted), catalog(critical=critical), NOW)
    assert {c for c, r in skipped(p).items() if r == "opted_out"} == expected_off
    assert {c.channel for c in p.commands} == {"email", "sms", "push", "in_app"} - expected_off


def test_category_unsubscribe_from_feedback_applies_to_its_channel_and_non_critical_only() -> None:
    state = recipient(unsubscribed_categories={"orders/email": NOW})
    assert skipped(plan(request(), state, catalog(), NOW)) == {"email": "opted_out"}
    assert skipped(plan(request(), state, catalog(critical=True), NOW)) == {}


def test_request_channels_restrict_and_missing_addresses_are_reported() -> None:
    p = plan(request(channels=["email", "sms"]), RecipientState(email="x@y.z"), catalog(), NOW)
    assert [c.channel for c in p.commands] == ["email"]
    assert skipped(p) == {"sms": "no_address"}
    p = plan(
        request(channels=["email", "sms"], recipient_overrides={"sms": "+4915112345678"}),
        RecipientState(email="x@y.z", phone="+4915100000000"),
        catalog(),
        NOW,
    )
    assert [(c.channel, c.address) for c in p.commands] == [("email", "x@y.z"), ("sms", "+4915112345678")]


def test_a_requested_channel_the_type_has_no_template_for_is_skipped_with_the_reason() -> None:
    """Each decision is an outcome: a request naming only such channels had none, and its status was
    \"not (yet) in the projection\" for good."""
    email_only = Catalog()
    email_only.apply(
        parse_type(
            "*",
            {
                "key": "order.shipped",
                "category": "orders",
                "channels": ["email"],
                "templates": {"email": TEMPLATES["email"]},
            },
        )
    )
    p = plan(request(channels=["sms", "email"]), recipient(), email_only, NOW)
    assert [c.channel for c in p.commands] == ["email"]
    assert [(o.status, o.channel, o.reason) for o in p.outcomes if o.status == "SKIPPED"] == [
        ("SKIPPED", "sms", "no_template")
    ]
    p = plan(request(channels=[]), recipient(), email_only, NOW)
    assert (p.commands, [(o.status, o.channel, o.reason) for o in p.outcomes]) == (
        [],
        [("SKIPPED", None, "no_channel")],
    )


@pytest.mark.parametrize(
    "overrides",
    [
        {"email": "u1@example.com "},
        {"email": " u1@example.com"},
        {"email": "u1 @example.com"},
        {"sms": "0151 1234 5678"},
        {"webhook": "https://h.example/in"},
        {"push": "token"},
        {"mail": "u1@example.com"},
    ],
    ids=["trailing space", "leading space", "inner space", "not e164", "webhook", "push", "unknown"],
)
def test_a_request_gives_only_email_and_sms_addresses_checked_like_the_recipients(
    overrides: dict[str, str],
) -> None:
    """An address with a space in it missed the suppression of the address the provider then sent to;
    a webhook address had no signing secret, and every send of it was rejected. The router REJECTs
    one written before the check; it still decodes, for rebuilds and audits."""
    with pytest.raises(ValidationError, match="recipient_overrides"):
        request(recipient_overrides=overrides)
    older = decoded_request(recipient_overrides=overrides)
    assert older.recipient_overrides == overrides, "a request written before the check still decodes"
    with pytest.raises(InvalidEvent, match="recipient_overrides"):
        plan(older, recipient(), catalog(), NOW)


def test_suppressed_addresses_are_skipped() -> None:
    hard = recipient(
        suppressions={address_key("email", "U1@example.com"): Suppression(reason="hard_bounce", since=NOW)}
    )
    assert skipped(plan(request(), hard, catalog(critical=True), NOW)) == {"email": "suppressed"}
    unsub = recipient(
        suppressions={
            address_key("email", "u1@example.com"): Suppression(
                reason="unsubscribe", since=NOW, all_messages=False
            )
        }
    )
    assert skipped(plan(request(), unsub, catalog(), NOW)) == {"email": "suppressed"}
    assert skipped(plan(request(), unsub, catalog(critical=True), NOW)) == {}


def test_expiry() -> None:
    p = plan(request(expires_at=NOW - timedelta(seconds=1)), recipient(), catalog(), NOW)
    assert p.commands == [] and [(o.status, o.reason, o.delivery_id) for o in p.outcomes] == [
        ("EXPIRED", "expired", None)
    ]
    old = request(occurred_at=NOW - timedelta(hours=2))
    assert plan(old, recipient(), catalog(expires_after="1h"), NOW).outcomes[0].status == "EXPIRED"
    fresh = plan(request(), recipient(), catalog(expires_after="1h"), NOW)
    assert {c.expires_at for c in fresh.commands} == {NOW + timedelta(hours=1)}


def test_a_channel_named_twice_is_planned_once() -> None:
    p = plan(
        request(channels=["email", "email"], recipient_overrides={"email": "a@h.example"}),
        RecipientState(),
        catalog(),
        NOW,
    )
    assert [c.channel for c in p.commands] == ["email"] and len(p.outcomes) == 1


def decoded_request(**changes: Any) -> NotificationRequested:
    """A request as the router decodes it from an older producer: the checks for made events skipped."""
    return NotificationRequested.model_validate(request().model_dump() | changes, context=DECODED)


def test_a_request_scheduled_beyond_400_days_is_invalid() -> None:
    """The scheduler's timer keys sort by 13 digits of epoch ms: year 2300 would be due at once."""
    plan(decoded_request(scheduled_at=NOW + timedelta(days=399)), recipient(), catalog(), NOW)
    with pytest.raises(InvalidEvent, match="more than 400 days ahead"):
        plan(decoded_request(scheduled_at=datetime(2300, 1, 1, tzinfo=UTC)), recipient(), catalog(), NOW)


def test_a_locale_longer_than_any_real_one_is_ignored() -> None:
    """An old event's 200,000-character locale made a locale chain of 10 GB."""
    p = plan(decoded_request(channels=["email"], locale="de-" * 100_000), recipient(), catalog(), NOW)
    assert p.commands[0].locale == "default"


def test_locale_fallback_from_request_then_recipient() -> None:
    p = plan(request(channels=["email"]), recipient(locale="de-AT"), catalog(), NOW)
    assert (p.commands[0].locale, p.commands[0].content.subject) == ("de", "Bestellung A-1")
    p = plan(request(channels=["email"], locale="fr"), recipient(locale="de-AT"), catalog(), NOW)
    assert p.commands[0].locale == "default"


def test_a_types_expiry_counts_from_when_a_scheduled_request_is_due() -> None:
    """Counted from when it was made, a type kept an hour could not be scheduled a day ahead: it
    EXPIRED when planned. A request's own `expires_at` stays where it is."""
    at = NOW + timedelta(days=1)
    p = plan(request(scheduled_at=at), recipient(), catalog(expires_after="1h"), NOW)
    assert [o.status for o in p.outcomes] == ["DEFERRED"] * 4
    assert {c.expires_at for c in p.deferred} == {at + timedelta(hours=1)}
    own = plan(request(scheduled_at=at, expires_at=NOW + timedelta(hours=2)), recipient(), catalog(), NOW)
    assert own.deferred == [] and {o.status for o in own.outcomes} == {"EXPIRED"}
    quiet = recipient(quiet_hours=QuietHours(start="11:00", end="18:00"), timezone="UTC")
    night = plan(request(), quiet, catalog(expires_after="1h"), NOW)
    assert {o.channel for o in night.outcomes if o.status == "EXPIRED"} == {"push", "sms"}


def test_a_type_kept_longer_than_a_date_can_hold_never_expires() -> None:
    """Every request of a type published with `expires_after = "100000000d"` was REJECTED."""
    p = plan(request(channels=["email"]), recipient(), catalog(expires_after="100000000d"), NOW)
    assert [o.status for o in p.outcomes] == ["QUEUED"] and p.commands[0].expires_at is None


def test_scheduled_at_defers_every_channel() -> None:
    at = NOW + timedelta(hours=3)
    p = plan(request(scheduled_at=at), recipient(), catalog(), NOW)
    assert p.commands == [] and {c.not_before for c in p.deferred} == {at} and len(p.deferred) == 4
    assert {o.reason for o in p.outcomes} == {"scheduled"}


def test_quiet_hours_defer_push_and_sms_but_not_email_inbox_or_critical() -> None:
    quiet = QuietHours(start="13:00", end="15:30")
    state = recipient(quiet_hours=quiet, timezone="Europe/Vienna")
    p = plan(request(), state, catalog(), NOW)
    release = datetime(2026, 6, 15, 13, 30, tzinfo=UTC)
    assert sorted(c.channel for c in p.deferred) == ["push", "sms"] and {
        c.not_before for c in p.deferred
    } == {release}
    assert sorted(c.channel for c in p.commands) == ["email", "in_app"]
    assert {o.reason for o in p.outcomes if o.status == "DEFERRED"} == {"quiet_hours_deferred"}
    assert plan(request(), state, catalog(critical=True), NOW).deferred == []
    expiring = plan(request(expires_at=NOW + timedelta(minutes=30)), state, catalog(), NOW)
    assert {o.channel for o in expiring.outcomes if o.status == "EXPIRED"} == {"push", "sms"}


@pytest.mark.parametrize(
    "now,zone,start,end,release",
    [
        (
            datetime(2026, 6, 15, 21, 30, tzinfo=UTC),
            "America/New_York",
            "17:00",
            "18:00",
            datetime(2026, 6, 15, 22, 0, tzinfo=UTC),
        ),
        (
            datetime(2026, 6, 15, 21, 30, tzinfo=UTC),
            "Europe/Vienna",
            "22:00",
            "07:00",
            datetime(2026, 6, 16, 5, 0, tzinfo=UTC),
        ),
        (
            datetime(2026, 6, 15, 3, 0, tzinfo=UTC),
            "Europe/Vienna",
            "22:00",
            "07:00",
            datetime(2026, 6, 15, 5, 0, tzinfo=UTC),
        ),
        (datetime(2026, 6, 15, 12, 0, tzinfo=UTC), "Europe/Vienna", "22:00", "07:00", None),
        (
            datetime(2026, 6, 15, 12, 0, tzinfo=UTC),
            "Asia/Kolkata",
            "17:00",
            "18:00",
            datetime(2026, 6, 15, 12, 30, tzinfo=UTC),
        ),
        # Spring forward in Vienna (29 March 2026, 02:00 -> 03:00): 07:00 is CEST (UTC+2) on the day.
        (
            datetime(2026, 3, 28, 23, 30, tzinfo=UTC),
            "Europe/Vienna",
            "22:00",
            "07:00",
            datetime(2026, 3, 29, 5, 0, tzinfo=UTC),
        ),
        # Fall back (25 October 2026, 03:00 -> 02:00): 07:00 is CET (UTC+1) that morning.
        (
            datetime(2026, 10, 24, 22, 30, tzinfo=UTC),
            "Europe/Vienna",
            "22:00",
            "07:00",
            datetime(2026, 10, 25, 6, 0, tzinfo=UTC),
        ),
        # A window ending in the skipped hour ends at the first instant after it: 03:00 EDT.
        (
            datetime(2026, 3, 8, 6, 30, tzinfo=UTC),
            "America/New_York",
            "01:00",
            "02:30",
            datetime(2026, 3, 8, 7, 0, tzinfo=UTC),
        ),
        (
            datetime(2026, 3, 28, 23, 30, tzinfo=UTC),
            "Europe/Berlin",
            "22:00",
            "02:30",
            datetime(2026, 3, 29, 1, 0, tzinfo=UTC),
        ),
        # Lord Howe Island moves its clocks by half an hour (5 April 2026, 02:00 +11 -> 01:30 +10:30;
        # 4 October 2026, 02:00 +10:30 -> 02:30 +11).
        (
            datetime(2026, 10, 3, 14, 0, tzinfo=UTC),
            "Australia/Lord_Howe",
            "00:00",
            "02:15",
            datetime(2026, 10, 3, 15, 30, tzinfo=UTC),
        ),
        # The repeated hour: 01:30 EST (second pass) is inside 01:00-01:45 and ends 01:45 EST.
        (
            datetime(2026, 11, 1, 6, 30, tzinfo=UTC),
            "America/New_York",
            "01:00",
            "01:45",
            datetime(2026, 11, 1, 6, 45, tzinfo=UTC),
        ),
    ],
)
def test_quiet_hours_across_zones_and_dst(
    now: datetime, zone: str, start: str, end: str, release: datetime | None
) -> None:
    assert quiet_until(QuietHours(start=start, end=end), zone, now) == release


def test_quiet_hours_own_zone_wins_and_unknown_zone_means_utc() -> None:
    q = QuietHours(start="11:00", end="13:00", timezone="UTC")
    assert quiet_until(q, "Asia/Tokyo", NOW) == datetime(2026, 6, 15, 13, 0, tzinfo=UTC)
    for unknown in ("Mars/Olympus", "America", "Etc", "x" * 300):
        assert quiet_until(QuietHours(start="11:00", end="13:00"), unknown, NOW) == datetime(
            2026, 6, 15, 13, 0, tzinfo=UTC
        ), unknown


def test_unknown_type_and_render_failures_are_invalid() -> None:
    with pytest.raises(InvalidEvent, match="unknown notification type"):
        plan(request(notification_type="nope"), recipient(), catalog(), NOW)
    with pytest.raises(InvalidEvent, match="order"):
        plan(request(data_json="{}"), recipient(), catalog(), NOW)


@pytest.mark.parametrize("payload", ["{{ ''.__class__.__mro__ }}", "{% for i in range(10**9) %}{% endfor %}"])
def test_template_injection_in_data_is_inert(payload: str) -> None:
    p = plan(request(data_json=json.dumps({"order": payload})), recipient(), catalog(), NOW)
    assert next(c for c in p.commands if c.channel == "email").content.subject == f"Order {payload}"


def test_tenant_type_overrides_the_global_one() -> None:
    c = catalog()
    c.apply(
        parse_type(
            "acme",
            {
                "key": "order.shipped",
                "category": "orders",
                "channels": ["sms"],
                "templates": {"sms": {"default": {"body": "acme {{ order }}"}}},
            },
        )
    )
    assert [x.content.body for x in plan(request(), recipient(), c, NOW).commands] == ["acme A-1"]
    assert len(plan(request(tenant_id="globex"), recipient(), c, NOW).commands) == 4


def test_priority() -> None:
    assert {c.priority for c in plan(request(priority="high"), recipient(), catalog(), NOW).commands} == {
        "high"
    }
    assert {
        c.priority for c in plan(request(priority="low"), recipient(), catalog(critical=True), NOW).commands
    } == {"critical"}


def test_webhooks_go_to_matching_enabled_endpoints() -> None:
    from tidings.events import ProviderFeedback, WebhookEndpointRemoved, WebhookEndpointUpdated

    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

    def endpoint(eid: str, url: str, **kw: Any) -> WebhookEndpointUpdated:
        return WebhookEndpointUpdated(
            tenant_id="acme", recipient_id="u1", endpoint_id=eid, url=url, secret=secret, **kw
        )

    state = recipient()
    for e in (
        endpoint("all", "https://a.example/in"),
        endpoint("orders", "https://b.example/in", event_types=["orders"]),
        endpoint("billing", "https://c.example/in", event_types=["invoice.due"]),
        endpoint("off", "https://d.example/in", enabled=False),
    ):
        state = fold(state, e)
    p = plan(request(channels=["webhook"]), state, catalog(), NOW)
    assert [(c.address, c.address_params["endpoint_id"]) for c in p.commands] == [
        ("https://a.example/in", "all"),
        ("https://b.example/in", "orders"),
    ]
    assert p.commands[0].address_params["secret"] == secret
    disabled = fold(
        state,
        ProviderFeedback(
            tenant_id="acme",
            recipient_id="u1",
            kind="endpoint_disabled",
            channel="webhook",
            address="https://a.example/in",
        ),
    )
    assert skipped(plan(request(channels=["webhook"]), disabled, catalog(), NOW)) == {"webhook": "suppressed"}
    revived = fold(disabled, endpoint("all", "https://a.example/in"))
    assert skipped(plan(request(channels=["webhook"]), revived, catalog(), NOW)) == {}
    removed = fold(state, WebhookEndpointRemoved(tenant_id="acme", recipient_id="u1", endpoint_id="orders"))
    assert [c.address for c in plan(request(channels=["webhook"]), removed, catalog(), NOW).commands] == [
        "https://a.example/in"
    ]


DIGEST = {
    "window": "1h",
    "templates": {
        "email": {
            "default": {
                "subject": "{{ count }} orders: {{ items|map(attribute='order')|join(', ') }}",
                "body": "{{ count }} orders",
            }
        }
    },
}


def test_an_escalated_channel_waits_with_its_condition() -> None:
    p = plan(request(), recipient(), catalog(escalation=[{"after": "5m", "channel": "email"}]), NOW)
    (email,) = p.deferred
    assert (
        email.channel == "email" and email.unless == "seen" and email.not_before == NOW + timedelta(minutes=5)
    )
    deferred = [o for o in p.outcomes if o.status == "DEFERRED"]
    assert [(o.reason, o.channel) for o in deferred] == [("escalation", "email")]
    assert "unless seen" in (deferred[0].detail or "")
    assert {c.channel for c in p.commands} == {"sms", "push", "in_app"}
    assert all(c.unless is None for c in p.commands)


def test_quiet_hours_are_those_when_a_deferred_delivery_would_go_out() -> None:
    """Planned at 12:00 UTC, outside 22:00-07:00 quiet hours; scheduled for 23:30 Vienna, inside them:
    push and SMS wait for 07:00, email and the inbox go at 23:30. An escalation due 10 minutes into
    quiet hours waits for their end too."""
    quiet = QuietHours(start="22:00", end="07:00")
    state = recipient(quiet_hours=quiet, timezone="Europe/Vienna")
    at = datetime(2026, 6, 15, 21, 30, tzinfo=UTC)  # 23:30 CEST
    p = plan(request(scheduled_at=at), state, catalog(), NOW)
    morning = datetime(2026, 6, 16, 5, 0, tzinfo=UTC)  # 07:00 CEST
    assert {c.channel: c.not_before for c in p.deferred} == {
        "email": at,
        "in_app": at,
        "push": morning,
        "sms": morning,
    }
    late = NOW.replace(hour=19, minute=55)  # 21:55 CEST
    c = catalog(escalation=[{"after": "10m", "channel": "sms", "unless": "read"}])
    (sms,) = [d for d in plan(request(), state, c, late).deferred if d.channel == "sms"]
    assert sms.not_before == morning


def test_quiet_hours_can_push_an_escalation_later_and_keep_its_condition() -> None:
    quiet = QuietHours(start="11:00", end="14:00", timezone="UTC")
    c = catalog(escalation=[{"after": "10m", "channel": "sms", "unless": "read"}])
    (sms,) = [d for d in plan(request(), recipient(quiet_hours=quiet), c, NOW).deferred if d.channel == "sms"]
    assert sms.not_before == datetime(2026, 6, 15, 14, 0, tzinfo=UTC) and sms.unless == "read"


def test_a_type_published_before_publishing_checked_needed_fields_still_plans() -> None:
    """A digest locale with only a subject (published before the check) fails only its own sends; it
    rejected every request of the type, critical and SMS-only ones included."""
    t = parse_type(
        "*",
        {
            "key": "order.shipped",
            "category": "orders",
            "channels": ["email", "sms"],
            "templates": TEMPLATES,
            "digest": DIGEST,
        },
    )
    digest = json.loads(t.digest_json or "{}")
    digest["templates"]["email"]["de"] = {"subject": "{{ count }} Bestellungen"}
    old = Catalog()
    old.apply(t.model_copy(update={"digest_json": json.dumps(digest)}))
    p = plan(request(priority="critical", channels=["sms"]), recipient(), old, NOW)
    assert [c.channel for c in p.commands] == ["sms"]
    with pytest.raises(InvalidEvent, match="email/de: needs body or html"):
        parse_type(
            "*",
            {"key": "k", "category": "c", "channels": ["email"], "templates": TEMPLATES, "digest": digest},
        )


def test_digested_channels_are_listed_not_sent() -> None:
    p = plan(request(), recipient(), catalog(digest=DIGEST), NOW)
    assert p.digested == ["email"]
    assert {c.channel for c in p.commands} == {"sms", "push", "in_app"}
    assert not [o for o in p.outcomes if o.channel == "email"]


def nested(levels: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(levels - 1):
        value = {"a": value}
    return value


@pytest.mark.parametrize(
    "type_changes,request_changes,state_changes",
    [
        ({"critical": True}, {}, {}),
        ({}, {"scheduled_at": NOW + timedelta(hours=2)}, {}),
        ({}, {}, {"digest": {"orders": "off"}}),
        ({}, {"data_json": json.dumps({"order": "A-1", "blob": "x" * 9000})}, {}),
        ({}, {"data_json": json.dumps({"order": "A-1", "n": nested(62)})}, {}),
        ({}, {"recipient_overrides": {"email": "ops@example.com"}}, {}),
    ],
    ids=["critical", "scheduled", "recipient-off", "too-big", "too-deep-for-the-digest-data", "own-address"],
)
def test_requests_that_are_not_digested(
    type_changes: dict[str, Any], request_changes: dict[str, Any], state_changes: dict[str, Any]
) -> None:
    p = plan(
        request(**request_changes), recipient(**state_changes), catalog(digest=DIGEST, **type_changes), NOW
    )
    assert p.digested == []
    assert "email" in {c.channel for c in [*p.commands, *p.deferred]}


def test_opted_out_or_unreachable_channels_are_skipped_before_digesting() -> None:
    c = catalog(digest=DIGEST)
    off = recipient(rules={"category:orders:email": False})
    assert (
        plan(request(), off, c, NOW).digested == []
        and skipped(plan(request(), off, c, NOW))["email"] == "opted_out"
    )
    p = plan(request(), RecipientState(), c, NOW)
    assert p.digested == [] and skipped(p)["email"] == "no_address"


def test_a_digest_request_renders_the_digest_templates_and_is_not_digested_again() -> None:
    items = [{"order": "A-1"}, {"order": "B-2"}]
    digest = request(
        data_json=json.dumps({"items": items, "count": 2}),
        channels=["email"],
        digest_of=[new_notification_id(), new_notification_id()],
    )
    p = plan(digest, recipient(), catalog(digest=DIGEST), NOW)
    (email,) = p.commands
    assert email.content.subject == "2 orders: A-1, B-2" and p.digested == []
    with pytest.raises(InvalidEvent, match="no digest templates"):
        plan(digest, recipient(), catalog(), NOW)


def opted_in_then(*events: Any) -> RecipientState:
    """A recipient who turned the orders category on, then the events given, folded in order."""
    state = recipient()
    for event in events:
        state = fold(state, event)
    return state


def prefs(at: datetime, *rules: tuple[str, str, str | None, bool], replace: bool = False) -> Any:

    return PreferencesUpdated(
        tenant_id="acme",
        recipient_id="u1",
        occurred_at=at,
        replace=replace,
        rules=[PreferenceRule(scope=s, key=k, channel=c, enabled=e) for s, k, c, e in rules],
    )


def unsubscribe(at: datetime) -> Any:
    return ProviderFeedback(
        tenant_id="acme",
        recipient_id="u1",
        kind="unsubscribe",
        category="orders",
        channel="email",
        address="u1@example.com",
        occurred_at=at,
    )


def email_fate(state: RecipientState) -> str | None:
    p = plan(request(), state, catalog(), NOW)
    return None if any(c.channel == "email" for c in p.commands) else skipped(p).get("email")


ORDERS_EMAIL_ON = ("category", "orders", "email", True)
TYPE_ON = ("type", "order.shipped", None, True)


@pytest.mark.parametrize("rule", [ORDERS_EMAIL_ON, ("category", "orders", None, True), TYPE_ON])
def test_an_unsubscribe_after_an_opt_in_wins(rule: tuple[str, str, str | None, bool]) -> None:
    early, late = NOW - timedelta(days=2), NOW - timedelta(days=1)
    assert email_fate(opted_in_then(prefs(early, rule))) is None
    state = opted_in_then(prefs(early, rule), unsubscribe(late))
    assert email_fate(state) == "opted_out"
    assert (
        email_fate(opted_in_then(prefs(early, rule), unsubscribe(late), prefs(NOW, rule))) == "opted_out"
    ), "repeating the rule unchanged is no new consent"
    assert email_fate(
        opted_in_then(prefs(early, rule), unsubscribe(late), prefs(NOW, rule, replace=True))
    ) == ("opted_out")
    assert email_fate(state.model_copy(update={"rules_at": {}})) == "opted_out", "a rule of unknown age"


def test_an_opt_in_after_an_unsubscribe_wins() -> None:
    early, late = NOW - timedelta(days=2), NOW - timedelta(days=1)
    off = ("type", "order.shipped", None, False)
    again = opted_in_then(unsubscribe(early), prefs(late, TYPE_ON))
    assert email_fate(again) is None and again.unsubscribed_categories, "a type rule outranks it, by time"
    lifted = opted_in_then(prefs(early, TYPE_ON), unsubscribe(late), prefs(NOW, ORDERS_EMAIL_ON))
    assert email_fate(lifted) is None and lifted.unsubscribed_categories == {}
    other = opted_in_then(unsubscribe(early), prefs(late, ("category", "orders", "sms", True)))
    assert email_fate(other) == "opted_out", "turning sms on does not resubscribe email"
    toggled = opted_in_then(prefs(early, off), unsubscribe(late), prefs(NOW, TYPE_ON))
    assert email_fate(toggled) is None


def test_a_broader_opt_in_after_an_unsubscribe_wins_over_an_older_narrower_one() -> None:
    """The first rule found decided alone: a type rule for email from before the unsubscribe outweighed
    the same type turned on for every channel after it, and the opted-in recipient got nothing."""
    early, late = NOW - timedelta(days=2), NOW - timedelta(days=1)
    narrow = ("type", "order.shipped", "email", True)
    state = opted_in_then(prefs(early - timedelta(days=1), narrow), unsubscribe(early), prefs(late, TYPE_ON))
    assert email_fate(state) is None
    assert (
        email_fate(opted_in_then(prefs(early - timedelta(days=1), narrow), unsubscribe(early))) == "opted_out"
    )
    off = ("type", "order.shipped", "email", False)
    assert email_fate(opted_in_then(prefs(early, off), prefs(late, TYPE_ON))) == "opted_out"


def test_a_category_opt_in_does_not_lift_a_later_unsubscribe_read_before_it() -> None:
    """An unsubscribe at t10 folded before a category turned on at t5 was erased by it: the outcome
    depended on the order the two were read in."""
    early, late = NOW - timedelta(days=2), NOW - timedelta(days=1)
    for events in (
        (unsubscribe(late), prefs(early, ORDERS_EMAIL_ON)),
        (prefs(early, ORDERS_EMAIL_ON), unsubscribe(late)),
    ):
        state = recipient()
        for event in events:
            state = fold(state, event)
        assert email_fate(state) == "opted_out", events


def test_a_request_cannot_make_a_type_critical() -> None:
    """A gateway leaves the unsubscribe headers and tracking out of critical mail: a request (or a
    broadcast) asking priority critical for a marketing type sent it without them."""
    p = plan(request(priority="critical"), recipient(), catalog(), NOW)
    assert {c.priority for c in p.commands} == {"high"}
    assert {c.priority for c in plan(request(), recipient(), catalog(critical=True), NOW).commands} == {
        "critical"
    }


@pytest.mark.parametrize(
    "changes",
    [
        {"escalation_json": '{"steps": 5}'},
        {"digest_json": '{"window": "1h", "templates": []}'},
        {"throttle_json": "[1, 2]"},
        {"escalation_json": "not json"},
    ],
)
def test_malformed_rules_from_another_producer_are_invalid_not_a_crash(changes: dict[str, str]) -> None:
    """The digest punctuation caught only InvalidEvent: a TypeError from `{"steps": 5}` stopped the
    router at every restart once a digest of the type fell due."""
    t = catalog().get("acme", "order.shipped")
    assert t is not None
    broken = Catalog()
    broken.apply(t.model_copy(update={**changes, "version": 2}))
    t2 = broken.get("acme", "order.shipped")
    assert t2 is not None
    with pytest.raises(InvalidEvent, match=r"order\.shipped"):
        broken.rules(t2)


@pytest.mark.parametrize("properties", [{}, {"team": "x"}])
def test_a_template_can_default_a_property_whether_or_not_the_recipient_has_properties(
    properties: dict[str, Any],
) -> None:
    c = catalog(
        channels=["email"],
        templates={
            "email": {
                "default": {"subject": "Plan {{ recipient.properties.plan|default('free') }}", "body": "b"}
            }
        },
    )
    (email,) = plan(request(), recipient(properties=properties), c, NOW).commands
    assert email.content.subject == "Plan free"


@pytest.mark.parametrize("amount", ["inf", "nan", "1e400"])
def test_a_rendered_data_json_no_command_could_carry_rejects_the_request(amount: str) -> None:
    c = catalog(
        channels=["in_app"],
        templates={"in_app": {"default": {"title": "t", "data_json": '{"a": {{ (amount|float)|tojson }}}'}}},
    )
    with pytest.raises(InvalidEvent, match="data_json"):
        plan(request(data_json=json.dumps({"amount": amount})), recipient(), c, NOW)
    ok = plan(request(data_json='{"amount": "1.5"}'), recipient(), c, NOW).commands
    assert [x.content.data_json for x in ok] == ['{"a": 1.5}']


def test_a_type_published_again_under_the_same_version_replaces_its_templates_and_rules() -> None:
    c = catalog(channels=["sms"])
    assert [x.content.body for x in plan(request(), recipient(), c, NOW).commands] == ["Order A-1"]
    again = {
        "key": "order.shipped",
        "category": "orders",
        "channels": ["sms"],
        "throttle": {"limit": 1, "window": "15m"},
    }
    c.apply(parse_type("*", again | {"templates": {"sms": {"default": {"body": "Sent {{ order }}"}}}}))
    assert [x.content.body for x in plan(request(), recipient(), c, NOW).commands] == ["Sent A-1"]
    t = c.get("acme", "order.shipped")
    assert t is not None and c.rules(t).throttle is not None
