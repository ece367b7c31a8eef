"""Sends one push command to a browser subscription per Web Push (RFC 8030), for devices registered with
platform `webpush`: the address is the subscription's endpoint URL, `key_p256dh` and `key_auth` its keys.

The payload `{title, body, data, delivery_id, notification_id}` (JSON) is encrypted for the subscription
with aes128gcm (RFC 8291 over RFC 8188, `http_ece`, a fresh sender key per message) and the request is
authorised with VAPID (RFC 8292): `Authorization: vapid t=<ES256 JWT>, k=<public key>` whose JWT names the
endpoint's origin (`aud`), the `subject` contact (`sub`) and an expiry `vapid_lifetime` seconds ahead
(at most 24 h); one JWT per origin is reused until half its lifetime has passed. Headers: `TTL` (seconds
to expires_at, else `ttl`), `Urgency` (high for high/critical, else normal), `Topic` (the delivery id
as 22 base64url characters, so a retried delivery replaces one still queued at the push service).

Endpoints are user supplied, so they pass the webhook SSRF guard and are connected to by the checked IP
(original Host and TLS server name, no redirects, a capped answer), and must be https: browsers only
hand out https endpoints. A subscription that cannot be used at all (http endpoint, missing or malformed
keys) is refused as address_dead without a request.

Answers: 2xx (201 Created) is Sent with the `Location` of the push message, else the delivery id;
404 and 410 (subscription expired or unsubscribed) are permanent with address_dead; 400, 413 (payload
too large) and other 4xx are permanent; 401/403 (the VAPID JWT or key refused, including a subscription
made for another application server key) are ProviderUnavailable naming the credentials, so a key
mix-up is retried, then dead-lettered (replayable once the key is fixed), instead of deactivating
every subscription; 429 is ProviderThrottled (Retry-After); 408, 5xx, timeouts and connection errors
are ProviderUnavailable. Circuits are per subscription endpoint (`per_endpoint`): an endpoint is
anyone's server and answers what it likes, so no answer of one may open a circuit for all. A key
mix-up therefore opens no circuit either: every subscription fails through the retry tiers (alert on
the push channel's failures, `gateway_events{event="exhausted"}`).
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import math
import ssl
import time
from functools import cached_property
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import http_ece
import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_pem_private_key
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from gateways._http import Answer, post, retry_after
from gateways.base import DeliveryRejected, Provider, ProviderThrottled, ProviderUnavailable, Sent
from gateways.webhook.ssrf import Target, check
from tidings.events import DeliveryCommand

USER_AGENT = "tidings-push/0.1"
MAX_AUDIENCES = 256


class WebPushSettings(BaseSettings):
    """`vapid_private_key` is PEM or the raw 32-byte P-256 scalar in base64url (as web-push tools print);
    `allow_cidrs` and `ca_file` exist for tests (a local push service), never for production."""

    model_config = SettingsConfigDict(env_prefix="TIDINGS_WEBPUSH_", frozen=True, hide_input_in_errors=True)

    vapid_private_key: SecretStr
    subject: str = Field(pattern=r"^(mailto:|https://)\S+$")
    ttl: int = Field(default=24 * 3600, ge=0)
    vapid_lifetime: int = Field(default=12 * 3600, ge=60, le=24 * 3600)
    connect_timeout: float = Field(default=5.0, gt=0)
    read_timeout: float = Field(default=10.0, gt=0)
    max_response_bytes: int = Field(default=64 * 1024, gt=0)
    allow_cidrs: str = ""
    ca_file: Path | None = None

    @cached_property
    def allowed(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        return tuple(ipaddress.ip_network(c.strip()) for c in self.allow_cidrs.split(",") if c.strip())


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def signing_key(value: str) -> ec.EllipticCurvePrivateKey:
    if "-----BEGIN" in value:
        key = load_pem_private_key(value.encode(), password=None)
    else:
        raw = unb64url(value.strip())
        if len(raw) != 32:
            raise ValueError("a raw VAPID private key is 32 bytes in base64url")
        key = ec.derive_private_key(int.from_bytes(raw, "big"), ec.SECP256R1())
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise ValueError("the VAPID key must be a P-256 EC private key")
    return key


def public_bytes(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)


class Vapid:
    """`Authorization` values per push-service origin, each reused until half its lifetime has passed."""

    def __init__(self, key: ec.EllipticCurvePrivateKey, subject: str, lifetime: int) -> None:
        self.key = key
        self.subject = subject
        self.lifetime = lifetime
        self.public_key = b64url(public_bytes(key))
        self._cache: dict[str, tuple[str, float]] = {}

    def authorization(self, audience: str) -> str:
        now = time.time()
        cached = self._cache.get(audience)
        if cached is not None and cached[1] - now > self.lifetime / 2:
            return cached[0]
        if len(self._cache) >= MAX_AUDIENCES:
            self._cache.clear()
        expires = int(now) + self.lifetime
        token = jwt.encode(
            {"aud": audience, "exp": expires, "sub": self.subject}, self.key, algorithm="ES256"
        )
        value = f"vapid t={token}, k={self.public_key}"
        self._cache[audience] = (value, expires)
        return value


def encrypt(plain: bytes, p256dh: str, auth: str) -> bytes:
    """aes128gcm for the subscription; DeliveryRejected (address_dead) when its keys are unusable."""
    try:
        receiver, secret = unb64url(p256dh), unb64url(auth)
    except (ValueError, binascii.Error):
        raise DeliveryRejected("web push subscription keys are not base64url", address_dead=True) from None
    if len(receiver) != 65 or receiver[0] != 4 or len(secret) != 16:
        raise DeliveryRejected("web push subscription keys have the wrong size", address_dead=True)
    sender = ec.generate_private_key(ec.SECP256R1())
    try:
        sealed = http_ece.encrypt(
            plain, private_key=sender, dh=receiver, auth_secret=secret, version="aes128gcm"
        )
    except (ValueError, http_ece.ECEException) as exc:
        raise DeliveryRejected(f"web push subscription key is invalid: {exc}", address_dead=True) from None
    return bytes(sealed)


def message(command: DeliveryCommand) -> bytes:
    content = command.content
    fields: dict[str, Any] = {"title": content.title, "body": content.body}
    if content.data_json:
        fields["data"] = json.loads(content.data_json)
    fields["delivery_id"] = str(command.delivery_id)
    fields["notification_id"] = str(command.notification_id)
    kept = {k: v for k, v in fields.items() if v is not None}
    return json.dumps(kept, ensure_ascii=False, separators=(",", ":")).encode()


def topic(command: DeliveryCommand) -> str:
    return b64url(command.delivery_id.bytes)


def ttl(command: DeliveryCommand, default: int) -> int:
    if command.expires_at is None:
        return default
    return max(0, math.ceil(command.expires_at.timestamp() - time.time()))


def bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def authority(target: Target) -> str:
    """`host[:port]`, the port only when it is not the scheme's default (Host header, VAPID audience)."""
    default = target.port == (443 if target.scheme == "https" else 80)
    return bracketed(target.host) if default else f"{bracketed(target.host)}:{target.port}"


def detail(body: bytes) -> str:
    try:
        found = json.loads(body)
        text = found.get("message") or found.get("error") if isinstance(found, dict) else None
    except ValueError:
        text = None
    return str(text or body[:200].decode(errors="replace") or "no details")


class WebPush(Provider):
    per_endpoint = True
    channel = "push"
    name = "webpush"
    settings_class = WebPushSettings

    def __init__(self, settings: WebPushSettings | None = None) -> None:
        self.settings = s = settings or WebPushSettings()  # type: ignore[call-arg]
        self.vapid = Vapid(signing_key(s.vapid_private_key.get_secret_value()), s.subject, s.vapid_lifetime)
        self.timeout = aiohttp.ClientTimeout(
            sock_connect=s.connect_timeout, sock_read=s.read_timeout, total=s.connect_timeout + s.read_timeout
        )
        self.tls: ssl.SSLContext | bool = True
        if s.ca_file is not None:
            self.tls = ssl.create_default_context()
            self.tls.load_verify_locations(cafile=str(s.ca_file))

    def accepts(self, command: DeliveryCommand) -> bool:
        return command.address_params.get("platform") == "webpush"

    async def send(self, session: aiohttp.ClientSession, command: DeliveryCommand) -> Sent:
        if urlsplit(command.address).scheme != "https":
            raise DeliveryRejected("web push endpoint is not https", address_dead=True)
        p256dh, auth = command.address_params.get("key_p256dh"), command.address_params.get("key_auth")
        if not p256dh or not auth:
            raise DeliveryRejected("web push subscription has no p256dh/auth keys", address_dead=True)
        body = encrypt(message(command), p256dh, auth)
        try:
            target = await check(command.address, self.settings.allowed, self.settings.connect_timeout)
        except DeliveryRejected as exc:
            raise DeliveryRejected(
                f"web push endpoint refused: {exc.reason}", permanent=exc.permanent
            ) from None
        headers = {
            "authorization": self.vapid.authorization(f"https://{authority(target)}"),
            "content-encoding": "aes128gcm",
            "content-type": "application/octet-stream",
            "ttl": str(ttl(command, self.settings.ttl)),
            "urgency": "high" if command.priority in ("high", "critical") else "normal",
            "topic": topic(command),
            "host": authority(target),
            "user-agent": USER_AGENT,
        }
        answer = await post(
            session,
            "web push",
            f"https://{bracketed(target.ip)}:{target.port}{target.path}",
            body=body,
            limit=self.settings.max_response_bytes,
            headers=headers,
            timeout=self.timeout,
            server_hostname=target.host,
            ssl=self.tls,
        )
        return self._outcome(answer, command)

    def _outcome(self, answer: Answer, command: DeliveryCommand) -> Sent:
        status = answer.status
        if 200 <= status < 300:
            return Sent(self.name, answer.headers.get("Location") or str(command.delivery_id))
        why = detail(answer.body)
        if status in (404, 410):
            raise DeliveryRejected(f"web push subscription gone ({status}): {why}", address_dead=True)
        if status == 429:
            raise ProviderThrottled(
                f"web push throttled (429): {why}", retry_after(answer.headers.get("Retry-After"))
            )
        if status in (401, 403):
            raise ProviderUnavailable(f"web push refused the VAPID credentials ({status}): {why}")
        if status == 408 or status >= 500:
            raise ProviderUnavailable(
                f"web push service failed ({status}): {why}", retry_after(answer.headers.get("Retry-After"))
            )
        if 300 <= status < 400:
            raise DeliveryRejected(f"web push redirect refused ({status})")
        raise DeliveryRejected(f"web push service rejected the message ({status}): {why}")
