"""The Twilio and Vonage providers against their local API servers, beyond the shared contract: what each
request carries (To/From/Body, E.164 without "+" for Vonage, `type=unicode`, `client-ref`), the vendor
refusals and how they map (a STOP-ed recipient is a dead address; misconfigured accounts fail over), and
texts refused before any request (too many segments, no body, not E.164)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from pydantic import SecretStr, ValidationError

from gateways.base import DeliveryRejected, ProviderThrottled, ProviderUnavailable, Sent
from gateways.sms.twilio import TwilioSettings
from tests.servers.http import send_once as send
from tests.servers.sms import SmsApiServer, TwilioServer, VonageServer, sms_command
from tidings.events import DeliveryCommand

SERVERS: dict[str, type[SmsApiServer]] = {"twilio": TwilioServer, "vonage": VonageServer}
SERVICE = "MG" + "0123456789abcdef" * 2


def test_twilio_request_carries_to_from_and_body() -> None:
    command = sms_command(body="Your code is 123456. Don't share it.")
    result, server = send(TwilioServer, command)
    assert isinstance(result, Sent) and result.provider == "twilio"
    assert server.ids == [[result.provider_message_id]]
    assert server.accepted == [{"To": "+447700900123", "From": "+15005550006", "Body": command.content.body}]


def test_twilio_messaging_service_replaces_from() -> None:
    result, server = send(TwilioServer, from_number=None, messaging_service_sid=SERVICE)
    assert isinstance(result, Sent), result
    (form,) = server.accepted
    assert form["MessagingServiceSid"] == SERVICE and "From" not in form


def test_twilio_settings_need_a_sender() -> None:
    with pytest.raises(ValidationError, match="from_number or messaging_service_sid"):
        TwilioSettings(account_sid="AC" + "0" * 32, auth_token=SecretStr("t"))


@pytest.mark.parametrize(
    ("setup", "dead", "refused"),
    [
        (lambda s: s.unsubscribed.add("+447700900123"), "STOP", True),
        (lambda s: s.landlines.add("+447700900123"), "not a mobile", False),
        (
            lambda s: setattr(s, "force_error", (400, 21211, "The 'To' number is not a valid phone number.")),
            "invalid",
            False,
        ),
        (
            lambda s: setattr(s, "force_error", (400, 21635, "'To' number cannot be a landline")),
            "landline",
            False,
        ),
    ],
    ids=["21610 unsubscribed", "21614 not a mobile", "21211 invalid number", "21635 landline"],
)
def test_twilio_dead_recipients_are_permanent_and_address_dead(
    setup: Callable[[Any], None], dead: str, refused: bool
) -> None:
    """A STOP is the owner's refusal (`sms_stop` feedback); the others are dead numbers (`hard_bounce`)."""
    result, server = send(TwilioServer, setup=setup)
    assert isinstance(result, DeliveryRejected) and result.permanent and result.address_dead, result
    assert dead in result.reason and result.refused is refused
    assert server.accepted == []


@pytest.mark.parametrize(
    ("status", "code"),
    [(400, 21212), (400, 21603)],
    ids=["21212 invalid From", "21603 From missing"],
)
def test_twilio_account_misconfiguration_is_unavailable(status: int, code: int) -> None:
    result, _ = send(TwilioServer, setup=lambda s: setattr(s, "force_error", (status, code, "misconfigured")))
    assert isinstance(result, ProviderUnavailable), result
    assert f"code {code}" in str(result)


@pytest.mark.parametrize("code", [21408, 21612])
def test_twilio_a_destination_it_cannot_reach_fails_over_that_message_without_opening_the_circuit(
    code: int,
) -> None:
    """21408 (region) and 21612 (no route) are about the destination: as ProviderUnavailable, five sends
    to one country opened the circuit for every tenant's messages."""
    result, _ = send(TwilioServer, setup=lambda s: setattr(s, "force_error", (400, code, "unrouted")))
    assert isinstance(result, DeliveryRejected) and not result.permanent and not result.address_dead, result
    assert f"code {code}" in result.reason


def test_twilio_a_sender_that_cannot_reach_the_destination_fails_over_without_the_circuit() -> None:
    """21606 says the From number is not message-capable "for this destination": since Twilio split
    the account-wide causes into their own codes (July 2024), it is the destination's, like 21408."""
    result, server = send(TwilioServer, from_number="+15005550001")
    assert isinstance(result, DeliveryRejected) and not result.permanent and "21606" in str(result), result
    assert server.accepted == []


def test_twilio_refused_credentials_and_unknown_account_are_unavailable() -> None:
    result, _ = send(TwilioServer, auth_token=SecretStr("wrong-token"))
    assert isinstance(result, ProviderUnavailable) and "credentials" in str(result), result

    async def scenario() -> Any:
        async with TwilioServer() as server:
            provider = server.provider(timeout=2.0, base_url=f"{server.base_url}/elsewhere")
            async with aiohttp.ClientSession() as session:
                try:
                    return await provider.send(session, server.command())
                except Exception as exc:
                    return exc

    result = asyncio.run(scenario())
    assert isinstance(result, ProviderUnavailable) and "20404" in str(result), result


def test_twilio_other_400s_are_permanent_without_dead_address() -> None:
    result, _ = send(TwilioServer, setup=lambda s: setattr(s, "force_error", (400, 21617, "Body too long")))
    assert isinstance(result, DeliveryRejected) and result.permanent and not result.address_dead, result


def test_twilio_full_queue_and_429_without_retry_after_use_the_setting() -> None:
    result, _ = send(
        TwilioServer,
        setup=lambda s: setattr(s, "force_error", (400, 21611, "queue full")),
        throttle_retry_seconds=2.5,
    )
    assert isinstance(result, ProviderThrottled) and result.retry_after == 2.5, result

    def throttle_without_header(server: Any) -> None:
        server.mode, server.send_retry_after = "throttle", False

    result, _ = send(TwilioServer, setup=throttle_without_header, throttle_retry_seconds=2.5)
    assert isinstance(result, ProviderThrottled) and result.retry_after == 2.5, result


def test_vonage_request_carries_the_documented_parameters() -> None:
    command = sms_command(body="Your code is 123456 [expires in 5 min] ~ €")
    result, server = send(VonageServer, command)
    assert isinstance(result, Sent) and result.provider == "vonage", result
    assert server.ids == [[result.provider_message_id]]
    assert server.accepted == [
        {
            "api_key": server.api_key,
            "api_secret": server.api_secret,
            "from": "Tidings",
            "to": "447700900123",
            "text": command.content.body,
            "type": "text",
            "client-ref": str(command.delivery_id),
        }
    ]


@pytest.mark.parametrize("body", ["Ваш код: 123456", "Your code is 123456 🎉", "Código ç"])
def test_vonage_sends_ucs2_texts_as_unicode(body: str) -> None:
    result, server = send(VonageServer, sms_command(body=body))
    assert isinstance(result, Sent), result
    assert server.accepted[0]["type"] == "unicode" and server.accepted[0]["text"] == body


def test_vonage_concatenated_text_is_sent_with_the_first_parts_id() -> None:
    result, server = send(VonageServer, sms_command(body="word " * 60))
    assert isinstance(result, Sent), result
    (ids,) = server.ids
    assert len(ids) == 2 and result.provider_message_id == ids[0]


STATUSES: list[tuple[str, type[Exception], bool | str]] = [
    ("1", ProviderThrottled, False),
    ("2", ProviderUnavailable, False),
    ("3", DeliveryRejected, False),
    ("4", ProviderUnavailable, False),
    ("5", ProviderUnavailable, False),
    ("6", DeliveryRejected, False),
    ("7", DeliveryRejected, "refused"),
    ("8", ProviderUnavailable, False),
    ("9", ProviderUnavailable, False),
    ("10", ProviderThrottled, False),
    ("11", ProviderUnavailable, False),
    ("12", DeliveryRejected, False),
    ("14", ProviderUnavailable, False),
    ("15", ProviderUnavailable, False),
    ("22", DeliveryRejected, False),
    ("29", ProviderUnavailable, False),
    ("32", ProviderUnavailable, False),
    ("33", DeliveryRejected, True),
]


@pytest.mark.parametrize(("status", "expected", "dead"), STATUSES, ids=[s[0] for s in STATUSES])
def test_vonage_status_codes(status: str, expected: type[Exception], dead: bool | str) -> None:
    result, server = send(
        VonageServer,
        setup=lambda s: setattr(s, "force_status", (status, f"error text {status}")),
        throttle_retry_seconds=4.0,
    )
    assert type(result) is expected, result
    assert f"status {status}" in str(result) and f"error text {status}" in str(result)
    if isinstance(result, DeliveryRejected):
        assert result.permanent and result.address_dead is bool(dead)
        assert result.refused is (dead == "refused")
    if isinstance(result, ProviderThrottled):
        assert result.retry_after == 4.0
    assert server.accepted == []


def test_vonage_barred_number_is_address_dead_and_bad_credentials_unavailable() -> None:
    result, _ = send(VonageServer, setup=lambda s: s.barred.add("447700900123"))
    assert isinstance(result, DeliveryRejected) and result.address_dead and result.refused, result
    result, _ = send(VonageServer, api_secret=SecretStr("wrong"))
    assert isinstance(result, ProviderUnavailable) and "credentials" in str(result), result


@pytest.mark.parametrize(
    ("http_status", "expected"),
    [
        (503, ProviderUnavailable),
        (401, ProviderUnavailable),
        (400, DeliveryRejected),
        (200, ProviderUnavailable),
    ],
)
def test_vonage_http_level_answers(http_status: int, expected: type[Exception]) -> None:
    result, _ = send(VonageServer, setup=lambda s: setattr(s, "http_status", http_status))
    assert type(result) is expected, result


def test_vonage_an_acceptance_whose_answer_breaks_off_is_sent_not_sent_again() -> None:
    """A 200 cut short before its statuses was ProviderUnavailable: the text went out again by the next
    provider or retry, and the recipient got it twice."""
    result, server = send(VonageServer, setup=lambda s: setattr(s, "cut_answer", True))
    assert isinstance(result, Sent) and result.provider_message_id is None, result
    assert len(server.accepted) == 1


def test_vonage_http_429_prefers_retry_after_over_the_setting() -> None:
    def throttle(server: Any) -> None:
        server.http_status, server.retry_after = 429, 3

    result, _ = send(VonageServer, setup=throttle, throttle_retry_seconds=9.0)
    assert isinstance(result, ProviderThrottled) and result.retry_after == 3, result


@pytest.mark.parametrize("name", sorted(SERVERS))
@pytest.mark.parametrize(
    ("command", "reason"),
    [
        (sms_command(body="a" * 307), "3 segments (GSM-7, 307 units), more than max_segments 2"),
        (sms_command(body="я" * 135), "3 segments (UCS-2, 135 units), more than max_segments 2"),
        (sms_command(body=""), "no body"),
        (sms_command(address="447700900123"), "E.164"),
    ],
    ids=["gsm too long", "ucs2 too long", "empty", "not e164"],
)
def test_refused_before_any_request(name: str, command: DeliveryCommand, reason: str) -> None:
    result, server = send(SERVERS[name], command, max_segments=2)
    assert isinstance(result, DeliveryRejected) and result.permanent and not result.address_dead, result
    assert reason in result.reason
    assert server.requests == 0


@pytest.mark.parametrize("name", sorted(SERVERS))
def test_max_segments_allows_a_text_at_the_limit(name: str) -> None:
    result, server = send(SERVERS[name], sms_command(body="a" * 306), max_segments=2)
    assert isinstance(result, Sent), result
    assert server.requests == 1
