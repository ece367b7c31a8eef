"""Local receivers for `tidings demo`: an SMTP server (aiosmtpd) and a Standard Webhooks endpoint
(aiohttp) on loopback, each on an event loop in its own thread, keeping what they received so the demo
can show it."""

from __future__ import annotations

import asyncio
import email
import email.policy
import threading
from email.message import EmailMessage
from typing import Any

from aiohttp import web
from aiosmtpd.smtp import SMTP, Envelope, Session
from standardwebhooks import Webhook


class _Threaded:
    def __init__(self) -> None:
        self.port = 0
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)

    async def start(self) -> int:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.port = self.loop.run_until_complete(self.start())
        self.ready.set()
        self.loop.run_forever()
        self.loop.run_until_complete(self.close())
        self.loop.close()

    def __enter__(self) -> Any:
        self.thread.start()
        if not self.ready.wait(10):
            raise RuntimeError(f"{type(self).__name__} did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


class MailSink(_Threaded):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[EmailMessage] = []

    async def handle_DATA(self, server: Any, session: Session, envelope: Envelope) -> str:
        message = email.message_from_bytes(envelope.original_content or b"", policy=email.policy.SMTP)
        assert isinstance(message, EmailMessage)
        self.messages.append(message)
        return "250 2.0.0 Ok: queued"

    async def start(self) -> int:
        self.server = await self.loop.create_server(
            lambda: SMTP(self, hostname="sink.localhost"), "127.0.0.1", 0
        )
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    async def close(self) -> None:
        self.server.close()


class WebhookSink(_Threaded):
    """Verifies every request with the endpoint's secret; keeps (webhook-id, JSON body) pairs."""

    def __init__(self, secret: str) -> None:
        super().__init__()
        self.secret = secret
        self.received: list[tuple[str, Any]] = []

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        payload = Webhook(self.secret).verify(body, dict(request.headers))
        self.received.append((request.headers["webhook-id"], payload))
        return web.Response(status=204)

    async def start(self) -> int:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        self.runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        port: int = self.runner.addresses[0][1]
        return port

    async def close(self) -> None:
        await self.runner.cleanup()
