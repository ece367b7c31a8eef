"""A local FCM HTTP v1 service, plus what the push servers and tests share: a command builder, `attempt`
(one send whose provider error is returned, not raised) and a throwaway CA with a certificate for
127.0.0.1 (the APNs and Web Push servers are in `push_apns.py` and `push_webpush.py`).

The FCM server issues OAuth2 access tokens at `/token` only for a jwt-bearer assertion signed by the
service account key it generated (verified with the public half: issuer, audience, scope, key id,
lifetime) and accepts `messages:send` only with a live token. It validates messages the way FCM does
(string data values, reserved data keys, priorities, ttl syntax, unknown fields), knows which device
tokens are registered (`register()`), belong to another project (`foreign`) or are malformed, and
answers with google.rpc error statuses carrying FcmError codes. `exchanges` counts token grants.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import re
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import jwt
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pydantic import SecretStr

from gateways.base import Provider, ProviderError, Sent
from gateways.push.fcm import JWT_BEARER, SCOPE, Fcm, FcmSettings
from tests.servers.base import register
from tests.servers.email_apis import HttpApiServer
from tidings.events import DeliveryCommand, RenderedContent

FCM_TOKEN = re.compile(r"[A-Za-z0-9_-]{11,}:APA91[A-Za-z0-9_-]{20,}")
FCM_MESSAGE_FIELDS = {"token", "notification", "data", "android", "apns", "webpush", "fcm_options"}
FCM_RESERVED = {"from", "notification", "message_type"}
FCM_TTL = re.compile(r"\d+(\.\d{1,9})?s")


def push_command(platform: str, address: str, **changes: Any) -> DeliveryCommand:
    params = {"platform": platform, "device_id": f"{platform}-device", **changes.pop("params", {})}
    fields: dict[str, Any] = {
        "tenant_id": "acme",
        "delivery_id": uuid.uuid4(),
        "notification_id": uuid.uuid4(),
        "recipient_id": "user-42",
        "notification_type": "invoice.due",
        "category": "billing",
        "channel": "push",
        "priority": "normal",
        "address": address,
        "address_params": params,
        "content": RenderedContent(
            title="Invoice due",
            body="Invoice 17 is due on Friday.",
            data_json='{"invoice": 17, "url": "/i/17"}',
        ),
    }
    return DeliveryCommand(**(fields | changes))


async def attempt(provider: Provider, command: DeliveryCommand) -> Sent | ProviderError:
    """One send through a fresh aiohttp session; a provider error is returned, not raised."""
    async with aiohttp.ClientSession() as session:
        try:
            return await provider.send(session, command)
        except ProviderError as exc:
            return exc


def with_server(
    server_class: Callable[[], Any],
    scenario: Callable[[Any, Any], Awaitable[Any]],
    setup: Callable[[Any], None] = lambda server: None,
    **settings: Any,
) -> tuple[Any, Any]:
    """Run `scenario(server, provider)` against a fresh local server and its provider (2 s timeout)."""

    async def run() -> tuple[Any, Any]:
        async with server_class() as server:
            setup(server)
            provider = server.provider(timeout=2.0, **settings)
            try:
                return server, await scenario(server, provider)
            finally:
                await provider.close()

    return asyncio.run(run())


def send_one(command: Callable[[Any], DeliveryCommand]) -> Callable[[Any, Any], Awaitable[Any]]:
    """A scenario that sends the one command built from the server."""

    async def scenario(server: Any, provider: Any) -> Any:
        return await attempt(provider, command(server))

    return scenario


def pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()).decode()


def tls_files(directory: Path) -> tuple[Path, Path, Path]:
    """A CA, and a certificate for 127.0.0.1 signed by it, as PEM files: (ca, certificate, key)."""
    now = datetime.now(UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tidings test CA")])
    usage = dict.fromkeys(
        ("content_commitment", "key_encipherment", "data_encipherment", "key_agreement"), False
    )
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                **usage,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = directory / "ca.pem", directory / "cert.pem", directory / "key.pem"
    paths[0].write_bytes(ca.public_bytes(Encoding.PEM))
    paths[1].write_bytes(leaf.public_bytes(Encoding.PEM))
    paths[2].write_text(pem(key))
    return paths


def rpc_error(
    http: int,
    status: str,
    message: str,
    code: str | None = None,
    field: str | None = None,
    quota: str | None = None,
    **headers: str,
) -> web.Response:
    """A google.rpc error status; `quota` adds a google.rpc.QuotaFailure violation with that subject."""
    details: list[dict[str, Any]] = []
    if code:
        details.append({"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": code})
    if quota:
        violation = {"subject": quota, "description": message}
        details.append({"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [violation]})
    if field:
        violation = {"field": field, "description": message}
        details.append({"@type": "type.googleapis.com/google.rpc.BadRequest", "fieldViolations": [violation]})
    error: dict[str, Any] = {"code": http, "message": message, "status": status}
    return web.json_response(
        {"error": error | ({"details": details} if details else {})}, status=http, headers=headers
    )


@register("push", "fcm")
class FcmServer(HttpApiServer):
    name = "fcm"

    def __init__(self) -> None:
        super().__init__()
        self.project_id = "tidings-test"
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.key_id = secrets.token_hex(20)
        self.client_email = f"firebase-adminsdk@{self.project_id}.iam.gserviceaccount.com"
        self.token_lifetime = 3599
        self.access_tokens: dict[str, float] = {}
        self.exchanges = 0
        self.grants_asked = 0
        self.devices: set[str] = set()
        self.foreign: set[str] = set()
        self.third_party_refused = False

    def register(self) -> str:
        token = f"{secrets.token_urlsafe(16)}:APA91b{secrets.token_urlsafe(100)}"
        self.devices.add(token)
        return token

    def command(self, **changes: Any) -> DeliveryCommand:
        return push_command("fcm", self.register(), **changes)

    def service_account(self, key: rsa.RSAPrivateKey | None = None) -> str:
        return json.dumps(
            {
                "type": "service_account",
                "project_id": self.project_id,
                "private_key_id": self.key_id,
                "private_key": pem(key or self.key),
                "client_email": self.client_email,
                "client_id": "104170000000000000000",
                "token_uri": f"{self.base_url}/token",
            }
        )

    def provider(self, *, timeout: float, key: rsa.RSAPrivateKey | None = None, **settings: Any) -> Fcm:
        self.timeout = timeout
        account = SecretStr(self.service_account(key))
        return Fcm(
            FcmSettings(service_account_json=account, base_url=self.base_url, timeout=timeout, **settings)
        )

    def revoke(self) -> None:
        self.access_tokens.clear()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.path == "/token":
            return await self.token(request)
        return await super()._handle(request)

    async def token(self, request: web.Request) -> web.Response:
        self.grants_asked += 1
        form = await request.post()
        if form.get("grant_type") != JWT_BEARER:
            return self.oauth_error("unsupported_grant_type", f"Invalid grant_type: {form.get('grant_type')}")
        assertion = str(form.get("assertion", ""))
        try:
            header = jwt.get_unverified_header(assertion)
            claims = jwt.decode(
                assertion,
                self.key.public_key(),
                algorithms=["RS256"],
                audience=f"{self.base_url}/token",
                issuer=self.client_email,
                options={"require": ["iss", "aud", "iat", "exp"]},
            )
        except jwt.InvalidTokenError as exc:
            return self.oauth_error("invalid_grant", f"Invalid JWT: {exc}")
        if header.get("kid") != self.key_id:
            return self.oauth_error("invalid_grant", "Invalid JWT Signature.")
        if claims["exp"] - claims["iat"] > 3600:
            return self.oauth_error(
                "invalid_grant", "Invalid JWT: Token must be a short-lived token (60 minutes)"
            )
        if SCOPE not in str(claims.get("scope", "")).split():
            return self.oauth_error("invalid_scope", "Invalid OAuth scope or ID token audience provided.")
        self.exchanges += 1
        token = f"ya29.{secrets.token_urlsafe(48)}"
        self.access_tokens[token] = time.time() + self.token_lifetime
        return web.json_response(
            {"access_token": token, "expires_in": self.token_lifetime, "token_type": "Bearer"}
        )

    @staticmethod
    def oauth_error(error: str, description: str) -> web.Response:
        return web.json_response({"error": error, "error_description": description}, status=400)

    async def answer(self, request: web.Request, body: bytes) -> web.StreamResponse:
        path = re.fullmatch(r"/v1/projects/([^/]+)/messages:send", request.path)
        if request.method != "POST" or path is None:
            return rpc_error(404, "NOT_FOUND", "Requested entity was not found.")
        bearer = request.headers.get("Authorization", "")
        if not bearer.startswith("Bearer ") or self.access_tokens.get(bearer[7:], 0) <= time.time():
            return rpc_error(401, "UNAUTHENTICATED", "Request had invalid authentication credentials.")
        if path.group(1) != self.project_id:
            denied = (
                f"Permission 'cloudmessaging.messages.create' denied on resource 'projects/{path.group(1)}'"
            )
            return rpc_error(403, "PERMISSION_DENIED", denied)
        if self.mode == "throttle":
            wait = {"Retry-After": str(self.retry_after)}
            return rpc_error(429, "RESOURCE_EXHAUSTED", "Quota exceeded.", "QUOTA_EXCEEDED", **wait)
        if self.mode == "unavailable":
            return rpc_error(503, "UNAVAILABLE", "The service is currently unavailable.", "UNAVAILABLE")
        if self.mode == "device_quota":
            return rpc_error(
                429,
                "RESOURCE_EXHAUSTED",
                "Device message rate exceeded.",
                "QUOTA_EXCEEDED",
                quota="device message rate",
            )
        try:
            message = json.loads(body)["message"]
            assert isinstance(message, dict)
        except (ValueError, KeyError, TypeError, AssertionError):
            return rpc_error(400, "INVALID_ARGUMENT", "Invalid JSON payload received.", "INVALID_ARGUMENT")
        problem = self.invalid(message)
        if problem is not None:
            return rpc_error(400, "INVALID_ARGUMENT", problem[1], "INVALID_ARGUMENT", problem[0])
        device = message["token"]
        if not FCM_TOKEN.fullmatch(device):
            invalid = "The registration token is not a valid FCM registration token"
            return rpc_error(400, "INVALID_ARGUMENT", invalid, "INVALID_ARGUMENT", "message.token")
        if device in self.foreign:
            return rpc_error(403, "PERMISSION_DENIED", "SenderId mismatch", "SENDER_ID_MISMATCH")
        if device not in self.devices:
            return rpc_error(404, "NOT_FOUND", "Requested entity was not found.", "UNREGISTERED")
        if self.third_party_refused:
            auth = "Auth error from APNS or Web Push Service"
            return rpc_error(401, "UNAUTHENTICATED", auth, "THIRD_PARTY_AUTH_ERROR")
        if self.mode == "reject":
            return rpc_error(400, "INVALID_ARGUMENT", "Android message is too big", "INVALID_ARGUMENT")
        self.accepted.append(message)
        return web.json_response(
            {"name": f"projects/{self.project_id}/messages/0:{time.time_ns()}%{secrets.token_hex(8)}"}
        )

    @staticmethod
    def invalid(message: dict[str, Any]) -> tuple[str, str] | None:
        """(field, description) of the first FCM validation failure, or None."""
        if unknown := set(message) - FCM_MESSAGE_FIELDS:
            return (
                "message",
                f"Invalid JSON payload received. Unknown name {sorted(unknown)[0]!r} at 'message'",
            )
        if not isinstance(message.get("token"), str):
            return "message.token", "Exactly one of token, topic or condition must be given"
        for i, (key, value) in enumerate(dict(message.get("data", {})).items()):
            if not isinstance(value, str):
                return f"message.data[{i}].value", f"Invalid value at 'message.data[{i}].value' (TYPE_STRING)"
            if key in FCM_RESERVED or key.startswith(("google.", "gcm.")):
                return f"message.data[{i}].key", f"Invalid data key: {key}"
        notification = message.get("notification", {})
        if not isinstance(notification, dict) or set(notification) - {"title", "body", "image"}:
            return "message.notification", "Invalid notification"
        apns = message.get("apns", {}).get("headers", {})
        if not notification and apns.get("apns-priority", "10") != "5":
            return "message.apns.headers", "Data messages to Apple devices must be sent with apns-priority 5"
        android = message.get("android", {})
        if android.get("priority", "NORMAL") not in ("NORMAL", "HIGH"):
            return (
                "message.android.priority",
                f"Invalid value at 'message.android.priority': {android['priority']}",
            )
        shown = android.get("notification", {})
        if not isinstance(shown, dict) or not all(isinstance(v, str) for v in shown.values()):
            return "message.android.notification", "Invalid value at 'message.android.notification'"
        if "ttl" in android and not FCM_TTL.fullmatch(str(android["ttl"])):
            return (
                "message.android.ttl",
                "Invalid value at 'message.android.ttl' (type.googleapis.com/Duration)",
            )
        apns_headers = message.get("apns", {}).get("headers", {})
        if not all(isinstance(v, str) for v in apns_headers.values()):
            return "message.apns.headers", "Invalid value at 'message.apns.headers' (TYPE_STRING)"
        return None
