"""The API's PostgreSQL pools on the real database: one tenant holds at most half of a pool."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import pytest
from psycopg_pool import PoolTimeout

from gateways import _pg as pg
from tests.integration.test_inbox import bearer, serving, token
from tidings.config import Settings


def test_a_tenant_holding_its_share_waits_and_others_still_get_connections(database: Settings) -> None:
    """Two month-long stats reports held both reports connections for minutes, and every tenant's
    `/v1/stats` and GDPR export was 503 meanwhile."""

    async def scenario() -> tuple[float, float, int]:
        pool = pg.pool(database.postgres_dsn, min_size=0, max_size=2, timeout=1.0)
        await pool.open()
        try:
            held = asyncio.Event()
            done = asyncio.Event()

            async def hog() -> None:
                pg.TENANT.set("acme")
                async with pool.connection() as conn:
                    await conn.execute("SELECT 1")
                    held.set()
                    await done.wait()

            hogging = asyncio.create_task(hog())
            await held.wait()

            async def second(tenant: str) -> float:
                pg.TENANT.set(tenant)
                started = time.monotonic()
                async with pool.connection() as conn:
                    await conn.execute("SELECT 1")
                return time.monotonic() - started

            other = await asyncio.create_task(second("globex"))
            started = time.monotonic()
            with pytest.raises(PoolTimeout, match="tenant acme holds its 1 connections"):
                await asyncio.create_task(second("acme"))
            waited = time.monotonic() - started
            done.set()
            await hogging
            after = await asyncio.create_task(second("acme"))
            return other, waited, int(after < 1.0)
        finally:
            await pool.close()

    other, waited, after = asyncio.run(scenario())
    assert other < 0.9
    assert 0.9 <= waited < 3
    assert after == 1


def test_the_inbox_routes_take_connections_as_their_tenant(
    database: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The feed, the socket and the preference centre share the inbox pool; without their tenant set,
    one tenant's recipients (it mints their tokens) could hold all 8 connections and every other
    tenant's feeds answered 503."""
    lent: list[str | None] = []
    lend = pg.SharedPool.connection

    def recorded(self: pg.SharedPool, timeout: float | None = None) -> Any:
        lent.append(pg.TENANT.get())
        return lend(self, timeout)

    monkeypatch.setattr(pg.SharedPool, "connection", recorded)

    async def scenario(base: str) -> list[int]:
        statuses = []
        async with aiohttp.ClientSession() as http:
            for path in ("/v1/inbox", "/v1/me/preferences"):
                async with http.get(f"{base}{path}", headers=bearer(token("ada", tenant="globex"))) as r:
                    statuses.append(r.status)
            async with http.ws_connect(f"{base}/v1/ws") as ws:
                await ws.send_json({"token": token("ada", tenant="globex")})
                statuses.append(len((await ws.receive_json(timeout=5))["items"]))
        return statuses

    assert asyncio.run(serving(database, scenario)) == [200, 200, 0]
    assert lent and set(lent) == {"globex"}
