from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from processors.recipients import RecipientState, address_key, fold
from tidings.codec import default_codec
from tidings.errors import InvalidEvent
from tidings.events import (
    UNIX_EPOCH,
    DeviceRegistered,
    DeviceRemoved,
    PreferenceRule,
    PreferencesUpdated,
    ProviderFeedback,
    RecipientErased,
    RecipientUpdated,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def fb(
    kind: str, address: str = "a@x.io", channel: str = "email", at: datetime = T0, **kw: object
) -> ProviderFeedback:
    return ProviderFeedback(
        tenant_id="t", recipient_id="r", kind=kind, channel=channel, address=address, occurred_at=at, **kw
    )


def replay(*events: object) -> RecipientState:
    state = None
    for e in events:
        state = fold(state, e)  # type: ignore[arg-type]
    assert state is not None
    return state


def test_profile_patch_and_unset() -> None:
    s = replay(
        RecipientUpdated(
            tenant_id="t",
            recipient_id="r",
            email="a@x.io",
            phone="+4915112345678",
            properties_json='{"plan": "pro"}',
        ),
        RecipientUpdated(tenant_id="t", recipient_id="r", locale="de-AT", unset=["phone"]),
    )
    assert (s.email, s.phone, s.locale, s.properties) == ("a@x.io", None, "de-AT", {"plan": "pro"})


def test_preferences_merge_and_replace() -> None:
    s = replay(
        PreferencesUpdated(
            tenant_id="t",
            recipient_id="r",
            muted=True,
            rules=[{"scope": "category", "key": "social", "channel": "email", "enabled": False}],
            quiet_hours={"start": "22:00", "end": "07:00"},
        ),
        PreferencesUpdated(
            tenant_id="t", recipient_id="r", rules=[{"scope": "type", "key": "x", "enabled": True}]
        ),
    )
    assert s.muted and s.rule("category", "social", "email") is False and s.rule("type", "x", None) is True
    assert s.quiet_hours is not None
    s = fold(s, PreferencesUpdated(tenant_id="t", recipient_id="r", replace=True))
    assert not s.muted and s.rules == {} and s.quiet_hours is None


def test_one_hard_bounce_suppresses_and_a_new_address_lifts() -> None:
    s = replay(RecipientUpdated(tenant_id="t", recipient_id="r", email="a@x.io"), fb("hard_bounce"))
    assert address_key("email", "A@X.IO") in s.suppressions
    s = fold(s, RecipientUpdated(tenant_id="t", recipient_id="r", email="b@x.io"))
    assert address_key("email", "a@x.io") in s.suppressions
    s = fold(s, RecipientUpdated(tenant_id="t", recipient_id="r", email="a@x.io"))
    assert s.suppressions == {}
    assert fold(s, fb("hard_bounce")).suppressions == {}, "the same bounce delivered again loses to the lift"
    later = T0 + timedelta(milliseconds=1)
    assert address_key("email", "a@x.io") in fold(s, fb("hard_bounce", at=later)).suppressions


def test_soft_bounces_below_and_at_the_limit() -> None:
    two = replay(fb("soft_bounce", at=T0), fb("soft_bounce", at=T0 + timedelta(days=1)))
    assert two.suppressions == {}
    spread = fold(two, fb("soft_bounce", at=T0 + timedelta(days=30)))
    assert spread.suppressions == {}
    three = fold(two, fb("soft_bounce", at=T0 + timedelta(days=2)))
    assert three.suppressions[address_key("email", "a@x.io")].reason == "soft_bounce_limit"
    retried = fold(two, fb("soft_bounce", at=T0 + timedelta(days=1)))
    assert retried == two, (
        "a provider delivering one bounce twice (a new event id each time) counted it twice"
    )


def test_sms_stop_then_start_and_category_unsubscribe() -> None:
    s = replay(fb("sms_stop", "+4915112345678", "sms"))
    assert s.suppressions
    assert fold(s, fb("sms_start", "+4915112345678", "sms", at=T0 + timedelta(minutes=5))).suppressions == {}
    s = replay(fb("unsubscribe", category="marketing"))
    assert list(s.unsubscribed_categories) == ["marketing/email"] and s.suppressions == {}
    assert fold(s, fb("resubscribe", category="marketing", channel="sms")).unsubscribed_categories
    assert fold(s, fb("resubscribe", category="marketing")).unsubscribed_categories == {}


def test_feedback_older_than_the_addresss_last_changes_nothing_as_in_the_projection() -> None:
    """A STOP the carrier retried after the START that followed it kept the number suppressed in the
    router while the suppressions projection (by provider time) lifted it."""
    number = "+447700900123"
    stop, start = (
        fb("sms_stop", number, "sms", at=T0),
        fb("sms_start", number, "sms", at=T0 + timedelta(minutes=5)),
    )
    assert replay(start, stop).suppressions == {} and replay(stop, start).suppressions == {}
    again = fb("sms_stop", number, "sms", at=T0 + timedelta(minutes=9))
    assert list(replay(start, stop, again).suppressions) == [address_key("sms", number)]
    tie = fb("sms_start", number, "sms", at=T0)
    assert list(replay(stop, tie).suppressions) == list(replay(tie, stop).suppressions) == [f"sms:{number}"]


def test_a_categorys_resubscribe_lifts_only_its_unsubscribe_not_a_complaint() -> None:
    later = T0 + timedelta(days=1)
    s = replay(
        fb("complaint"), fb("unsubscribe", category="news"), fb("resubscribe", category="news", at=later)
    )
    assert (s.unsubscribed_categories, list(s.suppressions)) == ({}, [address_key("email", "a@x.io")])
    assert replay(fb("complaint"), fb("resubscribe", at=later)).suppressions == {}


def test_setting_the_same_email_in_another_case_keeps_its_suppression() -> None:
    def email(address: str) -> RecipientUpdated:
        return RecipientUpdated(tenant_id="t", recipient_id="r", email=address)

    s = replay(email("Alan@Example.com"), fb("complaint", "alan@example.com"))
    assert list(fold(s, email("alan@example.com")).suppressions) == ["email:alan@example.com"]
    assert fold(s, email("alan@elsewhere.com")).suppressions == s.suppressions
    assert fold(fold(s, email("alan@elsewhere.com")), email("ALAN@example.com")).suppressions == {}


def test_token_invalid_removes_device_unless_registered_later() -> None:
    reg = DeviceRegistered(
        tenant_id="t",
        recipient_id="r",
        device_id="d",
        platform="fcm",
        token="tok",
        occurred_at=T0 + timedelta(hours=1),
    )
    assert replay(reg, fb("token_invalid", "tok", "push", at=T0 + timedelta(hours=2))).devices == {}
    stale = replay(reg, fb("token_invalid", "tok", "push", at=T0))
    assert "d" in stale.devices
    assert replay(reg, DeviceRemoved(tenant_id="t", recipient_id="r", device_id="d")).devices == {}


def test_a_late_dead_token_report_spares_a_newer_device_holding_the_token() -> None:
    """d1 and d2 hold the same token, d2 registered after the provider's report: d1 went, and the
    token's suppression blocked d2 too, critical pushes included."""

    def reg(device: str, hours: int) -> DeviceRegistered:
        return DeviceRegistered(
            tenant_id="t",
            recipient_id="r",
            device_id=device,
            platform="fcm",
            token="tok",
            occurred_at=T0 + timedelta(hours=hours),
        )

    s = replay(reg("d1", 0), reg("d2", 2), fb("token_invalid", "tok", "push", at=T0 + timedelta(hours=1)))
    assert list(s.devices) == ["d2"]
    assert address_key("push", "tok") not in s.suppressions
    gone = replay(reg("d1", 0), fb("token_invalid", "tok", "push", at=T0 + timedelta(hours=1)))
    assert gone.devices == {} and address_key("push", "tok") in gone.suppressions


@given(st.permutations([fb("hard_bounce"), fb("hard_bounce"), fb("complaint")]))
def test_duplicate_and_reordered_permanent_feedback_agree(events: list[ProviderFeedback]) -> None:
    s = replay(*events)
    assert list(s.suppressions) == [address_key("email", "a@x.io")]


def test_turning_a_category_on_lifts_only_that_categorys_unsubscribes() -> None:
    s = replay(
        fb("unsubscribe", category="news"),
        fb("unsubscribe", category="news/weekly"),
        fb("unsubscribe", category="news", channel="sms", address="+4915112345678"),
    )
    on = PreferencesUpdated(
        tenant_id="t",
        recipient_id="r",
        rules=[PreferenceRule(scope="category", key="news", channel=None, enabled=True)],
    )
    assert list(fold(s, on).unsubscribed_categories) == ["news/weekly/email"]
    only_sms = on.model_copy(update={"rules": [on.rules[0].model_copy(update={"channel": "sms"})]})
    assert sorted(fold(s, only_sms).unsubscribed_categories) == ["news/email", "news/weekly/email"]


def test_a_state_full_of_properties_still_takes_a_complaint_and_an_opt_out() -> None:
    """One limit for every event dead-lettered the complaint that came after the properties filled it,
    and mail went on to someone who had complained."""
    from processors.recipients import MAX_STATE_BYTES, oversized, state_bytes

    state = fold(None, RecipientUpdated(tenant_id="acme", recipient_id="r", email="r@example.com"))
    for i in range(3):
        filler = min(200_000, MAX_STATE_BYTES - state_bytes(state) - 50)
        update = RecipientUpdated(
            tenant_id="acme", recipient_id="r", properties_json=f'{{"p{i}": "{"x" * filler}"}}'
        )
        state = fold(state, update)
    assert MAX_STATE_BYTES - 100 < state_bytes(state) <= MAX_STATE_BYTES
    complaint = ProviderFeedback(
        tenant_id="acme", recipient_id="r", kind="complaint", channel="email", address="r@example.com"
    )
    opt_out = PreferencesUpdated(
        tenant_id="acme",
        recipient_id="r",
        rules=[{"scope": "category", "key": "marketing", "channel": "email", "enabled": False}],  # type: ignore[list-item]
    )
    more = RecipientUpdated(tenant_id="acme", recipient_id="r", properties_json=f'{{"q": "{"y" * 200}"}}')
    for event in (complaint, opt_out):
        folded = fold(state, event)
        assert state_bytes(folded) > MAX_STATE_BYTES and oversized(state, folded, event) is None, event
    assert oversized(state, fold(state, more), more) == (state_bytes(fold(state, more)), MAX_STATE_BYTES)


def test_feedback_dated_at_the_ends_of_the_calendar_is_dated_when_received() -> None:
    """A bounce stated 9999-12-31T23:59:59.999 made every later change of the address overflow (and be
    dead-lettered), and a soft bounce stated in year 1 overflowed its window."""
    last = datetime(9999, 12, 31, 23, 59, 59, 999000, tzinfo=UTC)
    first = datetime(1, 1, 1, tzinfo=UTC)
    s = replay(
        RecipientUpdated(tenant_id="t", recipient_id="r", email="a@x.io"),
        fb("hard_bounce", provider_timestamp=last),
        fb("soft_bounce", address="b@x.io", provider_timestamp=first),
        RecipientUpdated(tenant_id="t", recipient_id="r", email="b@x.io"),
        RecipientUpdated(tenant_id="t", recipient_id="r", email="a@x.io"),
    )
    assert s.email == "a@x.io" and s.suppressions == {}
    assert fb("hard_bounce", provider_timestamp=last).at == T0
    assert fb("hard_bounce", provider_timestamp=T0 - timedelta(days=3)).at == T0 - timedelta(days=3)


def test_feedback_received_at_the_ends_of_the_calendar_is_refused() -> None:
    """With no provider time it is folded at `occurred_at`, which any producer of the feedback topic sets:
    year 1 overflowed a soft bounce's window and 9999-12-31 the lift after it, and the recipients
    projection stopped on the record at every restart."""
    codec = default_codec()
    for when in (datetime(1, 1, 1, tzinfo=UTC), datetime(9999, 12, 31, 23, 59, 59, 999000, tzinfo=UTC)):
        with pytest.raises(ValidationError, match="received between 1970 and 3000"):
            fb("soft_bounce", at=when)
        record = fb("soft_bounce").to_avro() | {"occurred_at": when}
        with pytest.raises(InvalidEvent):
            codec.decode(codec.encode_record("ProviderFeedback", record))
    assert fb("soft_bounce", at=UNIX_EPOCH).at == UNIX_EPOCH


def test_feedback_dated_before_an_erasure_changes_nothing_and_later_feedback_counts() -> None:
    """The router keeps an erased recipient's state as its erasure's time only: a bounce from before the
    erasure, reported after it, made a state holding the erased address again."""
    known = fold(None, RecipientUpdated(tenant_id="t", recipient_id="r", email="a@x.io", name="Ada"))
    erased = fold(known, RecipientErased(tenant_id="t", recipient_id="r", occurred_at=T0))
    assert erased == RecipientState(erased_at=T0)
    assert (
        fold(erased, RecipientErased(tenant_id="t", recipient_id="r", occurred_at=T0 - timedelta(1)))
        == erased
    )
    assert fold(erased, fb("hard_bounce", at=T0 - timedelta(hours=1))) == erased
    assert fold(erased, fb("complaint", at=T0)) == erased
    again = fold(erased, RecipientUpdated(tenant_id="t", recipient_id="r", email="a@x.io"))
    assert again.erased_at == T0 and again.email == "a@x.io"
    assert fold(again, fb("hard_bounce", at=T0 - timedelta(minutes=1))) == again
    later = fold(again, fb("hard_bounce", at=T0 + timedelta(minutes=1)))
    assert later.suppressions[address_key("email", "a@x.io")].reason == "hard_bounce"
