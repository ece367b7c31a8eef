"""The APNs provider against the local HTTP/2 APNs server, beyond the shared contract: the request's
headers and payload, HTTP/2 itself, the ES256 provider token's reuse and regeneration, and the answers
that deactivate a device token or name the credentials."""

from __future__ import annotations

import ssl
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from gateways.base import DeliveryRejected, ProviderUnavailable, Sent
from gateways.push.apns import Apns
from tests.servers.push import attempt, pem, push_command, send_one, with_server
from tests.servers.push_apns import ApnsServer
from tidings.events import DeliveryCommand, RenderedContent

Scenario = Callable[[ApnsServer, Apns], Awaitable[Any]]


def with_apns(scenario: Scenario, **settings: Any) -> tuple[ApnsServer, Any]:
    return with_server(ApnsServer, scenario, **settings)


@pytest.mark.parametrize("priority", ["low", "normal", "high", "critical"])
def test_apns_request_carries_topic_priority_expiration_collapse_id_and_payload(priority: str) -> None:
    urgent = priority in ("high", "critical")
    expires_at = datetime.now(UTC) + timedelta(hours=1) if urgent else None
    commands: list[DeliveryCommand] = []

    def command(server: ApnsServer) -> DeliveryCommand:
        commands.append(server.command(priority=priority, expires_at=expires_at))
        return commands[-1]

    server, sent = with_apns(send_one(command))
    (sent_command,) = commands
    delivery = str(sent_command.delivery_id)
    assert sent == Sent("apns", delivery)
    (headers,) = server.received
    assert headers["apns-topic"] == server.topic and headers["apns-push-type"] == "alert"
    assert headers["apns-priority"] == ("10" if urgent else "5")
    if expires_at:
        assert headers["apns-expiration"] == str(int(expires_at.timestamp()))
    else:
        assert abs(int(headers["apns-expiration"]) - (time.time() + 86_400)) < 30
    assert headers["apns-id"] == delivery and headers["apns-collapse-id"] == delivery
    alert = {"title": "Invoice due", "body": "Invoice 17 is due on Friday."}
    ids = {"notification_id": str(sent_command.notification_id), "delivery_id": delivery}
    assert server.accepted == [{"aps": {"alert": alert}, "invoice": 17, "url": "/i/17", "tidings": ids}]


def test_apns_payload_carries_non_ascii_text_unescaped_within_the_size_limit() -> None:
    """800 Cyrillic letters are 1,600 bytes in UTF-8 and 4,800 as `\\u` escapes (over the 4,096 limit)."""
    body = "Ж" * 800

    def command(server: ApnsServer) -> DeliveryCommand:
        return server.command(content=RenderedContent(title="t", body=body))

    server, sent = with_apns(send_one(command))
    assert isinstance(sent, Sent), sent
    assert [m["aps"]["alert"]["body"] for m in server.accepted] == [body]


def test_apns_default_expiration_setting_stores_the_notification_for_that_long() -> None:
    server, sent = with_apns(send_one(lambda s: s.command()), default_expiration=3600)
    assert isinstance(sent, Sent), sent
    expiration = int(server.received[0]["apns-expiration"])
    assert 3590 <= expiration - datetime.now(UTC).timestamp() <= 3600


def test_apns_data_only_command_is_a_background_push_and_data_cannot_replace_aps_or_the_ids() -> None:
    def command(server: ApnsServer) -> DeliveryCommand:
        data_only = RenderedContent(data_json='{"aps": 1, "tidings": 2, "sync": true}')
        commands.append(server.command(priority="critical", content=data_only))
        return commands[-1]

    commands: list[DeliveryCommand] = []
    server, sent = with_apns(send_one(command))
    assert isinstance(sent, Sent), sent
    [c] = commands
    ids = {"notification_id": str(c.notification_id), "delivery_id": str(c.delivery_id)}
    assert server.accepted == [{"aps": {"content-available": 1}, "sync": True, "tidings": ids}]
    assert server.received[0]["apns-push-type"] == "background" and server.received[0]["apns-priority"] == "5"


def test_apns_app_id_of_the_device_overrides_the_topic() -> None:
    def other_app(server: ApnsServer) -> DeliveryCommand:
        device = server.register("com.example.other")
        return push_command("apns", device, params={"app_id": "com.example.other"})

    server, sent = with_apns(send_one(other_app))
    assert isinstance(sent, Sent), sent
    assert server.received[0]["apns-topic"] == "com.example.other"


@pytest.mark.parametrize("app_id", ["com.é.app", "com.example.app\r\nx-injected: 1", " com.example.app"])
def test_apns_an_app_id_that_is_no_bundle_id_is_refused_for_good_without_a_request(app_id: str) -> None:
    """Non-ASCII raised in the HTTP client on every push (a `provider_error` with a stack trace); a line
    break went out inside the header."""

    def odd_app(server: ApnsServer) -> DeliveryCommand:
        return push_command("apns", server.register("com.example.app"), params={"app_id": app_id})

    server, refused = with_apns(send_one(odd_app))
    assert isinstance(refused, DeliveryRejected) and "no bundle id" in refused.reason, refused
    assert refused.permanent and not refused.address_dead
    assert server.received == []


def test_apns_speaks_http2_and_the_server_refuses_http1() -> None:
    async def scenario(server: ApnsServer, provider: Apns) -> Any:
        results = [await attempt(provider, server.command()) for _ in range(2)]
        trust = ssl.create_default_context(cafile=str(server.ca_file))
        async with httpx.AsyncClient(http2=False, verify=trust) as http1:
            refused = await http1.post(f"{server.base_url}/3/device/{server.register()}", content=b"{}")
        return results, refused.status_code

    server, (results, refused) = with_apns(scenario)
    assert all(isinstance(r, Sent) for r in results), results
    assert refused == 505 and server.versions == ["2", "2", "1.1"] and len(server.accepted) == 2


def test_apns_an_answer_trickled_a_byte_at_a_time_times_out_within_the_timeout() -> None:
    """Each byte came within httpx's read timeout, so the send waited as long as the server trickled."""

    async def scenario(server: ApnsServer, provider: Apns) -> tuple[Any, float]:
        server.trickle = True
        started = time.monotonic()
        result = await attempt(provider, server.command())
        return result, time.monotonic() - started

    _, (result, took) = with_apns(scenario)
    assert isinstance(result, ProviderUnavailable) and "timed out" in str(result), result
    assert took < 4.0, f"2 s timeout; the server trickles for 7 s: took {took:.1f}s"


def test_apns_provider_token_is_reused_then_regenerated_after_50_minutes() -> None:
    async def scenario(server: ApnsServer, provider: Apns) -> list[Any]:
        results = [await attempt(provider, server.command()) for _ in range(2)]
        provider.token.issued_at -= 3000
        return [*results, await attempt(provider, server.command())]

    server, results = with_apns(scenario)
    assert all(isinstance(r, Sent) for r in results), results
    first, second, third = server.tokens
    assert first == second and third != first
    header = jwt.get_unverified_header(first)
    assert header["alg"] == "ES256" and header["kid"] == server.key_id
    claims = jwt.decode(third, server.key.public_key(), algorithms=["ES256"])
    assert claims["iss"] == server.team_id and abs(claims["iat"] - datetime.now(UTC).timestamp()) < 60


def test_apns_expired_provider_token_is_unavailable_and_the_next_send_uses_a_new_one() -> None:
    async def scenario(server: ApnsServer, provider: Apns) -> list[Any]:
        server.expired.add(provider.token.current())
        return [await attempt(provider, server.command()) for _ in range(2)]

    server, (refused, sent) = with_apns(scenario)
    assert isinstance(refused, ProviderUnavailable), refused
    assert "credentials" in str(refused) and "ExpiredProviderToken" in str(refused)
    assert isinstance(sent, Sent) and len(server.tokens) == 1 and server.tokens[0] not in server.expired


def test_apns_an_old_token_called_expired_is_renewed_and_the_send_made_at_once() -> None:
    """Each send APNs refused as ExpiredProviderToken was an outage counted against the circuit; a token
    old enough to renew (20 minutes) is renewed and the same send made again."""

    async def scenario(server: ApnsServer, provider: Apns) -> Any:
        old = provider.token.current()
        provider.token.issued_at -= 1800
        server.expired.add(old)
        return await attempt(provider, server.command())

    server, sent = with_apns(scenario)
    assert isinstance(sent, Sent), sent
    assert len(server.tokens) == 1 and server.tokens[0] not in server.expired and len(server.accepted) == 1


def test_apns_token_signed_with_another_key_is_unavailable_naming_the_credentials() -> None:
    other = pem(ec.generate_private_key(ec.SECP256R1()))
    server, result = with_apns(send_one(lambda s: s.command()), private_key=other)
    assert isinstance(result, ProviderUnavailable), result
    assert "credentials" in str(result) and "InvalidProviderToken" in str(result)
    assert server.accepted == []


def _unregistered(server: ApnsServer) -> DeliveryCommand:
    command = server.command()
    server.unregistered.add(command.address)
    return command


def _other_topic(server: ApnsServer) -> DeliveryCommand:
    """A device whose own app_id names an app its token is not for."""
    return push_command("apns", server.register("com.example.other"), params={"app_id": "com.example.third"})


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (_unregistered, "410 Unregistered"),
        (lambda s: push_command("apns", "ab" * 32), "400 BadDeviceToken"),
        (_other_topic, "400 DeviceTokenNotForTopic"),
    ],
    ids=["unregistered", "unknown-token", "token-for-another-app-of-its-own"],
)
def test_apns_dead_tokens_are_permanent_and_address_dead(
    make: Callable[[ApnsServer], DeliveryCommand], reason: str
) -> None:
    async def after_a_success(server: ApnsServer, provider: Apns) -> Any:
        assert isinstance(await attempt(provider, server.command()), Sent)
        return await attempt(provider, make(server))

    server, result = with_apns(after_a_success)
    assert isinstance(result, DeliveryRejected), result
    assert result.permanent and result.address_dead and reason in result.reason
    assert len(server.accepted) == 1 and server.versions == ["2", "2"]


def test_apns_bad_device_tokens_before_any_success_are_the_environment_not_dead_devices() -> None:
    """Apple answers BadDeviceToken for every token of the other environment: a sandbox URL with the
    production app's tokens (or the reverse) marked every device dead, one send at a time."""

    async def scenario(server: ApnsServer, provider: Apns) -> list[Any]:
        results = [await attempt(provider, push_command("apns", "ab" * 32)) for _ in range(2)]
        results.append(await attempt(provider, server.command()))
        return [*results, await attempt(provider, push_command("apns", "ab" * 32))]

    _, [first, second, sent, after] = with_apns(scenario)
    for result in (first, second):
        assert isinstance(result, DeliveryRejected) and "environment" in str(result), result
        assert not result.permanent and not result.address_dead
    assert isinstance(sent, Sent), sent
    assert isinstance(after, DeliveryRejected) and after.address_dead, after

    async def after_a_410(server: ApnsServer, provider: Apns) -> list[Any]:
        return [
            await attempt(provider, _unregistered(server)),
            await attempt(provider, push_command("apns", "ab" * 32)),
        ]

    _, [gone, bad] = with_apns(after_a_410)
    assert isinstance(gone, DeliveryRejected) and gone.address_dead, gone
    assert isinstance(bad, DeliveryRejected) and bad.address_dead, "a 410 says the host knows the tokens"


def test_apns_a_profile_the_other_environment_follows_never_marks_a_bad_token_dead() -> None:
    """A development build's sandbox token at the production host, after production sends succeeded,
    was marked dead, and the sandbox profile behind it in the chain never tried."""

    async def scenario(server: ApnsServer, provider: Apns) -> list[Any]:
        return [await attempt(provider, c) for c in (server.command(), push_command("apns", "ab" * 32))]

    _, [sent, bad] = with_apns(scenario, other_environment_follows=True)
    assert isinstance(sent, Sent), sent
    assert isinstance(bad, DeliveryRejected) and not bad.permanent and not bad.address_dead, bad
    assert bad.failover and "other environment" in bad.reason


@pytest.mark.parametrize("token", ["not-hex", "../../3/device/" + "ab" * 32, "ab" * 8])
def test_apns_token_that_is_not_a_device_token_is_dead_without_a_request(token: str) -> None:
    server, result = with_apns(send_one(lambda s: push_command("apns", token)))
    assert isinstance(result, DeliveryRejected) and result.address_dead, result
    assert server.versions == []


def test_apns_a_410_says_since_when_the_token_is_dead() -> None:
    """Apple's `timestamp` is the feedback's provider time: a device registered again after it keeps its
    token, and APNs often reports a 410 days late."""
    before = time.time()
    _, result = with_apns(send_one(_unregistered))
    assert isinstance(result, DeliveryRejected) and result.dead_since is not None, result
    assert before - 1 <= result.dead_since <= time.time() + 1


def test_apns_a_topic_of_the_settings_refused_is_our_configuration_not_dead_devices() -> None:
    """A wrong TIDINGS_APNS_TOPIC (another app of the team) made every device DeviceTokenNotForTopic and
    marked them all dead; a topic Apple refuses failed every message for good."""
    server, missing = with_apns(send_one(lambda s: s.command()), topic="")
    assert isinstance(missing, ProviderUnavailable) and "MissingTopic" in str(missing), missing
    server, foreign = with_apns(send_one(lambda s: push_command("apns", s.register("com.example.other"))))
    assert isinstance(foreign, DeliveryRejected) and "DeviceTokenNotForTopic" in foreign.reason, foreign
    assert not foreign.permanent and not foreign.address_dead
    assert server.accepted == []


def test_apns_other_400_is_permanent_but_not_dead() -> None:
    def too_large(server: ApnsServer) -> DeliveryCommand:
        server.mode = "reject"
        return server.command()

    server, result = with_apns(send_one(too_large))
    assert isinstance(result, DeliveryRejected), result
    assert result.permanent and not result.address_dead and "PayloadTooLarge" in result.reason
    assert server.accepted == [] and server.versions == ["2"]


def test_apns_too_many_requests_for_one_device_retries_that_message_only() -> None:
    """429 TooManyRequests is a device's own limit: retried later, not a throttle of the provider (its
    circuit would hold up every other device's notifications)."""

    async def scenario(server: ApnsServer, apns: Apns) -> tuple[Any, Any]:
        busy = server.command()
        server.busy.add(busy.address)
        return await attempt(apns, busy), await attempt(apns, server.command())

    server, (busy, other) = with_apns(scenario)
    assert isinstance(busy, DeliveryRejected) and not busy.permanent and not busy.address_dead, busy
    assert "TooManyRequests" in busy.reason
    assert isinstance(other, Sent) and len(server.accepted) == 1
