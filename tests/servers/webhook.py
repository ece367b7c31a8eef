"""A local Standard Webhooks receiver (aiohttp) verifying signatures, answering in each contract mode."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

from aiohttp import web
from standardwebhooks import Webhook

from gateways.base import Provider
from gateways.webhook.standard import StandardWebhook, WebhookSettings
from tests.servers.base import Mode, register
from tidings.events import DeliveryCommand, RenderedContent

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
STATUS = {"reject": 400, "throttle": 429, "unavailable": 503}


class WebhookReceiver:
    def __init__(self, secret: str = SECRET) -> None:
        self.mode: Mode = "ok"
        self.retry_after = 7
        self.stall = 5.0
        self.secret = secret
        self.accepted: list[dict[str, Any]] = []
        self.ids: list[str] = []
        self.port = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        Webhook(self.secret).verify(body, dict(request.headers))
        if self.mode == "timeout":
            await asyncio.sleep(self.stall)
        if self.mode == "reset":
            assert request.transport is not None
            request.transport.abort()
            raise asyncio.CancelledError
        if self.mode in STATUS:
            headers = {"Retry-After": str(self.retry_after)} if self.mode == "throttle" else {}
            return web.Response(status=STATUS[self.mode], headers=headers)
        self.accepted.append(json.loads(body))
        self.ids.append(request.headers["webhook-id"])
        return web.Response(status=204)

    async def __aenter__(self) -> WebhookReceiver:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.1)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = self.runner.addresses[0][1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.runner.cleanup()

    def provider(self, *, timeout: float = 5.0) -> Provider:
        return StandardWebhook(
            WebhookSettings(allow_cidrs="127.0.0.1/32", connect_timeout=timeout, read_timeout=timeout)
        )

    def command(self, **changes: Any) -> DeliveryCommand:
        fields: dict[str, Any] = {
            "tenant_id": "acme",
            "delivery_id": uuid.uuid4(),
            "notification_id": uuid.uuid4(),
            "recipient_id": "u",
            "notification_type": "invoice.due",
            "channel": "webhook",
            "priority": "normal",
            "address": f"http://127.0.0.1:{self.port}/hooks",
            "address_params": {"secret": self.secret},
            "content": RenderedContent(data_json='{"invoice": 42}'),
        }
        return DeliveryCommand(**(fields | changes))


register("webhook", "standard")(WebhookReceiver)
