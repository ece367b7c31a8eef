"""The demo's steps on the HTTP edge (`tidings demo`): ada's inbox feed with a JWT, alan's one-click
unsubscribe and the next order posted through the API, each on an edge started for the call."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from rich.console import Console

from tidings.audit import read_all
from tidings.config import Settings, settings
from tidings.devstack.sinks import MailSink
from tidings.errors import CodecError, InvalidEvent
from tidings.events import DeliveryOutcome
from tidings.topics import names

console = Console(stderr=True)
API_KEY = "demo-api-key-of-the-acme-shop-backend"
API_AUTH = {"Authorization": f"Bearer {API_KEY}"}


def read(topic: str) -> list[Any]:
    """The topic's records the demo can decode. The topics may hold records of others, a poison one
    among them, which the router dead-lettered and the demo has no business stopping on."""
    found = []
    for record in read_all(settings(), topic):
        with contextlib.suppress(CodecError, InvalidEvent):
            found.append(record.decode())
    return found


def on_edge(s: Settings, method: str, path: str, edge: Any = None, **request: Any) -> tuple[int, Any]:
    """One request to an HTTP edge started for it on a free loopback port: (status, JSON or text)."""
    import aiohttp
    from aiohttp import web

    from gateways.edge import app

    async def call() -> tuple[int, Any]:
        runner = web.AppRunner(app(s, edge=edge))
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        url = f"http://127.0.0.1:{runner.addresses[0][1]}{path}"
        try:
            async with aiohttp.ClientSession() as http, http.request(method, url, **request) as r:
                body = await (r.json() if r.content_type == "application/json" else r.text())
                return r.status, body
        finally:
            await runner.cleanup()

    return asyncio.run(call())


def api_edge() -> Any:
    """An edge with the HTTP API mounted for tenant acme (its backend holds API_KEY)."""
    from pydantic import SecretStr

    from gateways.edge import EdgeSettings

    return EdgeSettings(api_keys=SecretStr(f"acme:{API_KEY}"))


def inbox(s: Settings) -> None:
    """Ada's app reads her inbox from the HTTP edge with a JWT her backend signed."""
    from pydantic import SecretStr

    from gateways.edge import EdgeSettings
    from tidings.client import inbox_signing_key, inbox_token

    console.rule("HTTP edge: the inbox feed (GET /v1/inbox, JWT)")
    secret = "demo-inbox-master-secret-of-the-edge"
    acme_key = inbox_signing_key(secret, "acme")
    auth = {"Authorization": f"Bearer {inbox_token(acme_key, tenant='acme', recipient='ada')}"}
    edge = EdgeSettings(inbox_jwt_secret=SecretStr(secret))
    _, feed = on_edge(s, "GET", "/v1/inbox?limit=3", edge, headers=auth)
    titles = "; ".join(str(i["title"]) for i in feed["items"])
    console.print(f"inbox: ada has {feed['unread']} unread items; the newest 3: {titles}")


def unsubscribe(s: Settings, mail: MailSink, sent: dict[str, tuple[str, str]]) -> None:
    """Alan clicks his order email's one-click unsubscribe link (the RFC 8058 POST a mail client sends)
    on the HTTP edge; his next order notification then skips email."""
    from processors.router import Router

    console.rule("HTTP edge: one-click unsubscribe, then the router honours it")
    message = next(m for m in mail.messages if m["To"] == "alan@example.com" and "List-Unsubscribe" in m)
    token = str(message["List-Unsubscribe"]).strip("<>").rsplit("/", 1)[1]

    status, _ = on_edge(s, "POST", f"/unsubscribe/{token}", data="List-Unsubscribe=One-Click")
    order = {"recipient": "alan", "type": "order.shipped", "data": {"order": "A-1004", "carrier": "DHL"}}
    code, accepted = on_edge(s, "POST", "/v1/notifications", api_edge(), headers=API_AUTH, json=order)
    nid = UUID(accepted["notification_id"])
    console.print(f"api: the shop's backend POSTed alan's next order: HTTP {code}, notification {nid}")
    sent[str(nid)] = ("alan", "order.shipped (after unsubscribe)")
    Router(s, instance="demo").run(idle_exit_after=3.0)
    outcomes = [
        o for o in read(names(s).outcomes) if isinstance(o, DeliveryOutcome) and o.notification_id == nid
    ]
    email = next((o for o in outcomes if o.channel == "email"), None)
    verdict = f"{email.status} ({email.detail})" if email else "no email outcome"
    console.print(
        f"edge: alan's one-click unsubscribe answered HTTP {status}; his next order email: {verdict}"
    )


def analytics(s: Settings) -> None:
    """The tenant's delivery analytics for the last hour, from the API (`GET /v1/stats`)."""
    since = (datetime.now(UTC) - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    code, body = on_edge(s, "GET", f"/v1/stats?from={since}", api_edge(), headers=API_AUTH)
    types = body["types"] if code == 200 else {}
    email = types.get("order.shipped", {}).get("channels", {}).get("email", {})
    latency = email.get("time_to_send_ms") or {}
    rate = "-" if email.get("rate") is None else f"{email['rate']:.0%}"
    console.print(
        f"api: GET /v1/stats answered HTTP {code}: {sum(t['notifications'] for t in types.values())} "
        f"notifications of {len(types)} types in the last hour; order.shipped by email: {rate} sent, "
        f"median {latency.get('p50', '-')} ms from request to send"
    )
