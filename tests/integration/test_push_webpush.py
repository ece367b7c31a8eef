"""The Web Push provider against the local push service, beyond the shared contract: the decrypted
payload, the RFC 8030 headers (TTL, Urgency, Topic), the VAPID JWT and its reuse, subscriptions that
are gone or unusable, credentials refused, and the SSRF guard on user-supplied endpoints."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import SecretStr

from gateways.base import DeliveryRejected, ProviderUnavailable, Sent
from gateways.push.webpush import WebPush, b64url
from tests.servers.push import attempt, push_command, send_one, with_server
from tests.servers.push_webpush import WebPushServer
from tidings.config import Settings
from tidings.events import DeliveryCommand, RenderedContent

Scenario = Callable[[WebPushServer, WebPush], Awaitable[Any]]


def with_webpush(scenario: Scenario, **settings: Any) -> tuple[WebPushServer, Any]:
    return with_server(WebPushServer, scenario, **settings)


@pytest.mark.parametrize("priority", ["low", "normal", "high", "critical"])
def test_webpush_payload_decrypts_and_headers_carry_ttl_urgency_and_topic(priority: str) -> None:
    urgent = priority in ("high", "critical")
    expires_at = datetime.now(UTC) + timedelta(seconds=600) if urgent else None
    commands: list[DeliveryCommand] = []

    def command(server: WebPushServer) -> DeliveryCommand:
        commands.append(server.command(priority=priority, expires_at=expires_at))
        return commands[-1]

    server, sent = with_webpush(send_one(command), ttl=7200)
    (sent_command,) = commands
    assert isinstance(sent, Sent) and str(sent.provider_message_id).startswith(f"{server.base_url}/m/")
    assert server.accepted == [
        {
            "title": "Invoice due",
            "body": "Invoice 17 is due on Friday.",
            "data": {"invoice": 17, "url": "/i/17"},
            "delivery_id": str(sent_command.delivery_id),
            "notification_id": str(sent_command.notification_id),
        }
    ]
    headers = server.received[0]["headers"]
    assert headers["Content-Encoding"] == "aes128gcm"
    assert headers["Urgency"] == ("high" if urgent else "normal")
    ttl = int(headers["TTL"])
    assert 590 <= ttl <= 600 if urgent else ttl == 7200
    topic = headers["Topic"]
    assert (
        len(topic) <= 32
        and uuid.UUID(bytes=base64.urlsafe_b64decode(topic + "==")) == sent_command.delivery_id
    )
    assert headers["Host"] == server.base_url.removeprefix("https://")


def test_webpush_vapid_jwt_names_the_origin_and_contact_and_is_reused() -> None:
    async def scenario(server: WebPushServer, provider: WebPush) -> list[Any]:
        return [await attempt(provider, server.command()) for _ in range(2)]

    server, results = with_webpush(scenario, subject="https://example.com/contact", vapid_lifetime=3600)
    assert all(isinstance(r, Sent) for r in results), results
    first, second = (r["vapid"] for r in server.received)
    assert first["token"] == second["token"]
    assert first["aud"] == server.base_url and first["sub"] == "https://example.com/contact"
    assert 3500 <= first["exp"] - datetime.now(UTC).timestamp() <= 3600
    public = server.vapid_key.public_key().public_numbers()
    raw = b"\x04" + public.x.to_bytes(32, "big") + public.y.to_bytes(32, "big")
    assert first["k"] == b64url(raw)


def test_webpush_accepts_a_raw_base64url_vapid_key() -> None:
    async def scenario(server: WebPushServer, provider: WebPush) -> Any:
        scalar = server.vapid_key.private_numbers().private_value.to_bytes(32, "big")
        raw = server.provider(timeout=2.0, vapid_private_key=SecretStr(b64url(scalar)))
        return await attempt(raw, server.command())

    server, sent = with_webpush(scenario)
    assert isinstance(sent, Sent), sent
    assert len(server.accepted) == 1


def test_webpush_payload_carries_non_ascii_text_unescaped_within_the_size_limit() -> None:
    """800 Cyrillic letters are 1,600 bytes in UTF-8 and 4,800 as `\\u` escapes (over the 4,096 limit)."""
    body = "Ж" * 800

    def cyrillic(server: WebPushServer) -> DeliveryCommand:
        return server.command(content=RenderedContent(title="t", body=body))

    server, result = with_webpush(send_one(cyrillic))
    assert isinstance(result, Sent), result
    assert [m["body"] for m in server.accepted] == [body]


def test_webpush_payload_too_large_is_permanent_but_not_dead() -> None:
    def big(server: WebPushServer) -> DeliveryCommand:
        return server.command(content=RenderedContent(title="t", data_json=json.dumps({"blob": "x" * 5000})))

    server, result = with_webpush(send_one(big))
    assert isinstance(result, DeliveryRejected), result
    assert result.permanent and not result.address_dead and "413" in result.reason
    assert server.accepted == [] and server.requests == 1


def _gone(server: WebPushServer) -> DeliveryCommand:
    command = server.command()
    server.gone.add(command.address.rsplit("/", 1)[1])
    return command


def _unknown(server: WebPushServer) -> DeliveryCommand:
    command = server.command()
    return command.model_copy(update={"address": command.address + "x"})


@pytest.mark.parametrize(("make", "status"), [(_gone, "410"), (_unknown, "404")], ids=["gone", "unknown"])
def test_webpush_gone_subscriptions_are_permanent_and_address_dead(
    make: Callable[[WebPushServer], DeliveryCommand], status: str
) -> None:
    server, result = with_webpush(send_one(make))
    assert isinstance(result, DeliveryRejected), result
    assert result.permanent and result.address_dead and status in result.reason
    assert server.accepted == [] and server.requests == 1


def test_webpush_vapid_key_other_than_the_subscriptions_is_unavailable_naming_the_credentials() -> None:
    server, result = with_webpush(
        send_one(lambda s: s.command()), key=ec.generate_private_key(ec.SECP256R1())
    )
    assert isinstance(result, ProviderUnavailable), result
    assert "credentials" in str(result) and "403" in str(result)
    assert server.accepted == []


def _no_keys(server: WebPushServer) -> DeliveryCommand:
    endpoint, _ = server.subscribe()
    return push_command("webpush", endpoint)


def _short_key(server: WebPushServer) -> DeliveryCommand:
    endpoint, keys = server.subscribe()
    return push_command("webpush", endpoint, params=keys | {"key_p256dh": keys["key_p256dh"][:40]})


def _not_on_curve(server: WebPushServer) -> DeliveryCommand:
    endpoint, keys = server.subscribe()
    return push_command("webpush", endpoint, params=keys | {"key_p256dh": b64url(b"\x04" + b"\x01" * 64)})


def _plain_http(server: WebPushServer) -> DeliveryCommand:
    endpoint, keys = server.subscribe()
    return push_command("webpush", endpoint.replace("https://", "http://"), params=keys)


@pytest.mark.parametrize(
    "make",
    [_no_keys, _short_key, _not_on_curve, _plain_http],
    ids=["no-keys", "short-key", "off-curve", "http"],
)
def test_webpush_unusable_subscription_is_dead_without_a_request(
    make: Callable[[WebPushServer], DeliveryCommand],
) -> None:
    server, result = with_webpush(send_one(make))
    assert isinstance(result, DeliveryRejected), result
    assert result.permanent and result.address_dead
    assert server.requests == 0


@pytest.mark.parametrize(
    "endpoint",
    [
        None,
        "https://10.1.2.3/push/x",
        "https://169.254.169.254/latest",
        "https://[::ffff:127.0.0.1]/p",
        "https://2130706433/p",
    ],
    ids=["local-service", "private", "metadata", "mapped-loopback", "decimal-loopback"],
)
def test_webpush_endpoint_on_a_private_address_is_refused_without_the_allow_list(
    endpoint: str | None,
) -> None:
    def command(server: WebPushServer) -> DeliveryCommand:
        subscribed = server.command()
        return subscribed.model_copy(update={"address": endpoint}) if endpoint else subscribed

    server, result = with_webpush(send_one(command), allow_cidrs="")
    assert isinstance(result, DeliveryRejected), result
    assert result.permanent and not result.address_dead and "SSRF" in result.reason
    assert server.requests == 0


def test_one_subscription_throttling_holds_up_no_other_push(namespace: Callable[..., Settings]) -> None:
    """A subscription's endpoint is anyone's server: its 429 with a day's Retry-After opens its own
    circuit (the command waits in a retry tier), not the provider's, which paused the whole push
    partition, APNs and FCM included, for every tenant."""
    import asyncio

    from gateways.runner import GatewayRunner
    from gateways.settings import GatewaySettings
    from tests.integration.conftest import read_all
    from tidings.codec import default_codec
    from tidings.kafka import EventProducer, Output
    from tidings.topics import names

    s = namespace(retry_tiers="1m,10m", partitions=1)

    async def scenario() -> tuple[WebPushServer, GatewayRunner]:
        async with WebPushServer() as server:
            hostile = server.command(tenant_id="mallory")
            server.throttled.add(hostile.address.rsplit("/", 1)[1])
            with EventProducer(s) as producer:
                for command in [hostile, *(server.command() for _ in range(5))]:
                    producer.produce(Output.event(names(s).delivery("push"), command))
            gateway = GatewayRunner(s, "push", [server.provider(timeout=3)], GatewaySettings(concurrency=1))
            await gateway.run(idle_exit_after=3)
            return server, gateway

    server, gateway = asyncio.run(scenario())
    assert len(server.accepted) == 5
    assert gateway.counts.get("circuit_open", 0) == 0 and gateway.counts["sent"] == 5
    decoded = [default_codec().decode(r.value or b"") for r in read_all(s, names(s).outcomes)]
    assert sorted(getattr(o, "status", "") for o in decoded) == ["RETRYING"] + ["SENT"] * 5


def test_webpush_endpoint_whose_name_server_never_answers_fails_within_the_connect_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Subscription endpoints are the browser's to name: a host whose lookup hangs held the send (and a
    thread of the lookup pool) for the system resolver's whole timeout."""
    import socket
    import threading
    import time

    release = threading.Event()
    resolve = socket.getaddrinfo

    def resolver(host: str, *args: Any, **kwargs: Any) -> Any:
        if host.endswith(".mute.example"):
            release.wait(30)
            raise socket.gaierror("gave up")
        return resolve(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolver)

    def command(server: WebPushServer) -> DeliveryCommand:
        return server.command().model_copy(update={"address": "https://push.mute.example/p/1"})

    started = time.monotonic()
    try:
        server, result = with_webpush(send_one(command))
    finally:
        release.set()
    assert time.monotonic() - started < 10
    assert isinstance(result, DeliveryRejected) and not result.permanent, result
    assert "did not resolve within 2s" in result.reason and server.requests == 0
