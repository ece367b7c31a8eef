"""Retry-After as the gateways read it from any HTTP answer, a tenant's endpoint's included."""

from __future__ import annotations

import time
from email.utils import formatdate
from typing import Any

import pytest

from gateways._http import MAX_RETRY_AFTER_S, retry_after
from gateways.base import DeliveryRejected, ProviderThrottled
from gateways.limits import Circuits


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("120", 120.0),
        ("0", 0.0),
        ("-5", 0.0),
        ("1.5", 1.5),
        ("31536000", MAX_RETRY_AFTER_S),
        ("1e400", None),
        ("inf", None),
        ("-inf", None),
        ("nan", None),
        ("soon", None),
        ("", None),
        (None, None),
    ],
)
def test_retry_after_is_finite_and_bounded(value: str | None, seconds: float | None) -> None:
    assert retry_after(value) == seconds


def test_an_http_date_counts_from_now_and_is_bounded_too() -> None:
    assert 55 <= (retry_after(formatdate(time.time() + 60, usegmt=True)) or 0) <= 60
    assert retry_after(formatdate(time.time() + 10 * 365 * 86400, usegmt=True)) == MAX_RETRY_AFTER_S
    assert retry_after("Fri, 31 Dec 99999 23:59:59 GMT") is None


def test_an_http_date_without_a_zone_is_gmt_not_the_hosts_local_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """RFC 9110 makes recipients accept the asctime form, which has no zone; it was read as local time,
    hours off on a host outside UTC."""
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        asctime = time.strftime("%a %b %d %H:%M:%S %Y", time.gmtime(time.time() + 120))
        assert 115 <= (retry_after(asctime) or 0) <= 120
    finally:
        monkeypatch.undo()
        time.tzset()


def test_a_retry_after_of_zero_is_no_wait_not_the_cooloff() -> None:
    circuits = Circuits(cooloff=30.0)
    circuits.failure("p", ProviderThrottled("429", retry_after=0.0))
    assert circuits.closed("p")
    circuits.failure("q", ProviderThrottled("429"))
    assert not circuits.closed("q")


def test_a_webhook_endpoints_503_retry_after_is_kept_as_the_floor_of_the_next_attempt() -> None:
    from gateways.base import ProviderUnavailable
    from gateways.webhook.standard import StandardWebhook, WebhookSettings

    webhook = StandardWebhook(WebhookSettings())
    with pytest.raises(ProviderUnavailable) as unavailable:
        webhook._outcome(503, "120", "msg_1")
    assert unavailable.value.retry_after == 120.0
    with pytest.raises(ProviderUnavailable) as failed:
        webhook._outcome(500, "120", "msg_1")
    assert failed.value.retry_after is None


def test_a_reopening_circuit_lets_one_send_probe_until_it_succeeds() -> None:
    """At the reopening, every send in flight went to a provider likely still down, each spending an
    attempt (64 at once): half-open lets one through, the others wait for its answer."""
    from gateways.base import ProviderUnavailable
    from gateways.limits import PROBE_WINDOW

    circuits = Circuits(failures=2, cooloff=0.05)
    for _ in range(2):
        assert circuits.closed("p")
        circuits.failure("p", ProviderUnavailable("503"))
    assert not circuits.closed("p")
    time.sleep(0.06)
    assert [circuits.closed("p") for _ in range(3)] == [True, False, False]
    assert circuits.reopens_at(["p"]) > time.time() + PROBE_WINDOW - 1
    circuits.failure("p", ProviderUnavailable("503"))
    assert not circuits.closed("p")
    time.sleep(0.06)
    assert circuits.closed("p") and not circuits.closed("p")
    circuits.success("p")
    assert all(circuits.closed("p") for _ in range(3))


@pytest.mark.parametrize("step", [-3600.0, 3600.0])
def test_a_wall_clock_step_neither_reopens_nor_stretches_an_open_circuit(
    step: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The wall clock steps an hour (NTP, a VM resumed) while a circuit is open for 30 s: it stays open,
    and reopens 30 s from now in the new clock's terms (an hour forward reopened it at once, an hour
    back held it open for an hour more)."""
    from gateways.base import ProviderUnavailable

    circuits = Circuits(failures=1, cooloff=30.0)
    circuits.failure("p", ProviderUnavailable("503"))
    wall = time.time
    monkeypatch.setattr(time, "time", lambda: wall() + step)
    assert circuits.is_open("p") and not circuits.closed("p")
    assert 28 < circuits.reopens_at(["p"]) - time.time() <= 30


def test_provider_text_no_record_can_hold_is_escaped_not_a_crash_at_every_restart() -> None:
    """aiosmtplib decodes a Latin-1 reply with surrogateescape: the outcome's id and its Avro encoding
    refused the lone surrogate, and the gateway crashed on the command each time it read it again."""

    from gateways.email.smtp import classify
    from gateways.outputs import from_mark
    from tidings.codec import default_codec
    from tidings.events import RenderedContent
    from tidings.topics import Names

    latin1 = b"5.1.1 Empf\xe4nger unbekannt".decode("utf-8", "surrogateescape")
    dead = classify(550, latin1, 60)
    assert isinstance(dead, DeliveryRejected) and "Empf\\xe4nger" in dead.reason
    command = email_command(RenderedContent(subject="s", body="b"))
    mark = {"state": "done", "status": "FAILED", "reason": "smtp 550 " + latin1, "attempt": 0}
    mark |= {"detail": latin1, "provider_message_id": "\ud800", "feedback": latin1}
    for output in from_mark(Names(), command, mark):
        assert default_codec().decode(output.value) is not None


def test_a_dead_address_feedback_carries_the_providers_time_when_it_gave_one() -> None:

    from gateways.outputs import from_mark
    from tidings.codec import default_codec
    from tidings.events import ProviderFeedback, RenderedContent
    from tidings.topics import Names

    command = email_command(RenderedContent(title="t")).model_copy(
        update={"channel": "push", "address": "ab" * 32}
    )
    mark = {"state": "done", "status": "FAILED", "reason": "410", "attempt": 0, "feedback": "410"}
    dated = mark | {"feedback_at": 1_767_225_600_000}
    [undated, dead] = [
        [
            e
            for o in from_mark(Names(), command, m)
            if isinstance(e := default_codec().decode(o.value), ProviderFeedback)
        ]
        for m in (mark, dated)
    ]
    assert undated[0].provider_timestamp is None
    assert dead[0].provider_timestamp is not None and dead[0].provider_timestamp.timestamp() == 1_767_225_600


def test_a_dead_number_is_a_delivery_failure_and_a_refused_one_the_owners_stop() -> None:
    """A number that cannot take texts was filed as its owner's STOP, which only the owner lifts: a
    number given again to someone else stayed suppressed for good, whatever an operator did."""
    from gateways.outputs import from_mark
    from tidings.codec import default_codec
    from tidings.events import ProviderFeedback, RenderedContent
    from tidings.topics import Names

    def kinds(channel: str, address: str, **mark: Any) -> list[str]:
        command = email_command(RenderedContent(body="b")).model_copy(
            update={"channel": channel, "address": address}
        )
        done = {"state": "done", "status": "FAILED", "reason": "dead", "attempt": 0, "feedback": "dead"}
        decoded = [default_codec().decode(o.value) for o in from_mark(Names(), command, done | mark)]
        return [e.kind for e in decoded if isinstance(e, ProviderFeedback)]

    assert kinds("sms", "+447700900123", refused=False) == ["hard_bounce"]
    assert kinds("sms", "+447700900123", refused=True) == ["sms_stop"]
    assert kinds("sms", "+447700900123") == ["sms_stop"], "a mark from before: every dead number was a STOP"
    assert kinds("email", "ada@example.com", refused=True) == ["hard_bounce"]
    assert kinds("email", "ada@example.com") == ["hard_bounce"]
    stop = DeliveryRejected("twilio recipient unsubscribed (STOP)", refused=True)
    assert stop.address_dead and stop.permanent and stop.refused


def test_a_send_begun_before_a_throttle_opened_the_circuit_does_not_close_it() -> None:
    """With 64 sends in flight, the first to succeed after a 429 closed the throttled circuit, and the
    next commands went straight back to the throttled provider."""
    from gateways.base import ProviderThrottled

    circuits = Circuits(failures=5, cooloff=30.0)
    before = time.monotonic()
    circuits.failure("p", ProviderThrottled("429", 60))
    circuits.success("p", before)
    assert circuits.is_open("p")
    circuits.success("p", time.monotonic())
    assert not circuits.is_open("p")


def test_an_email_subject_with_any_line_break_is_one_line_not_a_crash() -> None:
    """The email library refuses U+2028, U+2029, U+0085, VT and FF in a header as it does CR and LF: a
    rendered subject carrying one dead-lettered the message without failover."""

    from gateways.email._message import EmailSettings, build
    from tidings.events import RenderedContent

    command = email_command(RenderedContent(subject="Invoice\u2028#42\x0bdue\x0c\x85now", body="b"))
    message = build(command, EmailSettings(from_address="x@example.com"))
    assert message["Subject"] == "Invoice #42 due now"


def test_an_emails_encoded_body_lines_keep_to_76_and_its_unsubscribe_header_to_one_line() -> None:
    """Built with a 998-octet line policy, a one-line HTML template made 998-character quoted-printable
    lines (RFC 2045 allows 76)."""

    from gateways.email._message import EmailSettings, build
    from tidings.events import RenderedContent

    content = RenderedContent(subject="s", body="naïve " * 500, html="<p>" + "wörd " * 600 + "</p>")
    command = email_command(content).model_copy(update={"category": "news"})
    message = build(command, EmailSettings(from_address="x@example.com"))
    lines = message.as_bytes().split(b"\r\n")
    [unsubscribe] = [line for line in lines if line.startswith(b"List-Unsubscribe:")]
    assert b"=?" not in unsubscribe and len(unsubscribe) > 100
    bodies = [p.get_payload() for p in message.walk() if not p.is_multipart()]
    assert len(bodies) == 2 and max(len(line) for b in bodies for line in b.splitlines()) <= 76


def email_command(content: Any) -> Any:
    from uuid import uuid4

    from tidings.events import DeliveryCommand

    return DeliveryCommand(
        tenant_id="t",
        notification_id=uuid4(),
        delivery_id=uuid4(),
        recipient_id="r",
        channel="email",
        address="a@example.com",
        notification_type="x",
        priority="normal",
        content=content,
    )


def test_a_later_failure_never_cuts_a_throttles_retry_after_short() -> None:
    """A 429 asking an hour, then a failure from a send already in flight (a 429 without the header,
    or timeouts after SMTP's 4.7.x): the circuit reopened after the 30 s cool-off."""
    from gateways.base import ProviderUnavailable

    circuits = Circuits(failures=2, cooloff=30.0)
    circuits.failure("p", ProviderThrottled("429", retry_after=3600.0))
    circuits.failure("p", ProviderThrottled("429"))
    for _ in range(4):
        circuits.failure("p", ProviderUnavailable("timeout"))
    assert circuits.reopens_at(["p"]) - time.time() > 3500
    circuits.failure("q", ProviderThrottled("429", retry_after=5.0))
    circuits.failure("q", ProviderThrottled("429", retry_after=600.0))
    assert circuits.reopens_at(["q"]) - time.time() > 500


def test_open_circuits_past_the_cap_keep_those_reopening_last(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only closed circuits were dropped past the cap: a day of 429s from a push service, one circuit
    per subscription, grew the dict without bound and rebuilt it at every failure."""
    from gateways import limits

    monkeypatch.setattr(limits, "MAX_CIRCUITS", 100)
    circuits = Circuits(cooloff=30.0)
    for i in range(1000):
        circuits.failure(f"sub-{i}", ProviderThrottled("429", retry_after=60.0 + i))
    assert len(circuits.state) <= 100
    assert not circuits.closed("sub-999") and circuits.closed("sub-0")
