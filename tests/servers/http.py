"""The lifecycle and transport-level modes (timeout, reset) every local vendor HTTP API server shares.

Subclasses implement `answer` (the vendor's protocol, including the `reject`, `throttle` and
`unavailable` modes), `provider` and `command`. `send_once` runs one send against a fresh server.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any, ClassVar, Self

import aiohttp
from aiohttp import web

from gateways.base import Provider
from tests.servers.base import Mode
from tidings.events import DeliveryCommand


class VendorServer:
    name: ClassVar[str]

    def __init__(self) -> None:
        self.mode: Mode = "ok"
        self.retry_after = 7
        self.accepted: list[Any] = []
        self.requests = 0
        self.port = 0
        self.timeout = 1.0
        self.moved: str | None = None
        """Answer every request 308 to this URL (an API moved, or a proxy redirecting http:// to https)."""
        self._closing = asyncio.Event()
        self._runner: web.AppRunner | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> Self:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.1)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = self._runner.addresses[0][1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._closing.set()
        if self._runner is not None:
            await self._runner.cleanup()

    def command(self) -> DeliveryCommand:
        raise NotImplementedError

    def provider(self, *, timeout: float) -> Provider:
        raise NotImplementedError

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.requests += 1
        if self.mode == "reset":
            assert request.transport is not None
            request.transport.abort()
            raise asyncio.CancelledError
        if self.moved is not None:
            return web.Response(status=308, headers={"Location": self.moved})
        if self.mode == "timeout":
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), self.timeout + 5)
            return web.Response(status=503)
        return await self.answer(request, body)

    async def answer(self, request: web.Request, body: bytes) -> web.StreamResponse:
        raise NotImplementedError


def send_once(
    server_class: Callable[[], Any],
    command: DeliveryCommand | None = None,
    setup: Callable[[Any], None] = lambda server: None,
    **settings: Any,
) -> tuple[Any, Any]:
    """(what `provider.send` returned or raised, the server) for one command (default: the server's own)."""

    async def scenario() -> tuple[Any, Any]:
        async with server_class() as server:
            setup(server)
            provider = server.provider(timeout=2.0, **settings)
            async with aiohttp.ClientSession() as session:
                try:
                    result: Any = await provider.send(session, command or server.command())
                except Exception as exc:
                    result = exc
            await provider.close()
            return result, server

    return asyncio.run(scenario())
