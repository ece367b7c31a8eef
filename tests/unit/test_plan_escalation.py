"""When an escalation falls due: `after` counts from when the notice it backs up goes out."""

from datetime import timedelta

from processors.plan import plan
from processors.recipients import Suppression, address_key
from tests.unit.test_plan import NOW, catalog, recipient, request
from tidings.events import QuietHours

QUIET = QuietHours(start="08:00", end="20:00", timezone="UTC")
"""NOW (12:00 UTC) is inside."""


def due(channels: list[str], escalated: str, **changes: object) -> dict[str, object]:
    c = catalog(channels=channels, escalation=[{"after": "5m", "channel": escalated, "unless": "seen"}])
    state = recipient(quiet_hours=QUIET) if changes.pop("quiet", False) else recipient()
    p = plan(request(**changes), state, c, NOW)
    return {cmd.channel: cmd.not_before for cmd in [*p.commands, *p.deferred]}


def test_a_scheduled_requests_escalation_counts_from_the_scheduled_time() -> None:
    """Both fell due at scheduled_at: the reader never had the 5 minutes to see the inbox item."""
    at = NOW + timedelta(days=1)
    assert due(["in_app", "email"], "email", scheduled_at=at) == {
        "in_app": at,
        "email": at + timedelta(minutes=5),
    }


def test_an_escalation_counts_from_the_end_of_the_quiet_hours_that_held_its_notice() -> None:
    """Push and its SMS escalation went out together at the end of quiet hours; an email escalation
    (email does not wait for quiet hours) went out 8 hours before the push it backs up."""
    evening = NOW.replace(hour=20)
    assert due(["push", "sms"], "sms", quiet=True) == {"push": evening, "sms": evening + timedelta(minutes=5)}
    assert due(["push", "email"], "email", quiet=True) == {
        "push": evening,
        "email": evening + timedelta(minutes=5),
    }


def test_an_escalation_counts_from_the_first_notice_that_goes_out() -> None:
    got = due(["in_app", "push", "email"], "email", quiet=True)
    assert got == {"in_app": None, "push": NOW.replace(hour=20), "email": NOW + timedelta(minutes=5)}


def test_with_no_notice_to_back_up_the_escalation_goes_at_once() -> None:
    """A push escalated by email for someone with no device: waiting 5 minutes for a `seen` that
    nothing can bring only delayed the one message that could reach them."""
    c = catalog(
        channels=["push", "email"], escalation=[{"after": "5m", "channel": "email", "unless": "seen"}]
    )
    p = plan(request(), recipient().model_copy(update={"devices": {}}), c, NOW)
    [email] = p.commands
    assert (email.channel, email.not_before, p.deferred) == ("email", None, [])
    at = NOW + timedelta(hours=3)
    scheduled = plan(request(scheduled_at=at), recipient().model_copy(update={"devices": {}}), c, NOW)
    assert [(d.channel, d.not_before) for d in scheduled.deferred] == [("email", at)]


def test_with_no_notice_later_steps_keep_their_distance_from_the_first() -> None:
    c = catalog(
        channels=["in_app", "email", "sms"],
        escalation=[
            {"after": "30m", "channel": "sms", "unless": "read"},
            {"after": "5m", "channel": "email", "unless": "read"},
        ],
    )
    p = plan(request(channels=["email", "sms"]), recipient(), c, NOW)
    got = {cmd.channel: cmd.not_before for cmd in [*p.commands, *p.deferred]}
    assert got == {"email": None, "sms": NOW + timedelta(minutes=25)}
    with_inbox = plan(request(), recipient(), c, NOW)
    assert {cmd.channel: cmd.not_before for cmd in [*with_inbox.commands, *with_inbox.deferred]} == {
        "in_app": None,
        "email": NOW + timedelta(minutes=5),
        "sms": NOW + timedelta(minutes=30),
    }


def test_with_no_notice_later_steps_count_from_the_first_step_held_by_quiet_hours() -> None:
    """Push at 5 minutes and email at 30 for someone with no email address but a device, inside quiet
    hours: the push goes at their end, and the email backing it up 25 minutes later, not at 12:25."""
    c = catalog(
        channels=["sms", "push", "email"],
        escalation=[
            {"after": "5m", "channel": "push", "unless": "seen"},
            {"after": "30m", "channel": "email", "unless": "seen"},
        ],
    )
    state = recipient(quiet_hours=QUIET).model_copy(update={"phone": None})
    p = plan(request(), state, c, NOW)
    evening = NOW.replace(hour=20)
    got = {cmd.channel: cmd.not_before for cmd in [*p.commands, *p.deferred]}
    assert got == {"push": evening, "email": evening + timedelta(minutes=25)}


def test_with_no_notice_a_step_that_sends_nothing_is_no_notice_either() -> None:
    """The push step's only device is suppressed: the email step is the first message, so it goes."""
    c = catalog(
        channels=["push", "email"],
        escalation=[
            {"after": "5m", "channel": "push", "unless": "seen"},
            {"after": "30m", "channel": "email", "unless": "seen"},
        ],
    )
    dead = {address_key("push", "fcm-token"): Suppression(reason="token_invalid", since=NOW)}
    p = plan(request(), recipient().model_copy(update={"suppressions": dead}), c, NOW)
    assert [(cmd.channel, cmd.not_before) for cmd in [*p.commands, *p.deferred]] == [("email", None)]
