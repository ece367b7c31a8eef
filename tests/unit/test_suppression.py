import json
from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from processors.recipients import RecipientState, address_key, fold
from processors.suppression import OPERATOR, AddressSuppression, Register, folded, take
from tidings.events import ProviderFeedback, RecipientUpdated

T0 = datetime(2026, 1, 1, tzinfo=UTC)
KINDS = [
    "complaint",
    "sms_stop",
    "unsubscribe",
    "hard_bounce",
    "soft_bounce_limit",
    "resubscribe",
    "sms_start",
]
Feedback = tuple[str, int, str | None]
feedback = st.tuples(st.sampled_from(KINDS), st.integers(0, 6), st.sampled_from([None, "sendgrid", OPERATOR]))


def fb(kind: str, at: datetime = T0, provider: str | None = None) -> ProviderFeedback:
    return ProviderFeedback(
        tenant_id="t",
        recipient_id="r",
        kind=kind,
        channel="email",
        address="a@x.io",
        occurred_at=at,
        provider=provider,
    )


def replay(*events: object, state: RecipientState | None = None) -> RecipientState:
    for e in events:
        state = fold(state, e)  # type: ignore[arg-type]
    assert state is not None
    return state


def address(events: list[Feedback]) -> AddressSuppression:
    s = AddressSuppression()
    for kind, minutes, provider in events:
        s = folded(s, kind, T0 + timedelta(minutes=minutes), provider)
    return s


def state_of(r: Register | None) -> str | None:
    return None if r is None else r.reason


def test_an_operators_lift_after_a_hard_bounce_uncovers_the_owners_unsubscribe() -> None:
    """One reason per address: the hard bounce replaced the unsubscribe, and the operator's lift of the
    bounce erased it, so marketing mail went to someone who had unsubscribed."""
    s = replay(
        fb("unsubscribe"),
        fb("hard_bounce", T0 + timedelta(hours=1)),
        fb("resubscribe", T0 + timedelta(hours=2), OPERATOR),
    )
    kept = s.suppressions[address_key("email", "a@x.io")]
    assert (kept.reason, kept.since, kept.all_messages) == ("unsubscribe", T0, False)
    owner = fold(s, fb("resubscribe", T0 + timedelta(hours=3), "sendgrid"))
    assert owner.suppressions == {}


def test_an_operators_lift_never_lifts_a_refusal_and_an_owners_lifts_both() -> None:
    complained = replay(fb("complaint"), fb("resubscribe", T0 + timedelta(hours=1), OPERATOR))
    assert complained.suppressions[address_key("email", "a@x.io")].reason == "complaint"
    both = replay(fb("complaint"), fb("hard_bounce"), fb("sms_start", T0 + timedelta(hours=1)))
    assert both.suppressions == {}


def test_a_state_kept_before_the_registers_keeps_its_refusal_under_a_later_failure() -> None:
    old = RecipientState.model_validate(
        {
            "suppressions": {"email:a@x.io": {"reason": "unsubscribe", "since": T0, "all_messages": False}},
            "feedback_at": {"email:a@x.io": T0},
        }
    )
    s = replay(
        fb("hard_bounce", T0 + timedelta(hours=1)),
        fb("resubscribe", T0 + timedelta(hours=2), OPERATOR),
        state=old,
    )
    assert s.suppressions["email:a@x.io"].reason == "unsubscribe"
    lifted = RecipientState.model_validate({"feedback_at": {"email:a@x.io": T0 + timedelta(hours=1)}})
    assert replay(fb("complaint"), state=lifted).suppressions == {}, (
        "a lift kept before lost to older feedback"
    )


def test_setting_the_address_again_lifts_both_and_older_feedback_stays_lost() -> None:
    s = replay(fb("unsubscribe"), fb("hard_bounce", T0 + timedelta(hours=1)))
    s = fold(s, RecipientUpdated(tenant_id="t", recipient_id="r", email="b@x.io"))
    s = fold(s, RecipientUpdated(tenant_id="t", recipient_id="r", email="a@x.io"))
    assert s.suppressions == {}
    assert fold(s, fb("unsubscribe", T0 - timedelta(hours=1))).suppressions == {}
    assert fold(s, fb("unsubscribe", T0 + timedelta(hours=2))).suppressions


def test_since_does_not_move_back_across_a_lift() -> None:
    """A suppression at T1 retried after its lift (T3) and a new suppression (T5) set `since` to T1."""
    r = take(None, "hard_bounce", T0)
    r = take(r, None, T0 + timedelta(minutes=3))
    r = take(r, "hard_bounce", T0 + timedelta(minutes=5))
    assert take(r, "hard_bounce", T0).since == T0 + timedelta(minutes=5)
    assert take(r, "hard_bounce", T0 + timedelta(minutes=4)).since == T0 + timedelta(minutes=4)


@given(st.lists(feedback, max_size=8), st.randoms(use_true_random=False))
def test_reordered_and_duplicated_feedback_converge(events: list[Feedback], rnd: object) -> None:
    shuffled = events + events[: len(events) // 2]
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    one, other = address(events), address(shuffled)
    assert state_of(one.refusal) == state_of(other.refusal)
    assert state_of(one.failure) == state_of(other.failure)
    assert state_of(one.effective()) == state_of(other.effective())


@given(st.lists(feedback, max_size=8, unique_by=lambda e: e[1]))
def test_in_time_order_since_is_where_the_current_run_began(events: list[Feedback]) -> None:
    """Exact for distinct provider times; at a shared instant `since` is approximate (module docstring)."""
    ordered = sorted(events, key=lambda e: e[1])
    s = address(ordered)
    for register, kinds in ((s.failure, {"hard_bounce", "soft_bounce_limit"}), (s.refusal, None)):
        if register is None or register.reason is None:
            continue
        mine = [
            m
            for k, m, p in ordered
            if (k in kinds if kinds else k in {"complaint", "sms_stop", "unsubscribe"})
        ]
        lifts = [
            m
            for k, m, p in ordered
            if k in {"resubscribe", "sms_start"} and (kinds is not None or p != OPERATOR)
        ]
        boundary = max((m for m in lifts if m < max(mine)), default=-1)
        assert register.since == T0 + timedelta(minutes=min(m for m in mine if m > boundary))


def test_at_the_same_instant_the_graver_refusal_wins_whatever_the_order() -> None:
    """Alphabetically an unsubscribe beat a complaint, and critical mail still went to a complainer."""
    for kinds in (["complaint", "unsubscribe"], ["unsubscribe", "complaint"]):
        s = replay(*(fb(k) for k in kinds))
        kept = s.suppressions[address_key("email", "a@x.io")]
        assert (kept.reason, kept.all_messages) == ("complaint", True)


def test_the_soft_bounce_limit_is_dated_by_its_window_not_by_arrival_order() -> None:
    """Bounces at 1h, 2h and 3h and an operator's lift at 2.5h: the router dated the limit at the
    bounce that arrived last, so the address stayed open in one order and the projection (which dates
    it at the window's latest bounce) showed it suppressed in both."""
    bounces = {h: fb("soft_bounce", T0 + timedelta(hours=h)) for h in (1, 2, 3)}
    lift = fb("resubscribe", T0 + timedelta(hours=2.5), OPERATOR)
    for order in ([1, 2, 0, 3], [1, 3, 0, 2], [0, 3, 2, 1]):
        s = replay(*(lift if h == 0 else bounces[h] for h in order))
        kept = s.suppressions[address_key("email", "a@x.io")]
        assert (kept.reason, kept.since) == ("soft_bounce_limit", T0 + timedelta(hours=3)), order


def test_a_complaint_reported_for_the_idna_form_suppresses_the_unicode_address() -> None:
    """The gateways send `bücher.de` as `xn--bcher-kva.de` and providers report that form: keyed as
    reported, the complaint never matched the recipient's address."""
    s = replay(
        RecipientUpdated(tenant_id="t", recipient_id="r", email="anna@Bücher.de"),
        ProviderFeedback(
            tenant_id="t",
            recipient_id="r",
            kind="complaint",
            channel="email",
            address="anna@xn--bcher-kva.de",
            provider="ses",
        ),
    )
    assert address_key("email", "anna@Bücher.de") in s.suppressions
    assert address_key("email", "anna@bücher.de") == "email:anna@bücher.de"


def test_a_state_kept_with_an_idna_key_still_suppresses_and_every_spelling_of_the_domain_matches() -> None:
    """Keys were the address lower-cased: a complaint stored for `xn--bcher-kva.de` stopped matching
    once keys became Unicode, and a decomposed or full-width domain never matched the IDNA form the
    gateways send."""
    stored = {"email:ann@xn--bcher-kva.de": {"reason": "complaint", "since": "2026-01-01T00:00:00Z"}}
    kept = RecipientState.model_validate_json(json.dumps({"suppressions": stored}))
    for spelling in ("ann@xn--bcher-kva.de", "ann@Bücher.de", "ann@bu\u0308cher.de", "ann@bücher\uff0ede"):
        assert address_key("email", spelling) in kept.suppressions, spelling
