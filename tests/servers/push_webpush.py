"""A local Web Push service (RFC 8030) that is the browser as well: it creates subscriptions (P-256 key
pair and auth secret, bound to an application server key), verifies the VAPID JWT of each request
(RFC 8292: signature by `k`, audience = its own origin, expiry within 24 h, a contact subject, `k` equal
to the subscription's application server key), checks the TTL / Urgency / Topic / Content-Encoding
headers, and DECRYPTS the aes128gcm body (RFC 8291) with the subscription's private key: `accepted`
holds the decrypted JSON, `received` the headers and VAPID claims. Errors have the autopush shape
`{code, errno, error, message, more_info}`. It serves TLS (a throwaway CA, `ca_file` for the provider),
since the provider only calls https endpoints.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import ssl
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import http_ece
import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from pydantic import SecretStr

from gateways.push.webpush import WebPush, WebPushSettings, b64url
from tests.servers.base import register
from tests.servers.email_apis import HttpApiServer
from tests.servers.push import pem, push_command, tls_files
from tidings.events import DeliveryCommand

VAPID = re.compile(r"vapid t=([A-Za-z0-9_.-]+),\s*k=([A-Za-z0-9_-]+)")
TOPIC = re.compile(r"[A-Za-z0-9_-]{1,32}")


@dataclass
class Subscription:
    key: ec.EllipticCurvePrivateKey
    auth: bytes
    server_key: str


def autopush_error(status: int, errno: int, message: str, **headers: str) -> web.Response:
    reason = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 410: "Gone"}
    body = {"code": status, "errno": errno, "error": reason.get(status, "Error"), "message": message}
    return web.json_response(
        body | {"more_info": "http://autopush.readthedocs.io/en/latest/http.html#error-codes"},
        status=status,
        headers=headers,
    )


@register("push", "webpush")
class WebPushServer(HttpApiServer):
    name = "webpush"

    def __init__(self) -> None:
        super().__init__()
        self.vapid_key = ec.generate_private_key(ec.SECP256R1())
        self.subscriptions: dict[str, Subscription] = {}
        self.gone: set[str] = set()
        self.throttled: set[str] = set()
        """Subscriptions answered 429 with a day's Retry-After (an endpoint someone runs to hurt)."""
        self.received: list[dict[str, Any]] = []
        self._directory: tempfile.TemporaryDirectory[str] | None = None
        self.ca_file = Path()

    @property
    def base_url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    async def __aenter__(self) -> WebPushServer:
        self._directory = tempfile.TemporaryDirectory()
        self.ca_file, cert, key = tls_files(Path(self._directory.name))
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=context).start()
        self.port = self._runner.addresses[0][1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        await super().__aexit__(*exc)
        if self._directory is not None:
            self._directory.cleanup()

    def subscribe(self, server_key: ec.EllipticCurvePrivateKey | None = None) -> tuple[str, dict[str, str]]:
        """A subscription bound to `server_key` (the VAPID key): its endpoint and keys as address_params."""
        key, auth, name = (
            ec.generate_private_key(ec.SECP256R1()),
            secrets.token_bytes(16),
            secrets.token_urlsafe(24),
        )
        public = (
            (server_key or self.vapid_key)
            .public_key()
            .public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
        )
        self.subscriptions[name] = Subscription(key, auth, b64url(public))
        p256dh = key.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
        return f"{self.base_url}/wpush/v2/{name}", {"key_p256dh": b64url(p256dh), "key_auth": b64url(auth)}

    def command(self, **changes: Any) -> DeliveryCommand:
        endpoint, keys = self.subscribe()
        return push_command("webpush", endpoint, params=keys | changes.pop("params", {}), **changes)

    def provider(
        self, *, timeout: float, key: ec.EllipticCurvePrivateKey | None = None, **settings: Any
    ) -> WebPush:
        self.timeout = timeout
        options: dict[str, Any] = {
            "vapid_private_key": SecretStr(pem(key or self.vapid_key)),
            "subject": "mailto:push@example.com",
            "allow_cidrs": "127.0.0.1/32",
            "ca_file": self.ca_file,
            "connect_timeout": timeout,
            "read_timeout": timeout,
        }
        return WebPush(WebPushSettings(**(options | settings)))

    def vapid(self, authorization: str, subscription: Subscription) -> web.Response | dict[str, Any]:
        """The VAPID claims, or the answer refusing them."""
        found = VAPID.fullmatch(authorization)
        if found is None:
            return autopush_error(401, 109, "Missing or malformed VAPID Authorization header")
        token, k = found.groups()
        try:
            public = ec.EllipticCurvePublicKey.from_encoded_point(
                ec.SECP256R1(), base64.urlsafe_b64decode(k + "=" * (-len(k) % 4))
            )
            claims: dict[str, Any] = jwt.decode(
                token,
                public,
                algorithms=["ES256"],
                audience=self.base_url,
                options={"require": ["aud", "exp", "sub"]},
            )
        except (ValueError, jwt.InvalidTokenError) as exc:
            return autopush_error(401, 109, f"Invalid VAPID token: {exc}")
        if claims["exp"] > time.time() + 24 * 3600:
            return autopush_error(401, 109, "VAPID exp is more than 24 hours away")
        if not str(claims["sub"]).startswith(("mailto:", "https://")):
            return autopush_error(401, 109, "VAPID sub must be a mailto: or https: contact")
        if k != subscription.server_key:
            return autopush_error(
                403, 109, "The VAPID key does not match the subscription's application server key"
            )
        return claims | {"token": token, "k": k}

    async def answer(self, request: web.Request, body: bytes) -> web.StreamResponse:
        path = re.fullmatch(r"/wpush/v2/([A-Za-z0-9_-]+)", request.path)
        subscription = self.subscriptions.get(path.group(1)) if path else None
        if request.method != "POST" or path is None or subscription is None:
            return autopush_error(404, 102, "Request did not validate invalid token")
        if path.group(1) in self.gone:
            return autopush_error(410, 106, "Request did not validate: subscription expired")
        claims = self.vapid(request.headers.get("Authorization", ""), subscription)
        if isinstance(claims, web.Response):
            return claims
        if self.mode == "throttle":
            return autopush_error(429, 999, "Too many requests", **{"Retry-After": str(self.retry_after)})
        if path.group(1) in self.throttled:
            return autopush_error(429, 999, "Too many requests", **{"Retry-After": "86400"})
        if self.mode == "unavailable":
            return autopush_error(503, 202, "Service unavailable, try again later")
        headers = request.headers
        if not headers.get("TTL", "").isdigit():
            return autopush_error(400, 111 if "TTL" not in headers else 112, "Missing or invalid TTL header")
        if headers.get("Content-Encoding") != "aes128gcm":
            return autopush_error(400, 110, "Invalid Content-Encoding")
        if headers.get("Urgency", "normal") not in ("very-low", "low", "normal", "high"):
            return autopush_error(400, 110, "Invalid Urgency header")
        if "Topic" in headers and not TOPIC.fullmatch(headers["Topic"]):
            return autopush_error(400, 113, "Topic must be at most 32 base64url characters")
        if len(body) > 4096 or self.mode == "reject":
            return autopush_error(413, 104, "Data payload too large")
        try:
            plain = http_ece.decrypt(
                body, private_key=subscription.key, auth_secret=subscription.auth, version="aes128gcm"
            )
        except Exception as exc:
            return autopush_error(400, 110, f"(test service) payload does not decrypt: {exc!r}")
        self.accepted.append(json.loads(plain))
        seen = {k: headers.get(k) for k in ("TTL", "Urgency", "Topic", "Content-Encoding", "Host")}
        self.received.append({"headers": seen, "vapid": claims, "size": len(body)})
        return web.Response(
            status=201, headers={"Location": f"{self.base_url}/m/{secrets.token_urlsafe(16)}"}
        )
