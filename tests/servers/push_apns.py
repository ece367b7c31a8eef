"""A local APNs provider API: an ASGI app served by hypercorn over TLS with ALPN h2 (a throwaway CA the
provider trusts through `ca_file`), so the provider is tested over HTTP/2 like the real service.

Every request records its HTTP version; one that is not HTTP/2 is answered 505 and never accepted. The
app verifies the provider token as APNs does (ES256 signature with the public half of the key it
generated, `kid`, `iss` = team id, `iat` not older than an hour; `expired` lists tokens to answer
ExpiredProviderToken), the path `/3/device/<hex>`, the apns-* headers (push type, priority 5/10,
integer expiration, collapse id <= 64 bytes, canonical UUID apns-id), the topic the device token was
registered for (`devices`), unregistered tokens (410) and the 4 KiB payload limit, answering
`{"reason": ...}` like Apple (`BadPayload`, for a body that is not a JSON object with `aps`, is ours:
Apple documents no reason for it). `accepted` holds the JSON payloads, `received` their request headers.

`reset` cuts the TCP connections: an ASGI app cannot abort its connection, so the listening socket
handed to hypercorn remembers what it accepted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import secrets
import socket
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from hypercorn.asyncio import serve
from hypercorn.config import Config, Sockets
from pydantic import SecretStr

from gateways.push.apns import Apns, ApnsSettings
from tests.servers.base import Mode, register
from tests.servers.push import pem, push_command, tls_files
from tidings.events import DeliveryCommand

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
PUSH_TYPES = {"alert", "background", "voip", "complication", "fileprovider", "mdm", "liveactivity"}
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


class Listener(socket.socket):
    """A listening socket that keeps the connections it accepted, so the test server can cut them."""

    def __init__(self) -> None:
        super().__init__(socket.AF_INET, socket.SOCK_STREAM)
        self.connections: list[socket.socket] = []

    def accept(self) -> tuple[socket.socket, Any]:
        connection, address = super().accept()
        self.connections.append(connection)
        return connection, address

    def cut(self) -> None:
        for connection in self.connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


class ListenerConfig(Config):
    def __init__(self, listener: Listener) -> None:
        self.listener = listener

    def create_sockets(self) -> Sockets:
        return Sockets([self.listener], [], [])


@register("push", "apns")
class ApnsServer:
    name = "apns"

    def __init__(self) -> None:
        self.mode: Mode = "ok"
        self.retry_after = 7
        self.busy: set[str] = set()
        """Device tokens answered 429 TooManyRequests (too many notifications to that device)."""
        self.timeout = 1.0
        self.trickle = False
        """Answer 200 with a body sent a byte at a time, each within the provider's read timeout."""
        self.accepted: list[dict[str, Any]] = []
        self.received: list[dict[str, str]] = []
        self.versions: list[str] = []
        self.tokens: list[str] = []
        self.expired: set[str] = set()
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.key_id = secrets.token_hex(5).upper()
        self.team_id = secrets.token_hex(5).upper()
        self.topic = "com.example.tidings"
        self.devices: dict[str, str] = {}
        self.unregistered: set[str] = set()
        self.port = 0
        self.ca_file = Path()
        self._closing = asyncio.Event()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._directory: tempfile.TemporaryDirectory[str] | None = None

    @property
    def base_url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    async def __aenter__(self) -> ApnsServer:
        self._directory = tempfile.TemporaryDirectory()
        self.ca_file, cert, key = tls_files(Path(self._directory.name))
        self.listener = Listener()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen()
        self.port = self.listener.getsockname()[1]
        config = ListenerConfig(self.listener)
        config.certfile, config.keyfile = str(cert), str(key)
        config.errorlog = logging.getLogger(__name__)
        config.graceful_timeout = 1.0
        self._task = asyncio.create_task(
            serve(self.app, config, shutdown_trigger=self._stop.wait, mode="asgi")
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._closing.set()
        self._stop.set()
        if self._task is not None:
            await self._task
        if self._directory is not None:
            self._directory.cleanup()

    def register(self, topic: str | None = None) -> str:
        device = secrets.token_hex(32)
        self.devices[device] = topic or self.topic
        return device

    def command(self, **changes: Any) -> DeliveryCommand:
        return push_command("apns", self.register(), **changes)

    def provider(self, *, timeout: float, **settings: Any) -> Apns:
        self.timeout = timeout
        options: dict[str, Any] = {
            "key_id": self.key_id,
            "team_id": self.team_id,
            "private_key": SecretStr(pem(self.key)),
            "topic": self.topic,
            "base_url": self.base_url,
            "ca_file": self.ca_file,
            "timeout": timeout,
        }
        return Apns(ApnsSettings(**(options | settings)))

    async def app(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (message := await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        self.versions.append(scope["http_version"])
        if scope["http_version"] != "2":
            await self.respond(send, 505, {"reason": "HTTP/2 required"})
            return
        headers = {name.decode().lower(): value.decode() for name, value in scope["headers"]}
        if self.mode == "reset":
            self.listener.cut()
            return
        if self.trickle:
            await send({"type": "http.response.start", "status": 200, "headers": []})
            deadline = time.monotonic() + self.timeout + 5
            while time.monotonic() < deadline and not self._closing.is_set():
                await send({"type": "http.response.body", "body": b" ", "more_body": True})
                await asyncio.sleep(self.timeout / 4)
            await send({"type": "http.response.body", "body": b""})
            return
        if self.mode == "timeout":
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), self.timeout + 5)
            return
        status, answer = self.answer(scope["method"], scope["path"], headers, body)
        extra = {"retry-after": str(self.retry_after)} if status == 429 else {}
        await self.respond(
            send, status, answer, {"apns-id": headers.get("apns-id") or str(uuid.uuid4())} | extra
        )

    @staticmethod
    async def respond(
        send: Send, status: int, answer: dict[str, Any] | None, headers: dict[str, str] | None = None
    ) -> None:
        body = json.dumps(answer).encode() if answer else b""
        fields = [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
        if body:
            fields.append((b"content-type", b"application/json"))
        await send({"type": "http.response.start", "status": status, "headers": fields})
        await send({"type": "http.response.body", "body": body})

    def answer(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, Any] | None]:
        if method != "POST":
            return 405, {"reason": "MethodNotAllowed"}
        device = re.fullmatch(r"/3/device/([0-9a-fA-F]+)", path)
        if device is None:
            return 404, {"reason": "BadPath"}
        refused = self.unauthenticated(headers.get("authorization", ""))
        if refused:
            return 403, {"reason": refused}
        if self.mode == "throttle":
            return 429, {"reason": "TooManyProviderTokenUpdates"}
        if device.group(1) in self.busy:
            return 429, {"reason": "TooManyRequests"}
        if self.mode == "unavailable":
            return 503, {"reason": "ServiceUnavailable"}
        problem = self.invalid(headers, body)
        if problem:
            return (413 if problem == "PayloadTooLarge" else 400), {"reason": problem}
        token = device.group(1)
        if token in self.unregistered:
            return 410, {"reason": "Unregistered", "timestamp": int(time.time() * 1000)}
        if token not in self.devices:
            return 400, {"reason": "BadDeviceToken"}
        if self.devices[token] != headers["apns-topic"]:
            return 400, {"reason": "DeviceTokenNotForTopic"}
        if self.mode == "reject":
            return 413, {"reason": "PayloadTooLarge"}
        self.accepted.append(json.loads(body))
        self.received.append(headers)
        return 200, None

    def unauthenticated(self, authorization: str) -> str | None:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return "MissingProviderToken"
        try:
            header = jwt.get_unverified_header(token)
            claims = jwt.decode(
                token, self.key.public_key(), algorithms=["ES256"], options={"require": ["iss", "iat"]}
            )
        except jwt.InvalidTokenError:
            return "InvalidProviderToken"
        if header.get("kid") != self.key_id or claims["iss"] != self.team_id:
            return "InvalidProviderToken"
        if token in self.expired or time.time() - claims["iat"] > 3600:
            return "ExpiredProviderToken"
        self.tokens.append(token)
        return None

    @staticmethod
    def invalid(headers: dict[str, str], body: bytes) -> str | None:
        if not headers.get("apns-topic"):
            return "MissingTopic"
        if headers.get("apns-push-type") not in PUSH_TYPES:
            return "InvalidPushType"
        if headers.get("apns-priority", "10") not in ("5", "10"):
            return "BadPriority"
        if headers.get("apns-push-type") == "background" and headers.get("apns-priority") != "5":
            return "BadPriority"
        if not headers.get("apns-expiration", "0").isdigit():
            return "BadExpirationDate"
        if len(headers.get("apns-collapse-id", "").encode()) > 64:
            return "BadCollapseId"
        if "apns-id" in headers and not UUID.fullmatch(headers["apns-id"]):
            return "BadMessageId"
        if not body:
            return "PayloadEmpty"
        if len(body) > 4096:
            return "PayloadTooLarge"
        try:
            payload = json.loads(body)
        except ValueError:
            return "BadPayload"
        return None if isinstance(payload, dict) and isinstance(payload.get("aps"), dict) else "BadPayload"
