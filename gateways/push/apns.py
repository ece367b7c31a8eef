"""Sends one push command to an Apple device through APNs (`POST {base_url}/3/device/{token}`), for devices
registered with platform `apns`.

APNs speaks only HTTP/2 and aiohttp has no HTTP/2 client, so this provider owns an
`httpx.AsyncClient(http2=True)` (one multiplexed connection, kept open as Apple asks) and closes it in
`close()`; the runner's aiohttp session is not used.

Authentication is token based: an ES256 JWT with header `kid` (the key id) and claims `iss` (the team id)
and `iat`, signed with the .p8 key. Apple refuses tokens older than an hour and answers
TooManyProviderTokenUpdates when they are regenerated more often than every 20 minutes, so one token is
reused for `token_refresh` seconds (50 minutes) and regenerated early only after APNs refused it.

Request headers: `apns-topic` the bundle id (the device's `app_id` overrides the setting),
`apns-push-type` alert (background, priority 5 and `content-available` when there is neither title nor
body), `apns-priority` 10 for high/critical else 5, `apns-expiration` the epoch second of expires_at or
`default_expiration` seconds from now (a day: with 0, "try once, do not store", a device that is
offline for a moment loses the notification); `apns-id` and
`apns-collapse-id` the delivery id, so a retried delivery replaces, not duplicates, one still pending.
The body is `{"aps": {"alert": {title, body}}, "tidings": {notification_id, delivery_id}, ...data}` (data
keys `aps` and `tidings` are dropped); the app reports an open with the ids.

Answers (`{"reason": ...}`): 200 is Sent with `apns-id`; 410 Unregistered (with its `timestamp` as the
feedback's provider time) and 400 BadDeviceToken are permanent with address_dead (BadDeviceToken only
once a send to `base_url` has succeeded, or been answered 410, since start: Apple answers it for every
token of the other environment, so a sandbox URL with production tokens would mark every device dead;
before that it is a rejection that is not permanent, naming the environment: the message is retried,
and the chain's next provider tried, an APNs profile for the other host if there is one, without
counting against the circuit, which five stale tokens in a row after a restart would open; always so
with `other_environment_follows`, set on a profile the other environment's profile follows), and so is
DeviceTokenNotForTopic for a device's own `app_id`; with the setting's topic it is retried and a
refused topic (BadTopic, TopicDisallowed, MissingTopic) is ProviderUnavailable (`TOPIC_REASONS`);
other 400 and 413 are permanent; 403
ExpiredProviderToken is sent again at once with a new token when the old one may be renewed (at least
20 minutes old: every send it refused counted against the circuit before); ExpiredProviderToken after
that and InvalidProviderToken discard the token and, like any other 403 (certificate, forbidden), are
ProviderUnavailable naming the credentials; 429 TooManyRequests is one device's limit, so
that message alone is retried later (a rejection that is not permanent: the provider's circuit stays
closed for every other device); any other 429 (TooManyProviderTokenUpdates) is ProviderThrottled
(Retry-After if any); 5xx, timeouts and broken connections are ProviderUnavailable. A device token that
is not hex is refused as BadDeviceToken without a request: it is put into the URL path.
"""

from __future__ import annotations

import asyncio
import json
import re
import ssl
import time
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from gateways._http import retry_after
from gateways.base import DeliveryRejected, Provider, ProviderThrottled, ProviderUnavailable, Sent
from tidings.events import DeliveryCommand

DEVICE_TOKEN = re.compile(r"[0-9a-fA-F]{32,200}")
BUNDLE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]{0,254}")
"""The `apns-topic` a device's `app_id` gives (a bundle id, maybe with `.voip` or `.complication`): one
with other characters (non-ASCII, a line break) raised in the HTTP client on every push, a
`provider_error` with a stack trace, or went out in the header."""
DEAD_REASONS = frozenset({"BadDeviceToken", "DeviceTokenNotForTopic", "Unregistered"})
MIN_RENEWAL_S = 1200.0
TOKEN_REASONS = frozenset({"ExpiredProviderToken", "InvalidProviderToken", "MissingProviderToken"})
TOPIC_REASONS = frozenset({"BadTopic", "TopicDisallowed", "MissingTopic"})
"""Refusals of `apns-topic`: with the setting's topic, our configuration (every device answers so), and
a DeviceTokenNotForTopic then is as likely a wrong `TIDINGS_APNS_TOPIC` (another app of the team) as a
foreign token; marking every device dead over it would lose them all, as FCM's SENDER_ID_MISMATCH would.
With a device's own `app_id` they are about that device."""


class ApnsSettings(BaseSettings):
    """`private_key` is the PEM text of the .p8 key; `ca_file` adds a trusted CA (tests)."""

    model_config = SettingsConfigDict(env_prefix="TIDINGS_APNS_", frozen=True, hide_input_in_errors=True)

    key_id: str
    team_id: str
    private_key: SecretStr
    topic: str
    base_url: str = "https://api.push.apple.com"
    ca_file: Path | None = None
    timeout: float = Field(default=10.0, gt=0)
    max_response_bytes: int = Field(default=64 * 1024, gt=0)
    token_refresh: float = Field(default=3000.0, ge=1200, le=3600)
    """Apple refuses tokens older than an hour and answers TooManyProviderTokenUpdates to a provider
    regenerating them more often than every 20 minutes."""
    default_expiration: int = Field(
        default=86_400, ge=0, description="Seconds APNs stores a push for an offline device; 0 = try once."
    )
    other_environment_follows: bool = False
    """A profile for the other environment follows this one in the chain (`apns,apns@sandbox`, for an
    app whose development builds register sandbox tokens): BadDeviceToken is then never a dead token
    here, only the other environment's token, and the next profile is tried; the last profile's answer
    decides. Without it, once this host had one success, a development build's token was marked dead
    at the production host and the sandbox profile behind it never tried."""


class ProviderToken:
    """The ES256 JWT every request carries, regenerated once `refresh` seconds old or after a refusal."""

    def __init__(self, settings: ApnsSettings) -> None:
        key = load_pem_private_key(settings.private_key.get_secret_value().encode(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
            raise ValueError("the APNs key must be a P-256 EC private key (.p8)")
        self.key = key
        self.key_id = settings.key_id
        self.team_id = settings.team_id
        self.refresh = settings.token_refresh
        self.value: str | None = None
        self.issued_at = 0.0

    def current(self) -> str:
        now = time.time()
        if self.value is None or now - self.issued_at >= self.refresh:
            claims = {"iss": self.team_id, "iat": int(now)}
            self.value = jwt.encode(claims, self.key, algorithm="ES256", headers={"kid": self.key_id})
            self.issued_at = now
        return self.value

    def discard(self, value: str) -> None:
        if self.value == value:
            self.value = None

    def renewable(self, value: str) -> bool:
        """Whether a send refused with `value` as ExpiredProviderToken may try again with a new token at
        once: another send renewed it already, or it is old enough to renew. APNs refuses renewals more
        often than every 20 minutes (TooManyProviderTokenUpdates), and a token that young called expired
        is a clock apart, which a new one would not mend."""
        return self.value != value or time.time() - self.issued_at >= MIN_RENEWAL_S


def payload(command: DeliveryCommand) -> dict[str, Any]:
    content = command.content
    data: dict[str, Any] = json.loads(content.data_json) if content.data_json else {}
    alert = {k: v for k, v in (("title", content.title), ("body", content.body)) if v}
    aps: dict[str, Any] = {"alert": alert} if alert else {"content-available": 1}
    ids = {"notification_id": str(command.notification_id), "delivery_id": str(command.delivery_id)}
    return {**{k: v for k, v in data.items() if k not in ("aps", "tidings")}, "aps": aps, "tidings": ids}


def expiration(command: DeliveryCommand, default: int) -> str:
    if command.expires_at is not None:
        return str(int(command.expires_at.timestamp()))
    return str(int(time.time()) + default) if default else "0"


def unregistered_at(body: bytes) -> float | None:
    """A 410's `timestamp`: when APNs last confirmed the token invalid (epoch ms), as epoch seconds."""
    try:
        at = json.loads(body).get("timestamp")
    except (ValueError, AttributeError):
        return None
    if isinstance(at, bool) or not isinstance(at, int | float) or not 0 < at < 10**14:
        return None
    return at / 1000


def reason(body: bytes) -> str:
    try:
        return str(json.loads(body).get("reason") or "")
    except (ValueError, AttributeError):
        return body[:200].decode(errors="replace")


class Apns(Provider):
    channel = "push"
    name = "apns"
    settings_class = ApnsSettings

    def __init__(self, settings: ApnsSettings | None = None) -> None:
        self.settings = settings or ApnsSettings()  # type: ignore[call-arg]
        self.token = ProviderToken(self.settings)
        self._client: httpx.AsyncClient | None = None
        self.confirmed = False
        """A send to `base_url` succeeded, or was answered 410 (Apple knew the token), since start: its
        environment is the tokens'."""

    def accepts(self, command: DeliveryCommand) -> bool:
        return command.address_params.get("platform") == "apns"

    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            verify: ssl.SSLContext | bool = True
            if self.settings.ca_file is not None:
                verify = ssl.create_default_context()
                verify.load_verify_locations(cafile=str(self.settings.ca_file))
            self._client = httpx.AsyncClient(
                http2=True, verify=verify, timeout=httpx.Timeout(self.settings.timeout)
            )
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def headers(self, command: DeliveryCommand, alert: bool, token: str) -> dict[str, str]:
        urgent = alert and command.priority in ("high", "critical")
        return {
            "authorization": f"bearer {token}",
            "apns-topic": command.address_params.get("app_id") or self.settings.topic,
            "apns-push-type": "alert" if alert else "background",
            "apns-priority": "10" if urgent else "5",
            "apns-expiration": expiration(command, self.settings.default_expiration),
            "apns-id": str(command.delivery_id),
            "apns-collapse-id": str(command.delivery_id),
            "content-type": "application/json",
        }

    async def send(self, session: aiohttp.ClientSession, command: DeliveryCommand) -> Sent:
        device = command.address
        if not DEVICE_TOKEN.fullmatch(device):
            raise DeliveryRejected(
                "apns refused the device token (BadDeviceToken: not hex)", address_dead=True
            )
        if (app_id := command.address_params.get("app_id")) and not BUNDLE_ID.fullmatch(app_id):
            raise DeliveryRejected(f"the device's app_id {app_id[:200]!r} is no bundle id (apns-topic)")
        body = payload(command)
        raw = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
        alert = "alert" in body["aps"]
        token = self.token.current()
        url = f"{self.settings.base_url.rstrip('/')}/3/device/{device}"
        status, answer_headers, data = await self._post(url, self.headers(command, alert, token), raw)
        if status == 403 and reason(data) == "ExpiredProviderToken" and self.token.renewable(token):
            self.token.discard(token)
            token = self.token.current()
            status, answer_headers, data = await self._post(url, self.headers(command, alert, token), raw)
        if 200 <= status < 300 or status == 410:
            self.confirmed = True
        if 200 <= status < 300:
            return Sent(self.name, answer_headers.get("apns-id") or str(command.delivery_id))
        why = reason(data) or "no reason"
        if status == 400 and why == "BadDeviceToken" and self.settings.other_environment_follows:
            raise DeliveryRejected(
                f"apns refused the device token ({status} {why}) at {self.settings.base_url}: it may be"
                " for the other environment, whose profile follows",
                permanent=False,
            )
        if status == 400 and why == "BadDeviceToken" and not self.confirmed:
            raise DeliveryRejected(
                f"apns refused the device token ({status} {why}) before any send to {self.settings.base_url}"
                " succeeded: the tokens may be for the other environment (sandbox or production)",
                permanent=False,
            )
        own_topic = bool(command.address_params.get("app_id"))
        if why in TOPIC_REASONS and not own_topic:
            raise ProviderUnavailable(f"apns refused the topic {self.settings.topic!r} ({status} {why})")
        if why == "DeviceTokenNotForTopic" and not own_topic:
            raise DeliveryRejected(
                f"apns: the token is not for the topic {self.settings.topic!r} ({status} {why})",
                permanent=False,
            )
        if status == 410 or (status == 400 and why in DEAD_REASONS):
            raise DeliveryRejected(
                f"apns refused the device token ({status} {why})",
                address_dead=True,
                dead_since=unregistered_at(data) if status == 410 else None,
            )
        if status == 403:
            if why in TOKEN_REASONS:
                self.token.discard(token)
            raise ProviderUnavailable(f"apns refused the credentials ({status} {why})")
        if status == 429 and why == "TooManyRequests":
            raise DeliveryRejected(
                f"apns: too many notifications to this device ({status} {why})",
                permanent=False,
                failover=False,
            )
        if status == 429:
            raise ProviderThrottled(
                f"apns throttled ({status} {why})", retry_after(answer_headers.get("retry-after"))
            )
        if status >= 500:
            raise ProviderUnavailable(
                f"apns failed ({status} {why})", retry_after(answer_headers.get("retry-after"))
            )
        raise DeliveryRejected(f"apns rejected the message ({status} {why})")

    async def _post(self, url: str, headers: dict[str, str], body: bytes) -> tuple[int, httpx.Headers, bytes]:
        """httpx's timeout bounds each read, not the exchange: an answer trickled a byte at a time held
        the send (and its slot) for as long as the server kept trickling. `timeout` bounds the whole."""
        limit = self.settings.max_response_bytes
        try:
            async with (
                asyncio.timeout(self.settings.timeout),
                self.client().stream("POST", url, headers=headers, content=body) as response,
            ):
                data = b""
                async for chunk in response.aiter_bytes():
                    data += chunk
                    if len(data) >= limit:
                        break
                return response.status_code, response.headers, data[:limit]
        except (httpx.TimeoutException, TimeoutError) as exc:
            raise ProviderUnavailable(f"apns timed out: {type(exc).__name__}") from None
        except httpx.TransportError as exc:
            raise ProviderUnavailable(f"apns connection failed: {type(exc).__name__}: {exc}") from None
