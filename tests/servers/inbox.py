"""The in-app inbox's "protocol server": the real PostgreSQL of the local stack, behind a TCP proxy on
127.0.0.1 that can misbehave the way a database does.

* ``ok``           forward to PostgreSQL
* ``reject``       forward, with a command whose title holds a NUL byte (PostgreSQL text cannot)
* ``throttle``     answer the startup with FATAL 53300 "sorry, too many clients already"
* ``unavailable``  answer the startup with FATAL 57P03 "the database system is starting up"
* ``timeout``      accept and never answer
* ``reset``        accept and close at once

`accepted` is read back from `inbox_items`: the rows the last command left.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import uuid
from typing import Any, Self
from urllib.parse import urlsplit

import psycopg

from gateways.base import Provider
from gateways.inapp.inbox import Inbox, InboxSettings
from tests.servers.base import Mode, register
from tidings import devstack
from tidings.config import settings
from tidings.events import DeliveryCommand, RenderedContent
from tidings.ids import delivery_id

SSL_REQUEST, GSS_REQUEST = 80877103, 80877104
FATAL = {
    "throttle": ("53300", "sorry, too many clients already"),
    "unavailable": ("57P03", "the database system is starting up"),
}


def error_response(code: str, message: str) -> bytes:
    fields = b"".join(
        tag + text.encode() + b"\0"
        for tag, text in ((b"S", "FATAL"), (b"V", "FATAL"), (b"C", code), (b"M", message))
    )
    body = fields + b"\0"
    return b"E" + struct.pack("!i", len(body) + 4) + body


@register("in_app", "inbox")
class InboxServer:
    def __init__(self) -> None:
        self.mode: Mode = "ok"
        self.retry_after = 1
        self.port = 0
        self.stack = settings()
        self._last: DeliveryCommand | None = None
        self._server: asyncio.Server | None = None
        self._closing = asyncio.Event()

    async def __aenter__(self) -> Self:
        devstack.up(self.stack)
        from projections.db import migrate

        migrate(self.stack.postgres_dsn)
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._closing.set()
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    @property
    def dsn(self) -> str:
        parts = urlsplit(self.stack.postgres_dsn)
        return parts._replace(netloc=f"{parts.username}@127.0.0.1:{self.port}").geturl()

    def provider(self, *, timeout: float) -> Provider:
        return Inbox(
            InboxSettings(
                postgres_dsn=self.dsn,
                redis_url=self.stack.redis_url,
                prefix=f"contract{uuid.uuid4().hex[:6]}.",
                timeout=timeout,
                throttle_pause=self.retry_after,
            )
        )

    def command(self) -> DeliveryCommand:
        nid = uuid.uuid4()
        title = "Bo mentioned you" + ("\x00" if self.mode == "reject" else "")
        self._last = DeliveryCommand(
            tenant_id="acme",
            delivery_id=delivery_id(nid, "in_app", "ada"),
            notification_id=nid,
            recipient_id="ada",
            notification_type="comment.mention",
            channel="in_app",
            priority="normal",
            address="ada",
            content=RenderedContent(title=title, body="in T-1"),
        )
        return self._last

    @property
    def accepted(self) -> list[Any]:
        if self._last is None:
            return []
        with psycopg.connect(self.stack.postgres_dsn) as conn:
            rows = conn.execute(
                "SELECT title FROM inbox_items WHERE delivery_id = %s", (self._last.delivery_id,)
            ).fetchall()
        return [r[0] for r in rows]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if self.mode == "reset":
                writer.transport.abort()
                return
            if self.mode == "timeout":
                await self._closing.wait()
                return
            if self.mode in FATAL:
                while True:
                    (length,) = struct.unpack("!i", await reader.readexactly(4))
                    payload = await reader.readexactly(length - 4)
                    if struct.unpack("!i", payload[:4])[0] not in (SSL_REQUEST, GSS_REQUEST):
                        break
                    writer.write(b"N")
                writer.write(error_response(*FATAL[self.mode]))
                await writer.drain()
                return
            parts = urlsplit(self.stack.postgres_dsn)
            upstream_reader, upstream_writer = await asyncio.open_connection(
                parts.hostname, parts.port or 5432
            )
            await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()
