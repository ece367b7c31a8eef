"""Delivery analytics on the real stack: requests routed by the real router, outcomes as a gateway
reports them, engagement from the inbox projection, read back through `GET /v1/stats` and
`tidings stats --json`, per tenant and window."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp

from tests.integration.test_api import GLOBEX, call, serving
from tests.integration.test_cli import run
from tests.integration.test_projections import project, rows
from tests.integration.test_router import commands, publish_catalog, run_router
from tidings.client import Client
from tidings.config import Settings
from tidings.events import DeliveryOutcome, NotificationOpened, PreferencesUpdated


def pipeline(s: Settings) -> None:
    """ada gets an order (email, push) and two invoices (email, webhook-less, SMS only for the large
    one); grace opted out of order emails and has no phone. Emails are SENT 2 s after their request,
    ada's SMS comes back undelivered, and ada opens her order email."""
    publish_catalog(s)
    with Client(s) as client:
        client.update_recipient(
            tenant="acme", recipient="ada", email="ada@example.com", phone="+4915112345678"
        )
        client.update_recipient(tenant="acme", recipient="grace", email="grace@example.com")
        client.publish(
            PreferencesUpdated(
                tenant_id="acme",
                recipient_id="grace",
                rules=[{"scope": "category", "key": "orders", "channel": "email", "enabled": False}],
            )
        )
        for who in ("ada", "grace"):
            client.send(
                tenant="acme", recipient=who, type="order.shipped", data={"order": "A", "carrier": "D"}
            )
        for amount in (2500, 12):
            client.send(
                tenant="acme", recipient="ada", type="invoice.due", data={"amount": amount, "currency": "EUR"}
            )
    run_router(s)
    sent = commands(s)
    with Client(s) as client:
        for c in sent:
            at = c.occurred_at + timedelta(seconds=2)
            if c.channel == "email":
                client.publish(DeliveryOutcome.of_command(c, "SENT", None, id_reason="sent", occurred_at=at))
            if c.channel == "sms":
                client.publish(
                    DeliveryOutcome.of_command(c, "FAILED", "undelivered", id_reason="dlr", occurred_at=at)
                )
            if c.channel == "email" and c.notification_type == "order.shipped":
                client.publish(
                    NotificationOpened(
                        tenant_id="acme",
                        recipient_id=c.recipient_id,
                        notification_id=c.notification_id,
                        delivery_id=c.delivery_id,
                        channel="email",
                    )
                )
    project(s, "delivery_status")
    project(s, "inbox")


def test_stats_report_deliveries_reasons_latency_and_engagement(database: Settings) -> None:
    s = database
    pipeline(s)
    now = datetime.now(UTC)
    window = {"from": (now - timedelta(hours=1)).isoformat(), "to": (now + timedelta(minutes=1)).isoformat()}

    async def reads(base: str) -> list[Any]:
        async with aiohttp.ClientSession() as http:
            url = f"{base}/v1/stats"
            return [
                await call(http, "GET", url, params=window),
                await call(http, "GET", url),
                await call(http, "GET", url, key=GLOBEX, params=window),
                await call(http, "GET", url, params=window | {"type": "invoice.due"}),
                await call(
                    http, "GET", url, params={"from": "2026-01-01T00:00:00Z", "to": "2026-03-01T00:00:00Z"}
                ),
                await call(http, "GET", url, params={"from": "2026-01-01T00:00:00"}),
                await call(http, "GET", url, key=None),
                await call(http, "GET", url, params={"to": "0001-01-01T00:00:00Z"}),
            ]

    full, default, foreign, invoices, too_long, naive, anonymous, ancient = asyncio.run(serving(s, reads))
    assert [r[0] for r in (full, default, foreign, invoices, too_long, naive, anonymous, ancient)] == [
        200,
        200,
        200,
        200,
        400,
        400,
        401,
        400,
    ]
    types = full[1]["types"]
    assert set(types) == {"order.shipped", "invoice.due"}
    order = types["order.shipped"]
    assert order["notifications"] == 2
    assert order["engagement"] == {"seen": 1, "read": 1}
    email = order["channels"]["email"]
    assert email["status"] == {"SENT": 1, "SKIPPED": 1} and email["reasons"] == {"SKIPPED opted_out": 1}
    assert email["rate"] == 1.0
    [(waited,)] = rows(
        s,
        "SELECT extract(epoch FROM e.occurred_at - n.requested_at) * 1000 FROM notifications n"
        " JOIN delivery_events e USING (notification_id) WHERE e.status = 'SENT'"
        " AND n.notification_type = 'order.shipped'",
    )
    assert email["time_to_send_ms"] == {"p50": round(waited), "p95": round(waited)}
    assert waited >= 2000
    assert order["channels"]["push"]["reasons"] == {"SKIPPED no_address": 2}
    invoice = types["invoice.due"]
    assert invoice["notifications"] == 2 and invoice["engagement"] == {"seen": 0, "read": 0}
    sms = invoice["channels"]["sms"]
    assert sms["status"] == {"FAILED": 1, "SKIPPED": 1} and sms["rate"] == 0.0
    assert sms["reasons"] == {"FAILED undelivered": 1, "SKIPPED condition": 1}
    assert sms["time_to_send_ms"] is None
    assert default[1]["types"] == types, "the default window is the last 24 hours"
    assert foreign[1]["types"] == {}
    assert set(invoices[1]["types"]) == {"invoice.due"}
    assert "31 days" in too_long[1]["detail"] and "time zone" in naive[1]["detail"]

    shown = run("stats", "-t", "acme", "--since", "1h", "--json", s=s)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["types"] == types
    assert run("stats", "-t", "acme", "--since", "soon", s=s).returncode == 2


def test_statistics_held_up_do_not_hold_up_status_reads(database: Settings) -> None:
    """Four statistics requests waiting on PostgreSQL (here a lock on inbox_states, which only they
    read) took every API connection, and a status read waited for one until it gave up with 503."""
    import psycopg

    s = database

    async def scenario(base: str) -> tuple[list[int], int, float]:
        async with aiohttp.ClientSession() as http:
            stats = [asyncio.create_task(call(http, "GET", f"{base}/v1/stats")) for _ in range(4)]
            await asyncio.sleep(1.0)
            started = asyncio.get_running_loop().time()
            status, _, _ = await call(
                http, "GET", f"{base}/v1/notifications/{'0' * 8}-0000-7000-8000-{'0' * 12}"
            )
            took = asyncio.get_running_loop().time() - started
            locker.rollback()
            return [r[0] for r in await asyncio.gather(*stats)], status, took

    with psycopg.connect(s.postgres_dsn) as locker:
        locker.execute("LOCK TABLE inbox_states IN ACCESS EXCLUSIVE MODE")
        answered, status, took = asyncio.run(serving(s, scenario))
    assert status == 404 and took < 3.0, (status, took)
    assert answered.count(200) >= 2
