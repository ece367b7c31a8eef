"""Throttle rules from the catalog and the sliding-window admission the router applies."""

import json
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from processors.throttle import MAX_TIMES, admit, due
from tidings.catalog import ThrottleRule, parse_type, throttle_rule
from tidings.errors import InvalidEvent

T0 = datetime(2026, 3, 29, 0, 59, tzinfo=UTC)
TEMPLATES = {"email": {"default": {"subject": "s", "body": "b"}}}


def typed(throttle: object) -> dict[str, object]:
    return {
        "key": "password.reset",
        "category": "security",
        "channels": ["email"],
        "templates": TEMPLATES,
    } | ({"throttle": throttle} if throttle is not None else {})


def test_a_catalog_throttle_becomes_a_rule_with_per_type_by_default() -> None:
    t = parse_type("*", typed({"limit": 3, "window": "15m"}))
    assert throttle_rule(t) == ThrottleRule(limit=3, window_seconds=900, per="type")
    assert throttle_rule(parse_type("*", typed(None))) is None
    category = throttle_rule(parse_type("*", typed({"limit": 1, "window": "1d", "per": "category"})))
    assert category == ThrottleRule(limit=1, window_seconds=86_400, per="category")


@pytest.mark.parametrize(
    ("throttle", "message"),
    [
        ({"window": "1h"}, "limit, window"),
        ({"limit": 3}, "limit, window"),
        ({"limit": 3, "window": "1h", "burst": 2}, "limit, window"),
        ([3, "1h"], "JSON object"),
        ({"limit": 0, "window": "1h"}, "integer 1..1000"),
        ({"limit": 1001, "window": "1h"}, "integer 1..1000"),
        ({"limit": True, "window": "1h"}, "integer 1..1000"),
        ({"limit": 2.5, "window": "1h"}, "integer 1..1000"),
        ({"limit": 3, "window": "soon"}, "throttle window"),
        ({"limit": 3, "window": "40d"}, "1 s..31 days"),
        ({"limit": 3, "window": "1h", "per": "tenant"}, "'type' or 'category'"),
    ],
)
def test_malformed_throttles_are_refused_when_the_catalog_is_read(throttle: object, message: str) -> None:
    with pytest.raises(InvalidEvent, match=message):
        parse_type("*", typed(throttle))


def test_budgets_are_per_recipient_and_per_type_or_per_category_and_rule() -> None:
    t = parse_type("*", typed({"limit": 3, "window": "15m"}))
    rule = throttle_rule(t)
    assert rule is not None
    assert rule.key("acme", "ada", t) == "acme\x00ada\x00type\x00password.reset"
    assert rule.key("acme", "ada/type", t.model_copy(update={"notification_type": "x"})) != rule.key(
        "acme", "ada", t.model_copy(update={"notification_type": "type/x"})
    )
    assert rule.key("acme", "bob", t) != rule.key("acme", "ada", t)
    per_category = ThrottleRule(2, 86_400, "category")
    other = t.model_copy(update={"notification_type": "login.code", "throttle_json": json.dumps({})})
    assert per_category.key("acme", "ada", t) == per_category.key("acme", "ada", other)
    assert per_category.key("acme", "ada", t) != ThrottleRule(3, 86_400, "category").key("acme", "ada", t)


def test_the_window_slides_rather_than_resetting_on_the_hour() -> None:
    rule = ThrottleRule(limit=2, window_seconds=3600, per="type")
    times: list[int] = []
    decisions = []
    for minutes in (0, 1, 2, 60.5, 61, 61.5):
        passed, times = admit(rule, times, T0 + timedelta(minutes=minutes))
        decisions.append(passed)
    assert decisions == [True, True, False, True, True, False]
    assert len(times) == 4, "kept for two windows, for requests up to a window late"


def test_a_refused_request_does_not_count() -> None:
    rule = ThrottleRule(limit=1, window_seconds=60, per="type")
    _, times = admit(rule, [], T0)
    for second in range(1, 60, 7):
        passed, times = admit(rule, times, T0 + timedelta(seconds=second))
        assert not passed
    assert admit(rule, times, T0 + timedelta(seconds=60))[0]


@given(
    limit=st.integers(1, 5),
    window=st.integers(1, 120),
    gaps=st.lists(st.integers(0, 90_000), min_size=1, max_size=60),
)
def test_no_window_ever_holds_more_than_the_limit_and_only_a_full_window_refuses(
    limit: int, window: int, gaps: list[int]
) -> None:
    rule = ThrottleRule(limit=limit, window_seconds=window, per="type")
    times: list[int] = []
    admitted: list[int] = []
    at = T0
    for gap in gaps:
        at += timedelta(milliseconds=gap)
        passed, times = admit(rule, times, at)
        ms = int(at.timestamp() * 1000)
        in_window = [a for a in admitted if ms - a < window * 1000]
        assert passed == (len(in_window) < limit)
        if passed:
            admitted.append(ms)
        assert len(times) <= 2 * limit
    for i, first in enumerate(admitted):
        assert sum(1 for a in admitted[i:] if a - first < window * 1000) <= limit


def test_a_scheduled_request_counts_when_it_is_due() -> None:
    """One marketing message a day: one scheduled on Friday for Monday 09:00 let another through at
    09:01 on Monday, and refused one scheduled a week after it, both counted when made."""
    rule = ThrottleRule(limit=1, window_seconds=86_400, per="category")
    friday, monday = T0, T0 + timedelta(days=3, hours=8)
    passed, times = admit(rule, [], monday, friday)
    assert passed
    assert not admit(rule, times, monday + timedelta(minutes=1), monday + timedelta(minutes=1))[0]
    passed, times = admit(rule, times, friday + timedelta(days=10), friday)
    assert passed
    passed, times = admit(rule, times, friday + timedelta(hours=1), friday + timedelta(hours=1))
    assert passed
    assert not admit(rule, times, friday + timedelta(days=10, hours=-2), friday + timedelta(hours=2))[0]
    assert admit(rule, times, monday + timedelta(days=1), monday + timedelta(days=1))[0]


@given(
    limit=st.integers(1, 4),
    window=st.integers(1, 5),
    steps=st.lists(st.tuples(st.integers(0, 4_000), st.integers(0, 15_000)), min_size=1, max_size=50),
)
def test_scheduled_requests_never_fill_a_window_past_the_limit_and_only_a_full_one_refuses(
    limit: int, window: int, steps: list[tuple[int, int]]
) -> None:
    admitted_exactly(limit, window, steps)


def test_a_request_counts_when_it_is_due_and_never_after_the_routers_clock() -> None:
    """Without `scheduled_at`, an `occurred_at` ahead of the router's clock was counted in the future,
    taking the budget of requests really made then."""
    now = datetime(2026, 6, 15, 12, 0, tzinfo=UTC)
    ahead, later = now + timedelta(minutes=50), now + timedelta(days=1)
    assert due(ahead, None, now) == now
    assert due(now - timedelta(hours=2), None, now) == now - timedelta(hours=2)
    assert due(ahead, later, now) == later
    assert due(now, now - timedelta(hours=1), now) == now


def test_a_key_keeps_at_most_max_times_and_refuses_requests_past_them() -> None:
    """Requests scheduled a window apart each pass and each is kept until it is due: over 400 days of
    10-minute windows the list outgrew a changelog record and stopped the router at every restart."""
    rule = ThrottleRule(limit=1, window_seconds=600, per="type")
    times = [int((T0 + timedelta(minutes=10 * i + 10)).timestamp() * 1000) for i in range(MAX_TIMES - 1)]
    passed, times = admit(rule, times, T0 + timedelta(minutes=10 * MAX_TIMES), T0)
    assert passed and len(times) == MAX_TIMES
    passed, kept = admit(rule, times, T0 + timedelta(minutes=10 * MAX_TIMES + 10), T0)
    assert not passed and kept == times and len(json.dumps(kept)) < 200_000
    later = T0 + timedelta(minutes=10 * MAX_TIMES // 2)
    assert admit(rule, times, later + timedelta(days=400), later)[0], "times passed are forgotten"


@given(
    limit=st.integers(1, 4),
    window=st.integers(1, 5),
    steps=st.lists(st.tuples(st.integers(0, 3_000), st.integers(0, 999)), min_size=1, max_size=40),
)
def test_a_request_less_than_a_window_late_never_fills_a_window_past_the_limit(
    limit: int, window: int, steps: list[tuple[int, int]]
) -> None:
    """Each request arrives `gap` ms after the last one, dated up to `late` thousandths of a window before
    its arrival. Kept for one window, a request half a window late passed beside two admitted ones."""
    admitted_exactly(limit, window, [(gap, -late * window) for gap, late in steps])


def admitted_exactly(limit: int, window: int, steps: list[tuple[int, int]]) -> None:
    """Requests arriving `gap` ms apart, each due `shift` ms from its arrival: each is refused exactly
    when a window holding its due time already holds `limit` admitted ones, so none ends up over."""
    rule = ThrottleRule(limit=limit, window_seconds=window, per="type")
    span = window * 1000
    times: list[int] = []
    admitted: list[int] = []
    now = T0
    for gap, shift in steps:
        now += timedelta(milliseconds=gap)
        due = now + timedelta(milliseconds=shift)
        ms = int(due.timestamp() * 1000)
        passed, times = admit(rule, times, due, now)
        fullest = max(sum(1 for a in admitted if s <= a < s + span) for s in range(ms - span + 1, ms + 1))
        assert passed == (fullest < limit)
        if passed:
            admitted.append(ms)
    for first in admitted:
        assert sum(1 for a in admitted if first <= a < first + span) <= limit
