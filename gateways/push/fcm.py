"""Sends one push command to a device through Firebase Cloud Messaging HTTP v1
(`POST {base_url}/v1/projects/{project_id}/messages:send`), for devices registered with platform `fcm`.

Authentication is an OAuth2 access token for a Google service account: a JWT assertion signed RS256 with
the account's private key (`iss` the account's email, `scope` firebase.messaging, `aud` its `token_uri`)
is exchanged at `token_uri` (RFC 7523 jwt-bearer grant). The token is cached until `token_margin`
seconds before it expires (at least half its lifetime is used), shared by concurrent sends, and
refreshed once when FCM answers 401 to it (revoked early, clock skew); a second 401 is the credentials.
A failed exchange (refused, timed out) fails every send for `EXCHANGE_HOLD` seconds without another.

The message carries the device token, `notification` {title, body}, `data` (FCM requires string values:
other JSON values are sent as their compact JSON text; plus `tidings_notification_id` and
`tidings_delivery_id`, which the app reports an open with), `android` {priority HIGH for high/critical
else NORMAL, ttl from expires_at} and `apns.headers` {apns-collapse-id, apns-priority, apns-expiration}.
Android messages are not collapsible: FCM keeps at most four collapse keys per offline device, and a
key per delivery made a device offline across more than four notifications lose some of them, where
non-collapsible messages are kept up to 100. A retried delivery is deduped before it is sent (the
gateway's marks), but a send whose answer was lost (a timeout after FCM accepted it) is sent again:
`android.notification.tag` is the delivery id, so Android replaces the notification it shows instead
of showing it twice (tags have no per-device limit); the app can drop a repeated data message by
`tidings_delivery_id`. iOS (via FCM) keeps apns-collapse-id: APNs has no such limit and replaces a
pending notification with the same id. A data-only message (no title or body) goes to iOS as a
background push (`content-available`, `apns-push-type: background`) at apns-priority 5 whatever its
priority: FCM refuses a data message to Apple devices at priority 10 with INVALID_ARGUMENT ("Set the
priority of a message"), which failed every urgent data-only push to iOS for good.

Answers are google.rpc statuses `{"error": {code, status, message, details}}`, refined by the
`FcmError.errorCode` of `details`:

* UNREGISTERED (404), INVALID_ARGUMENT (400) naming the token (a `message.token` field violation or
  "registration token" in the message): permanent, address_dead (the app was uninstalled: the token
  never becomes valid again)
* SENDER_ID_MISMATCH (403): the token belongs to another Firebase project. The next profile of the
  chain (another project) is tried and the message retried, then dead-lettered: a wrong `project_id`
  is our configuration, and removing every device over it would lose them all
* other INVALID_ARGUMENT and other 4xx: permanent (payload too big, reserved data key, ...)
* 429 / QUOTA_EXCEEDED: ProviderThrottled (Retry-After); over one device's rate (the message or a
  QuotaFailure violation names the device), that message retries after Retry-After or a minute
* 5xx / UNAVAILABLE / INTERNAL: ProviderUnavailable (Retry-After as a floor)
* THIRD_PARTY_AUTH_ERROR (401): no token refresh (the APNs or Web Push credentials uploaded to Firebase
  were refused, not our token), and not an outage either: it is one platform's credentials, and five
  in a row opened the circuit that Android pushes share. The message is retried through the tiers,
  then dead-lettered (replay it once the credentials are fixed), like SENDER_ID_MISMATCH
* 401 after one refresh, other 401/403, a refused token grant: ProviderUnavailable naming the credentials
* 404 without UNREGISTERED: ProviderUnavailable (wrong project id or base URL)

Refused credentials fail over and open the circuit instead of failing every message (see the email
providers); a token FCM disowns is dead for good, so the runner's `token_invalid` feedback removes it.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp
import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from gateways._http import Answer, post, retry_after
from gateways.base import DeliveryRejected, Provider, ProviderThrottled, ProviderUnavailable, Sent
from tidings.events import DeliveryCommand

SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"
ASSERTION_LIFETIME = 3600
MAX_TTL = 28 * 24 * 3600
USER_AGENT = "tidings-push/0.1"
EXCHANGE_HOLD = 5.0
"""Seconds a failed token exchange stands for every send before one is tried again."""
DEVICE_BACKOFF_S = 60.0
"""The wait before sending again to a device over its own rate, when FCM gives no Retry-After. A
device's quota is that device's: it retries that message, without opening the provider's circuit for
every tenant's pushes (QUOTA_EXCEEDED covers the project's, a device's and a topic's rate)."""


class FcmSettings(BaseSettings):
    """The service account key as JSON text (`TIDINGS_FCM_SERVICE_ACCOUNT_JSON`) or a file path."""

    model_config = SettingsConfigDict(env_prefix="TIDINGS_FCM_", frozen=True, hide_input_in_errors=True)

    service_account_json: SecretStr | None = None
    service_account_file: Path | None = None
    project_id: str | None = None
    base_url: str = "https://fcm.googleapis.com"
    timeout: float = Field(default=10.0, gt=0)
    max_response_bytes: int = Field(default=64 * 1024, gt=0)
    token_margin: float = Field(default=300.0, ge=0)

    @model_validator(mode="after")
    def one_account(self) -> FcmSettings:
        if (self.service_account_json is None) == (self.service_account_file is None):
            raise ValueError("set exactly one of service_account_json and service_account_file")
        return self

    def account(self) -> ServiceAccount:
        if self.service_account_json is not None:
            return ServiceAccount.parse(self.service_account_json.get_secret_value())
        assert self.service_account_file is not None
        return ServiceAccount.parse(self.service_account_file.read_text())


@dataclass(frozen=True)
class ServiceAccount:
    client_email: str
    private_key_id: str
    private_key: rsa.RSAPrivateKey
    token_uri: str
    project_id: str | None

    @classmethod
    def parse(cls, text: str) -> ServiceAccount:
        info = json.loads(text)
        if not isinstance(info, dict) or info.get("type", "service_account") != "service_account":
            raise ValueError("not a Google service account key")
        key = load_pem_private_key(str(info["private_key"]).encode(), password=None)
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ValueError("the service account's private_key is not an RSA key")
        return cls(
            client_email=str(info["client_email"]),
            private_key_id=str(info.get("private_key_id", "")),
            private_key=key,
            token_uri=str(info.get("token_uri") or GOOGLE_TOKEN_URI),
            project_id=info.get("project_id"),
        )

    def assertion(self, now: int) -> str:
        claims = {
            "iss": self.client_email,
            "scope": SCOPE,
            "aud": self.token_uri,
            "iat": now,
            "exp": now + ASSERTION_LIFETIME,
        }
        headers = {"kid": self.private_key_id} if self.private_key_id else None
        return jwt.encode(claims, self.private_key, algorithm="RS256", headers=headers)


def seconds_left(command: DeliveryCommand) -> int | None:
    if command.expires_at is None:
        return None
    return min(MAX_TTL, max(0, math.ceil(command.expires_at.timestamp() - time.time())))


def data_strings(data_json: str | None) -> dict[str, str]:
    data: dict[str, Any] = json.loads(data_json) if data_json else {}
    return {
        key: value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
        for key, value in data.items()
    }


def ids(command: DeliveryCommand) -> dict[str, str]:
    """The ids an app reports an open with (`POST /v1/me/deliveries/{delivery_id}/opened` on the edge)."""
    return {
        "tidings_notification_id": str(command.notification_id),
        "tidings_delivery_id": str(command.delivery_id),
    }


def message(command: DeliveryCommand) -> dict[str, Any]:
    urgent = command.priority in ("high", "critical")
    android: dict[str, Any] = {"priority": "HIGH" if urgent else "NORMAL"}
    apns_headers = {"apns-collapse-id": str(command.delivery_id), "apns-priority": "10" if urgent else "5"}
    ttl = seconds_left(command)
    if ttl is not None and command.expires_at is not None:
        android["ttl"] = f"{ttl}s"
        apns_headers["apns-expiration"] = str(int(command.expires_at.timestamp()))
    result: dict[str, Any] = {"token": command.address, "android": android, "apns": {"headers": apns_headers}}
    content = command.content
    notification = {k: v for k, v in (("title", content.title), ("body", content.body)) if v}
    if notification:
        result["notification"] = notification
        android["notification"] = {"tag": str(command.delivery_id)}
    else:
        apns_headers |= {"apns-priority": "5", "apns-push-type": "background"}
        result["apns"]["payload"] = {"aps": {"content-available": 1}}
    result["data"] = data_strings(content.data_json) | ids(command)
    return result


@dataclass(frozen=True)
class Failure:
    """A google.rpc error status with the FcmError code of its details, if any."""

    status: str
    code: str
    message: str
    about_token: bool
    about_device: bool = False
    """A quota of one device (its message rate), by the message or a QuotaFailure violation."""

    @classmethod
    def parse(cls, body: bytes) -> Failure:
        try:
            error = json.loads(body)["error"]
            details = [d for d in error.get("details") or [] if isinstance(d, dict)]
        except (ValueError, KeyError, TypeError, AttributeError):
            return cls("", "", body[:200].decode(errors="replace") or "no details", False)
        codes = [str(d["errorCode"]) for d in details if d.get("errorCode")]
        fields = [
            str(v.get("field", ""))
            for d in details
            for v in d.get("fieldViolations") or []
            if isinstance(v, dict)
        ]
        quotas = [
            f"{v.get('subject', '')} {v.get('description', '')}"
            for d in details
            for v in d.get("violations") or []
            if isinstance(v, dict)
        ]
        text = str(error.get("message") or "")
        about_token = "message.token" in fields or "registration token" in text.lower()
        about_device = any("device" in q.lower() for q in [text, *quotas])
        return cls(str(error.get("status") or ""), codes[0] if codes else "", text, about_token, about_device)

    def __str__(self) -> str:
        return f"{self.code or self.status or 'error'}: {self.message}"


class Fcm(Provider):
    channel = "push"
    name = "fcm"
    settings_class = FcmSettings

    def __init__(self, settings: FcmSettings | None = None) -> None:
        self.settings = s = settings or FcmSettings()
        self.account = s.account()
        project = s.project_id or self.account.project_id
        if not project:
            raise ValueError("no FCM project id: set TIDINGS_FCM_PROJECT_ID or use a key that names one")
        self.project = project
        self.url = f"{s.base_url.rstrip('/')}/v1/projects/{quote(project, safe='')}/messages:send"
        self.timeout = aiohttp.ClientTimeout(total=s.timeout)
        self._access: str | None = None
        self._valid_until = 0.0
        self._lock = asyncio.Lock()
        self._refused: tuple[float, ProviderUnavailable] | None = None

    def accepts(self, command: DeliveryCommand) -> bool:
        return command.address_params.get("platform") == "fcm"

    async def send(self, session: aiohttp.ClientSession, command: DeliveryCommand) -> Sent:
        body = json.dumps({"message": message(command)}, separators=(",", ":")).encode()
        token = await self.access_token(session)
        answer = await self._post(session, token, body)
        if answer.status == 401 and Failure.parse(answer.body).code != "THIRD_PARTY_AUTH_ERROR":
            token = await self.access_token(session, stale=token)
            answer = await self._post(session, token, body)
        return self._outcome(answer)

    async def access_token(self, session: aiohttp.ClientSession, *, stale: str | None = None) -> str:
        """The cached access token, or a new one when it is about to expire or is `stale` (refused).
        A failed exchange is the answer for `EXCHANGE_HOLD` seconds: every send queued behind the lock
        made its own exchange in turn, and with the token endpoint hanging the last of 64 waited over
        ten minutes, holding a slot of every push provider of the gateway."""
        async with self._lock:
            if self._access is not None and self._access != stale and time.monotonic() < self._valid_until:
                return self._access
            if self._refused is not None and time.monotonic() < self._refused[0]:
                raise ProviderUnavailable(str(self._refused[1]), self._refused[1].retry_after)
            try:
                token, lifetime = await self._exchange(session)
            except ProviderUnavailable as exc:
                self._refused = (time.monotonic() + EXCHANGE_HOLD, exc)
                raise
            self._refused = None
            self._access = token
            self._valid_until = time.monotonic() + max(lifetime - self.settings.token_margin, lifetime / 2)
            return token

    async def _exchange(self, session: aiohttp.ClientSession) -> tuple[str, float]:
        form = {"grant_type": JWT_BEARER, "assertion": self.account.assertion(int(time.time()))}
        answer = await post(
            session,
            "fcm oauth",
            self.account.token_uri,
            body=urlencode(form).encode(),
            limit=self.settings.max_response_bytes,
            headers={"Content-Type": "application/x-www-form-urlencoded", "User-Agent": USER_AGENT},
            timeout=self.timeout,
        )
        try:
            grant = json.loads(answer.body)
        except ValueError:
            grant = {}
        if answer.status != 200 or not isinstance(grant, dict) or not grant.get("access_token"):
            error = grant.get("error_description") or grant.get("error") if isinstance(grant, dict) else None
            detail = error or answer.body[:200].decode(errors="replace")
            raise ProviderUnavailable(
                f"fcm: the service account credentials were refused ({answer.status}): {detail}",
                retry_after(answer.headers.get("Retry-After")),
            )
        return str(grant["access_token"]), float(grant.get("expires_in") or 3600)

    async def _post(self, session: aiohttp.ClientSession, token: str, body: bytes) -> Answer:
        return await post(
            session,
            "fcm",
            self.url,
            body=body,
            limit=self.settings.max_response_bytes,
            headers={
                "Authorization": f"Bearer {token}",
                "Content-Type": "application/json; charset=UTF-8",
                "User-Agent": USER_AGENT,
            },
            timeout=self.timeout,
        )

    def _outcome(self, answer: Answer) -> Sent:
        status = answer.status
        if 200 <= status < 300:
            try:
                name = json.loads(answer.body).get("name")
            except (ValueError, AttributeError):
                name = None
            return Sent(self.name, str(name) if name else None)
        failure = Failure.parse(answer.body)
        wait = retry_after(answer.headers.get("Retry-After"))
        if failure.code == "UNREGISTERED":
            raise DeliveryRejected(f"fcm refused the device token ({status} {failure})", address_dead=True)
        if failure.code == "SENDER_ID_MISMATCH":
            raise DeliveryRejected(
                f"fcm: the token belongs to another Firebase project than {self.project!r} "
                f"({status} {failure})",
                permanent=False,
            )
        if status == 400 and failure.about_token:
            raise DeliveryRejected(f"fcm refused the device token ({status} {failure})", address_dead=True)
        if (status == 429 or failure.code == "QUOTA_EXCEEDED") and failure.about_device:
            raise DeliveryRejected(
                f"fcm: over this device's message rate ({status} {failure})",
                permanent=False,
                retry_after=wait or DEVICE_BACKOFF_S,
                failover=False,
            )
        if status == 429 or failure.code == "QUOTA_EXCEEDED":
            raise ProviderThrottled(f"fcm throttled ({status} {failure})", wait)
        if status >= 500 or failure.code in ("UNAVAILABLE", "INTERNAL"):
            raise ProviderUnavailable(f"fcm failed ({status} {failure})", wait)
        if failure.code == "THIRD_PARTY_AUTH_ERROR":
            raise DeliveryRejected(
                f"fcm: the APNs/Web Push credentials in Firebase were refused ({failure})", permanent=False
            )
        if status in (401, 403):
            raise ProviderUnavailable(f"fcm refused the credentials ({status} {failure})")
        if status == 404:
            raise ProviderUnavailable(f"fcm project or endpoint not found ({status} {failure})")
        if status < 400:
            raise ProviderUnavailable(f"fcm answered {status}, no answer of its API: check the base URL")
        raise DeliveryRejected(f"fcm rejected the message ({status} {failure})")
