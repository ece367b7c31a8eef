import json
from typing import Any

import pytest

from processors.plan import gate, plan
from processors.recipients import RecipientState
from tests.unit.test_plan import NOW, TEMPLATES, catalog, recipient, request, skipped
from tidings.catalog import conditions, parse_type
from tidings.codec import default_codec
from tidings.errors import InvalidEvent
from tidings.ids import new_notification_id


def data(**values: Any) -> str:
    return json.dumps({"order": "A-1", **values})


def reasons(p: Any) -> list[tuple[str | None, str, str | None]]:
    return sorted((o.channel, o.status, o.reason) for o in p.outcomes)


def test_a_channel_condition_keeps_only_that_channel_back() -> None:
    c = catalog(channel_conditions={"sms": "amount >= 1000"})
    big = plan(request(data_json=data(amount=2500)), recipient(), c, NOW)
    assert sorted(x.channel for x in big.commands) == ["email", "in_app", "push", "sms"]
    small = plan(request(data_json=data(amount=12.5)), recipient(), c, NOW)
    assert sorted(x.channel for x in small.commands) == ["email", "in_app", "push"]
    assert skipped(small) == {"sms": "condition"}
    detail = next(o.detail for o in small.outcomes if o.status == "SKIPPED")
    assert detail == "condition not met: amount >= 1000"


def test_a_notification_condition_skips_the_request_as_a_whole() -> None:
    c = catalog(condition="data.items > 0")
    p = plan(request(data_json=data(items=0)), recipient(), c, NOW)
    assert not p.commands and not p.deferred and not p.digested
    assert reasons(p) == [(None, "SKIPPED", "condition")]
    assert p.outcomes[0].detail == "condition not met: data.items > 0"
    assert len(plan(request(data_json=data(items=2)), recipient(), c, NOW).commands) == 4


def test_missing_values_are_falsy_and_make_comparisons_false() -> None:
    c = catalog(condition="not data.test", channel_conditions={"sms": "amount >= 1000"})
    p = plan(request(), recipient(), c, NOW)
    assert sorted(x.channel for x in p.commands) == ["email", "in_app", "push"]
    detail = next(o.detail for o in p.outcomes if o.status == "SKIPPED")
    assert detail == "condition not met: amount >= 1000: 'amount' is undefined"
    test_run = plan(request(data_json=data(test=True)), recipient(), c, NOW)
    assert reasons(test_run) == [(None, "SKIPPED", "condition")]


def test_conditions_see_the_recipients_properties() -> None:
    c = catalog(channel_conditions={"push": "recipient.properties.plan == 'pro'"})
    plain = plan(request(), recipient(), c, NOW)
    assert skipped(plain) == {"push": "condition"}
    pro = plan(request(), recipient(properties={"plan": "pro"}), c, NOW)
    assert "push" in {x.channel for x in pro.commands}


def test_conditions_bind_critical_types_too() -> None:
    c = catalog(critical=True, priority="critical", channel_conditions={"sms": "data.urgent"})
    p = plan(request(), recipient(muted=True), c, NOW)
    assert sorted(x.channel for x in p.commands) == ["email", "in_app", "push"]
    assert skipped(p) == {"sms": "condition"}


def test_a_condition_is_checked_before_preferences() -> None:
    state = recipient(muted=True)
    p = plan(request(), state, catalog(channel_conditions={"email": "false"}), NOW)
    assert skipped(p)["email"] == "condition" and skipped(p)["sms"] == "opted_out"


@pytest.mark.parametrize(
    "expression",
    [
        "data.order > 5",
        "().__class__.__base__.__subclasses__()",
        "range(1000000)|list",
        "'x' * 10**9",
        "data.order|int(base=0) / 0",
    ],
)
def test_a_condition_that_cannot_be_evaluated_rejects_the_request(expression: str) -> None:
    with pytest.raises(InvalidEvent, match="condition"):
        plan(request(), recipient(), catalog(channel_conditions={"email": expression}), NOW)


def test_digest_requests_are_not_checked_again() -> None:
    c = catalog(condition="data.items > 0")
    digest = request(digest_of=[new_notification_id()], data_json='{"items": []}')
    assert gate(digest, None, c) is None
    assert gate(request(data_json=data(items=0)), None, c) == "condition not met: data.items > 0"
    assert gate(request(data_json=data(items=1)), RecipientState(), c) is None
    assert gate(request(), None, catalog()) is None


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"condition": "data.x >"}, "unexpected"),
        ({"condition": ""}, "non-empty"),
        ({"condition": "x" * 1001}, "at most 1000"),
        ({"condition": 3}, "must be a string"),
        ({"channel_conditions": {"webhook": "true"}}, "without templates"),
        ({"channel_conditions": "true"}, "table of channel"),
        ({"channel_conditions": {"sms": "{{ x }}"}}, "condition"),
    ],
)
def test_publishing_refuses_malformed_conditions(changes: dict[str, Any], message: str) -> None:
    raw = {"key": "t", "category": "c", "channels": ["email", "sms"], "templates": TEMPLATES} | changes
    raw["templates"] = {k: v for k, v in TEMPLATES.items() if k in ("email", "sms")}
    with pytest.raises(InvalidEvent, match=message):
        parse_type("*", raw)


def test_conditions_survive_the_wire() -> None:
    t = parse_type(
        "*",
        {
            "key": "t",
            "category": "c",
            "channels": ["email"],
            "templates": {"email": TEMPLATES["email"]},
            "condition": "not data.test",
            "channel_conditions": {"email": "recipient.name"},
        },
    )
    codec = default_codec()
    back = codec.decode(codec.encode(t))
    assert back == t
    found = conditions(back)
    assert found is not None
    assert found.notification == "not data.test" and found.channels == {"email": "recipient.name"}
    assert conditions(parse_type("*", {"key": "t", "category": "c", "channels": []})) is None


@pytest.mark.parametrize(
    "expression",
    ["data.plan != 'free'", "data.tier not in ['free']", "data.a == data.b", "(data.a ~ '') == ''"],
)
def test_any_use_of_a_missing_value_beyond_its_truth_makes_the_condition_false(expression: str) -> None:
    p = plan(request(), recipient(), catalog(channel_conditions={"sms": expression}), NOW)
    assert skipped(p) == {"sms": "condition"}


def test_defaults_and_definedness_tests_handle_missing_values() -> None:
    conditions = {"sms": "data.plan|default('free') != 'free'", "push": "data.plan is not defined"}
    p = plan(request(), recipient(), catalog(channel_conditions=conditions), NOW)
    assert skipped(p) == {"sms": "condition"} and "push" in {c.channel for c in p.commands}


@pytest.mark.parametrize("expression", ["''.__class__", "data.order.__class__.__mro__", "'{0}'.format()"])
def test_refused_attributes_and_other_failures_reject_rather_than_skip(expression: str) -> None:
    with pytest.raises(InvalidEvent, match="condition"):
        plan(request(), recipient(), catalog(channel_conditions={"email": expression}), NOW)


def test_a_deeply_nested_condition_is_refused_at_publish_not_with_a_traceback() -> None:
    raw = {"key": "t", "category": "c", "channels": ["email"], "templates": {"email": TEMPLATES["email"]}}
    with pytest.raises(InvalidEvent, match="condition"):
        parse_type("*", raw | {"condition": "(" * 100 + "1" + ")" * 100})


def test_a_gated_plan_leaves_the_request_condition_to_its_caller() -> None:
    c = catalog(condition="data.items > 0", channel_conditions={"sms": "false"})
    req = request(data_json=data(items=0))
    assert gate(req, None, c) == "condition not met: data.items > 0"
    p = plan(req, recipient(), c, NOW, gated=True)
    assert skipped(p) == {"sms": "condition"} and len(p.commands) == 3
