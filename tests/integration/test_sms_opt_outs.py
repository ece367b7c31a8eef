"""Inbound SMS STOP and START on the real stack reach the router for every recipient holding the number."""

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlencode

import aiohttp
import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import AsyncConnectionPool
from pydantic import SecretStr

from gateways.edge import EdgeSettings
from gateways.sms import holders
from gateways.sms.inbound import twilio_signature
from tests.integration.test_edge import serving
from tests.integration.test_projections import project, rows
from tests.integration.test_router import commands, decoded, publish_catalog, run_router
from tests.unit.test_sms_inbound import TOKEN, twilio_form
from tidings.client import Client
from tidings.config import Settings
from tidings.events import DeliveryOutcome, ProviderFeedback
from tidings.topics import names

SHARED, OWN, NOBODYS = "+447700900555", "+447700900777", "+447700900999"
EDGE = EdgeSettings(twilio_auth_token=SecretStr(TOKEN))
STOP = ProviderFeedback(tenant_id="acme", kind="sms_stop", channel="sms", address=SHARED, provider="twilio")


def texts(s: Settings, *messages: tuple[str, str]) -> list[int]:
    async def scenario(base: str) -> list[int]:
        statuses = []
        async with aiohttp.ClientSession() as http:
            for word, sender in messages:
                form = twilio_form(word, sender=sender)
                signature = twilio_signature(f"{base}/inbound/twilio/acme", form, TOKEN)
                headers = {
                    "X-Twilio-Signature": signature,
                    "Content-Type": "application/x-www-form-urlencoded",
                }
                async with http.post(
                    f"{base}/inbound/twilio/acme", data=urlencode(form), headers=headers
                ) as r:
                    statuses.append(r.status)
        return statuses

    result: list[int] = asyncio.run(serving(s, scenario, EDGE))
    return result


def invoices(s: Settings, *recipients: str) -> dict[str, Any]:
    with Client(s) as client:
        return {
            who: client.send(
                tenant="acme", recipient=who, type="invoice.due", data={"amount": 5000, "currency": "EUR"}
            )
            for who in recipients
        }


def sms_fate(s: Settings, sent: dict[str, Any]) -> dict[str, str]:
    """Per recipient: `sent` when an SMS command was planned, else the SMS outcome's reason."""
    run_router(s)
    planned = {c.notification_id for c in commands(s) if c.channel == "sms"}
    reasons = {
        o.notification_id: o.reason
        for o in decoded(s, names(s).outcomes)
        if isinstance(o, DeliveryOutcome) and o.channel == "sms"
    }
    return {who: "sent" if n in planned else str(reasons.get(n)) for who, n in sent.items()}


def test_stop_and_start_reach_every_holder_of_the_number_in_the_router(database: Settings) -> None:
    s = database
    publish_catalog(s)
    with Client(s) as client:
        for who, phone in [("ada", SHARED), ("bob", SHARED), ("cy", OWN)]:
            client.update_recipient(tenant="acme", recipient=who, email=f"{who}@example.com", phone=phone)
    project(s, "recipients")

    assert texts(s, ("STOP", SHARED), ("STOP", NOBODYS)) == [200, 200]
    stops = [f for f in decoded(s, names(s).feedback) if isinstance(f, ProviderFeedback)]
    assert sorted((f.address, f.recipient_id, f.kind) for f in stops) == [
        (SHARED, "ada", "sms_stop"),
        (SHARED, "bob", "sms_stop"),
        (NOBODYS, None, "sms_stop"),
    ]
    assert len({f.event_id for f in stops}) == 3
    assert sms_fate(s, invoices(s, "ada", "bob", "cy")) == {
        "ada": "suppressed",
        "bob": "suppressed",
        "cy": "sent",
    }

    assert texts(s, ("START", SHARED)) == [200]
    assert sms_fate(s, invoices(s, "ada", "bob")) == {"ada": "sent", "bob": "sent"}
    project(s, "suppressions")
    assert rows(s, "SELECT address, active FROM suppressions ORDER BY address") == [
        (SHARED, False),
        (NOBODYS, True),
    ]


def test_a_lookup_that_hangs_is_given_up_and_the_opt_out_produced_as_it_came(
    database: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = database
    monkeypatch.setattr(holders, "TIMEOUT", 1.0)

    async def scenario() -> tuple[list[ProviderFeedback], float]:
        pool = holders.new_pool(s.postgres_dsn)
        await pool.open()
        try:
            started = time.monotonic()
            return await holders.resolve(pool, [STOP]), time.monotonic() - started
        finally:
            await pool.close()

    with psycopg.connect(s.postgres_dsn) as locker:
        locker.execute("LOCK TABLE recipients IN ACCESS EXCLUSIVE MODE")
        release = threading.Timer(10, locker.rollback)
        release.start()
        try:
            got, took = asyncio.run(scenario())
        finally:
            release.cancel()
    assert got == [STOP]
    assert took < 4, f"the lookup waited {took:.1f} s for a lock instead of giving up after 1 s"


class Freezer:
    """A TCP relay to PostgreSQL that can stop relaying while keeping every connection open (`frozen`: a
    server that stopped answering, a network partition or a hung host, which refuses nothing), or close
    each new connection at once (`refusing`: a server that is down)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.frozen = asyncio.Event()
        self.refusing = asyncio.Event()
        self.server: asyncio.Server | None = None
        self.relays: set[asyncio.Future[object]] = set()

    async def __aenter__(self) -> int:
        self.server = await asyncio.start_server(self.relay, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        for relay in self.relays:
            relay.cancel()
        await asyncio.gather(*self.relays, return_exceptions=True)

    async def cut(self) -> None:
        """Close every connection relayed so far (a server that went down under them)."""
        relays, self.relays = self.relays, set()
        for relay in relays:
            relay.cancel()
        await asyncio.gather(*relays, return_exceptions=True)

    async def relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refusing.is_set():
            writer.close()
            return
        upstream_reader, upstream_writer = await asyncio.open_connection(self.host, self.port)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            while data := await src.read(65536):
                if self.frozen.is_set():
                    await asyncio.Event().wait()
                dst.write(data)
                await dst.drain()

        both = asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))
        self.relays.add(both)
        try:
            await both
        finally:
            writer.close()
            upstream_writer.close()


@contextlib.asynccontextmanager
async def relayed_pool(s: Settings) -> AsyncIterator[tuple[Freezer, AsyncConnectionPool]]:
    """The holders' pool, open, connecting to PostgreSQL through a `Freezer`."""
    dsn = conninfo_to_dict(s.postgres_dsn)
    freezer = Freezer(str(dsn.get("host") or "127.0.0.1"), int(str(dsn.get("port") or 5432)))
    async with freezer as port:
        pool = holders.new_pool(make_conninfo(s.postgres_dsn, host="127.0.0.1", port=port))
        await pool.open()
        try:
            yield freezer, pool
        finally:
            await pool.close(timeout=0.5)


def test_a_database_that_stops_answering_holds_the_opt_out_no_longer_than_the_timeout(
    database: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(holders, "TIMEOUT", 1.0)

    async def scenario() -> tuple[list[ProviderFeedback], float]:
        async with relayed_pool(database) as (freezer, pool):
            assert await holders.lookup(pool, STOP) == []
            freezer.frozen.set()
            started = time.monotonic()
            return await holders.resolve(pool, [STOP]), time.monotonic() - started

    got, took = asyncio.run(scenario())
    assert got == [STOP]
    assert took < 4, f"the lookup took {took:.1f} s against a silent server instead of giving up after 1 s"


def test_lookups_find_holders_again_soon_after_the_database_is_back(
    database: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(holders, "TIMEOUT", 1.0)

    async def answers(pool: AsyncConnectionPool) -> bool:
        try:
            await holders.lookup(pool, STOP)
        except (TimeoutError, psycopg.Error):
            return False
        return True

    async def scenario() -> float:
        async with relayed_pool(database) as (freezer, pool):
            freezer.refusing.set()
            outage_ends = time.monotonic() + 8
            while time.monotonic() < outage_ends:
                assert not await answers(pool)
                await asyncio.sleep(0.3)
            freezer.refusing.clear()
            back = time.monotonic()
            while not await answers(pool) and time.monotonic() < back + 30:
                await asyncio.sleep(0.2)
            return time.monotonic() - back

    took = asyncio.run(scenario())
    assert took < 3, f"lookups failed for {took:.1f} s after the database came back"


def test_an_account_wide_vonage_receipt_of_a_dead_number_reaches_every_holder(database: Settings) -> None:
    """A receipt at the bare /callbacks/vonage/status/{tenant} path names no recipient, and the router
    drops feedback without one: the number stayed open to every message after it."""
    from urllib.parse import urlencode

    from tests.servers.sms_receipts import vonage_signed

    s = database
    with Client(s) as client:
        for who in ("ada", "bob"):
            client.update_recipient(tenant="acme", recipient=who, phone=SHARED)
    project(s, "recipients")
    secret = "receipt-secret"
    params = {
        "msisdn": SHARED.removeprefix("+"),
        "to": "Tidings",
        "messageId": "0B00000127FDBC63",
        "status": "failed",
        "err-code": "3",
        "message-timestamp": "2026-11-26 12:10:29",
        "timestamp": "1795000000",
        "nonce": "abc",
    }
    params["sig"] = vonage_signed(params, secret)

    async def scenario(base: str) -> int:
        url = f"{base}/callbacks/vonage/status/acme?{urlencode(params)}"
        async with aiohttp.ClientSession() as http, http.get(url) as r:
            return r.status

    edge = EdgeSettings(vonage_signature_secret=SecretStr(secret))
    assert asyncio.run(serving(s, scenario, edge)) == 204
    feedback = [f for f in decoded(s, names(s).feedback) if isinstance(f, ProviderFeedback)]
    dead = [f for f in feedback if f.kind == "hard_bounce"]
    assert sorted(f.recipient_id or "" for f in dead) == ["ada", "bob"]
