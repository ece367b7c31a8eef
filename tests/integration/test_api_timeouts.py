"""The edge's reads against a PostgreSQL table held locked: each gives its pooled connection back
within the statement timeout, as a 503, instead of holding it for as long as the lock lasts."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid

import aiohttp
import psycopg
import pytest

from gateways import _pg as pg
from tests.integration.test_api import call, serving
from tidings.config import Settings


def test_a_read_blocked_behind_a_lock_is_a_503_within_the_statement_timeout(
    database: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = database
    monkeypatch.setattr(pg, "STATEMENT_TIMEOUT_MS", 1000)
    held, done = threading.Event(), threading.Event()

    def hold() -> None:
        with psycopg.connect(s.postgres_dsn) as conn:
            conn.execute("LOCK TABLE notifications IN ACCESS EXCLUSIVE MODE")
            held.set()
            done.wait(30)

    async def scenario(base: str) -> list[tuple[int, float]]:
        answers = []
        async with aiohttp.ClientSession() as http:
            for _ in range(5):
                started = time.monotonic()
                status, _, _ = await call(http, "GET", f"{base}/v1/notifications/{uuid.uuid4()}")
                answers.append((status, time.monotonic() - started))
        return answers

    locker = threading.Thread(target=hold)
    locker.start()
    try:
        assert held.wait(10)
        answers = asyncio.run(serving(s, scenario))
    finally:
        done.set()
        locker.join()
    assert [status for status, _ in answers] == [503] * 5, "more reads than pooled connections each answered"
    assert max(took for _, took in answers) < 5
