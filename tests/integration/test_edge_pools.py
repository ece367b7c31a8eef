"""The API's PostgreSQL pools on the real database: one tenant holds at most half of a pool."""

from __future__ import annotations

import asyncio
import time

import pytest
from psycopg_pool import PoolTimeout

from gateways import _pg as pg
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
