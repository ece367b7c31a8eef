"""The push providers beyond the shared contract: which platform each accepts, and FCM against its local
service (what a message carries, the OAuth token's caching and refresh, dead-token and credential
answers). APNs and Web Push are in `test_push_apns.py` and `test_push_webpush.py`."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from pydantic import SecretStr, ValidationError

from gateways.base import DeliveryRejected, Provider, ProviderThrottled, ProviderUnavailable, Sent
from gateways.push.fcm import DEVICE_BACKOFF_S, Fcm, FcmSettings
from tests.servers.push import FcmServer, attempt, push_command, send_one, with_server
from tests.servers.push_apns import ApnsServer
from tests.servers.push_webpush import WebPushServer
from tidings.events import DeliveryCommand, RenderedContent


def with_fcm(
    scenario: Callable[[FcmServer, Fcm], Awaitable[Any]],
    setup: Callable[[FcmServer], None] = lambda server: None,
    **settings: Any,
) -> tuple[FcmServer, Any]:
    return with_server(FcmServer, scenario, setup, **settings)


def test_each_push_provider_accepts_only_its_platform() -> None:
    async def build() -> dict[str, Provider]:
        found: dict[str, Provider] = {}
        for server_class in (ApnsServer, FcmServer, WebPushServer):
            async with server_class() as server:
                found[server.name] = server.provider(timeout=1.0)
        return found

    providers = asyncio.run(build())
    assert sorted(providers) == ["apns", "fcm", "webpush"]
    for name, provider in providers.items():
        for platform in ("apns", "fcm", "webpush"):
            assert provider.accepts(push_command(platform, "ab" * 32)) is (platform == name), (name, platform)
        assert not provider.accepts(push_command("android", "ab" * 32))


@pytest.mark.parametrize("priority", ["low", "normal", "high", "critical"])
def test_fcm_message_carries_data_priority_ttl_and_no_android_collapse_key(priority: str) -> None:
    urgent = priority in ("high", "critical")
    expires_at = datetime.now(UTC) + timedelta(seconds=600) if urgent else None
    commands: list[DeliveryCommand] = []

    def command(server: FcmServer) -> DeliveryCommand:
        commands.append(server.command(priority=priority, expires_at=expires_at))
        return commands[-1]

    server, sent = with_fcm(send_one(command))
    assert isinstance(sent, Sent) and sent.provider_message_id
    assert sent.provider_message_id.startswith("projects/tidings-test/messages/")
    (message,) = server.accepted
    (sent_command,) = commands
    delivery = str(sent_command.delivery_id)
    assert message["token"] == sent_command.address
    assert message["notification"] == {"title": "Invoice due", "body": "Invoice 17 is due on Friday."}
    assert message["data"] == {
        "invoice": "17",
        "url": "/i/17",
        "tidings_notification_id": str(sent_command.notification_id),
        "tidings_delivery_id": delivery,
    }
    android, apns = message["android"], message["apns"]["headers"]
    assert "collapse_key" not in android, "FCM keeps four collapse keys per offline device"
    assert apns["apns-collapse-id"] == delivery
    assert android["notification"] == {"tag": delivery}, "a send repeated after a lost answer replaces it"
    assert android["priority"] == ("HIGH" if urgent else "NORMAL")
    assert apns["apns-priority"] == ("10" if urgent else "5")
    if expires_at is None:
        assert "ttl" not in android and "apns-expiration" not in apns
    else:
        assert 590 <= int(android["ttl"].removesuffix("s")) <= 600
        assert apns["apns-expiration"] == str(int(sent_command.expires_at.timestamp()))  # type: ignore[union-attr]


@pytest.mark.parametrize("priority", ["normal", "critical"])
def test_fcm_data_only_message_has_no_notification(priority: str) -> None:
    """An urgent one too goes to iOS at apns-priority 5: FCM refuses data messages to Apple devices at
    10 with INVALID_ARGUMENT, which failed it for good."""

    def command(server: FcmServer) -> DeliveryCommand:
        return server.command(
            content=RenderedContent(data_json='{"sync": true, "n": [1, 2]}'), priority=priority
        )

    server, sent = with_fcm(send_one(command))
    assert isinstance(sent, Sent), sent
    assert "notification" not in server.accepted[0] and "notification" not in server.accepted[0]["android"]
    apns = server.accepted[0]["apns"]
    assert apns["payload"] == {"aps": {"content-available": 1}}
    assert (apns["headers"]["apns-priority"], apns["headers"]["apns-push-type"]) == ("5", "background")
    data = server.accepted[0]["data"]
    assert {k: v for k, v in data.items() if not k.startswith("tidings_")} == {"sync": "true", "n": "[1,2]"}
    assert set(data) - {"sync", "n"} == {"tidings_notification_id", "tidings_delivery_id"}


def test_fcm_access_token_is_exchanged_once_and_reused() -> None:
    async def scenario(server: FcmServer, provider: Fcm) -> list[Any]:
        return [await attempt(provider, server.command()) for _ in range(3)]

    server, results = with_fcm(scenario)
    assert all(isinstance(r, Sent) for r in results), results
    assert server.exchanges == 1 and len(server.accepted) == 3


def test_fcm_access_token_is_refreshed_before_it_expires() -> None:
    async def scenario(server: FcmServer, provider: Fcm) -> list[Any]:
        first = [await attempt(provider, server.command()) for _ in range(2)]
        exchanged = server.exchanges
        await asyncio.sleep(3.1)
        return [*first, exchanged, await attempt(provider, server.command())]

    def short_tokens(server: FcmServer) -> None:
        server.token_lifetime = 3

    server, (first, second, exchanged, third) = with_fcm(scenario, short_tokens, token_margin=0)
    assert all(isinstance(r, Sent) for r in (first, second, third))
    assert exchanged == 1 and server.exchanges == 2
    assert server.requests == 3, "the token was refreshed after a 401, not before it expired"


def test_fcm_refreshes_a_revoked_token_once_and_sends() -> None:
    async def scenario(server: FcmServer, provider: Fcm) -> list[Any]:
        first = await attempt(provider, server.command())
        server.revoke()
        return [first, await attempt(provider, server.command())]

    server, results = with_fcm(scenario)
    assert all(isinstance(r, Sent) for r in results), results
    assert server.exchanges == 2 and len(server.accepted) == 2


def test_fcm_401_after_a_refresh_is_unavailable_naming_the_credentials() -> None:
    def refuse_every_token(server: FcmServer) -> None:
        server.token_lifetime = 0

    server, result = with_fcm(send_one(lambda s: s.command()), refuse_every_token)
    assert isinstance(result, ProviderUnavailable) and "credentials" in str(result), result
    assert server.exchanges == 2 and server.requests == 2 and server.accepted == []


def test_fcm_assertion_signed_with_another_key_is_refused_as_credentials() -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    server, result = with_fcm(send_one(lambda s: s.command()), key=other)
    assert isinstance(result, ProviderUnavailable) and "credentials" in str(result), result
    assert "invalid_grant" in str(result) or "Signature" in str(result)
    assert server.exchanges == 0 and server.requests == 0


def test_fcm_a_refused_token_exchange_answers_every_send_queued_behind_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each send waiting for the token made its own exchange in turn: with the token endpoint hanging
    (10 s timeout) the last of 64 concurrent sends waited over ten minutes."""
    import gateways.push.fcm

    monkeypatch.setattr(gateways.push.fcm, "EXCHANGE_HOLD", 0.5)

    async def scenario(server: FcmServer, provider: Fcm) -> list[Any]:
        queued = await asyncio.gather(*(attempt(provider, server.command()) for _ in range(8)))
        asked = server.grants_asked
        await asyncio.sleep(0.6)
        return [*queued, asked, await attempt(provider, server.command())]

    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    server, [*queued, asked, later] = with_fcm(scenario, key=other)
    assert all(isinstance(r, ProviderUnavailable) and "credentials" in str(r) for r in queued), queued
    assert asked == 1, "one exchange for the sends queued behind it"
    assert isinstance(later, ProviderUnavailable) and server.grants_asked == 2, "asked again after the hold"


def test_fcm_wrong_project_is_unavailable_naming_the_credentials() -> None:
    server, result = with_fcm(send_one(lambda s: s.command()), project_id="someone-else")
    assert isinstance(result, ProviderUnavailable) and "credentials" in str(result), result
    assert "PERMISSION_DENIED" in str(result) and server.accepted == []


def test_fcm_third_party_auth_error_is_retried_without_a_token_refresh_or_the_circuit() -> None:
    """One platform's credentials (the APNs key uploaded to Firebase), not an outage: as
    ProviderUnavailable it opened the circuit Android pushes share."""

    def apns_key_refused(server: FcmServer) -> None:
        server.third_party_refused = True

    server, result = with_fcm(send_one(lambda s: s.command()), apns_key_refused)
    assert isinstance(result, DeliveryRejected) and "THIRD_PARTY_AUTH_ERROR" in str(result), result
    assert not result.permanent and not result.address_dead
    assert server.exchanges == 1


def _unregistered(server: FcmServer) -> DeliveryCommand:
    command = server.command()
    server.devices.discard(command.address)
    return command


def _foreign(server: FcmServer) -> DeliveryCommand:
    command = server.command()
    server.foreign.add(command.address)
    return command


@pytest.mark.parametrize(
    ("make", "code"),
    [
        (_unregistered, "UNREGISTERED"),
        (lambda s: push_command("fcm", "not-a-registration-token"), "INVALID_ARGUMENT"),
    ],
    ids=["unregistered", "malformed-token"],
)
def test_fcm_dead_tokens_are_permanent_and_address_dead(
    make: Callable[[FcmServer], DeliveryCommand], code: str
) -> None:
    server, result = with_fcm(send_one(make))
    assert isinstance(result, DeliveryRejected), result
    assert result.permanent and result.address_dead and code in result.reason
    assert server.accepted == []


def test_fcm_token_of_another_project_is_retried_and_the_device_kept() -> None:
    """SENDER_ID_MISMATCH is a wrong project id as often as a foreign token: removing every device over
    our configuration would lose them all, so the message is retried (then dead-lettered, replayable)."""
    server, result = with_fcm(send_one(_foreign))
    assert isinstance(result, DeliveryRejected), result
    assert not result.permanent and not result.address_dead and "SENDER_ID_MISMATCH" in result.reason
    assert server.accepted == []


def test_fcm_a_devices_quota_retries_that_message_and_the_projects_throttles_the_provider() -> None:
    """QUOTA_EXCEEDED is the project's rate, one device's or a topic's: one chatty device opened the
    provider's circuit for every tenant's pushes."""

    def device(server: FcmServer) -> None:
        server.mode = "device_quota"

    _, result = with_fcm(send_one(lambda s: s.command()), device)
    assert isinstance(result, DeliveryRejected) and not result.permanent and not result.address_dead, result
    assert result.retry_after == DEVICE_BACKOFF_S and "device" in result.reason

    def project(server: FcmServer) -> None:
        server.mode, server.retry_after = "throttle", 7

    _, throttled = with_fcm(send_one(lambda s: s.command()), project)
    assert isinstance(throttled, ProviderThrottled) and throttled.retry_after == 7, throttled


def test_fcm_invalid_argument_about_the_payload_is_permanent_but_not_dead() -> None:
    def reserved_key(server: FcmServer) -> DeliveryCommand:
        return server.command(content=RenderedContent(title="t", data_json='{"google.sent_time": "1"}'))

    server, result = with_fcm(send_one(reserved_key))
    assert isinstance(result, DeliveryRejected), result
    assert result.permanent and not result.address_dead and "Invalid data key" in result.reason
    assert server.accepted == [] and server.exchanges == 1


def test_fcm_reads_the_service_account_from_a_file(tmp_path: Path) -> None:
    async def scenario(server: FcmServer, provider: Fcm) -> Any:
        key_file = tmp_path / "service-account.json"
        key_file.write_text(server.service_account())
        from_file = Fcm(FcmSettings(service_account_file=key_file, base_url=server.base_url))
        assert from_file.account.client_email == json.loads(key_file.read_text())["client_email"]
        return await attempt(from_file, server.command())

    server, result = with_fcm(scenario)
    assert isinstance(result, Sent) and len(server.accepted) == 1


def test_fcm_settings_need_exactly_one_service_account_source(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="exactly one"):
        FcmSettings()
    with pytest.raises(ValidationError, match="exactly one"):
        FcmSettings(service_account_json=SecretStr("{}"), service_account_file=tmp_path / "key.json")


def test_fcm_a_redirect_is_our_setup_and_fails_over_not_the_message() -> None:
    """A 308 (a base URL behind a redirecting proxy) refused nothing of the message: it failed for good."""

    def moved(server: FcmServer) -> None:
        server.moved = "https://fcm.example.com/"

    server, result = with_fcm(send_one(lambda s: s.command()), moved)
    assert isinstance(result, ProviderUnavailable) and "308" in str(result), result
    assert server.accepted == []
