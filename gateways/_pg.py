"""The PostgreSQL connection pools of the HTTP edge (API reads, the inbox feed, SMS holder lookups).

psycopg_pool retries a connection that failed with a backoff that doubles from 1 s for up to
`reconnect_timeout` (300 s by default), and requests wait for that attempt meanwhile: after an outage the
edge went on failing for about as long again as PostgreSQL had been away. These pools retry only as
long as a request waits (`timeout`); the next request then starts a fresh attempt, which connects at
once if PostgreSQL is back (tests/integration/test_sms_opt_outs.py measures it).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from contextvars import ContextVar
from typing import Any

from psycopg import AsyncConnection
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from tidings.pg import sturdy

STATEMENT_TIMEOUT_MS = 30_000
"""The edge's reads: a statement blocked (behind a migration's lock, say) or slow gives its connection
back within this, as a 503, rather than holding one of a few pooled connections for good."""


def bounded(dsn: str, statement_timeout_ms: int | None = None) -> dict[str, Any]:
    """Connection `options` with `statement_timeout` appended to the DSN's own (an `options` given to
    the pool replaces the DSN's: a `search_path` set there was lost)."""
    ms = STATEMENT_TIMEOUT_MS if statement_timeout_ms is None else statement_timeout_ms
    own = str(conninfo_to_dict(dsn).get("options") or "")
    return {"options": " ".join(filter(None, [own, f"-c statement_timeout={ms}"]))}


TENANT: ContextVar[str | None] = ContextVar("tenant", default=None)
"""The tenant an API request is served for (set by the API's route wrapper): its share of a pool."""


class SharedPool(AsyncConnectionPool[AsyncConnection[Any]]):
    """A pool of which one tenant holds at most half the connections at once (at least one): four
    concurrent broadcast reports, or two month-long `/v1/stats`, held every connection for up to 30 s a
    statement, and every other tenant's reads, cancels and erasures were 503 meanwhile. A tenant over
    its share waits for its own connections, as long as the pool's timeout, then gets the pool's 503."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._turns: dict[str, tuple[asyncio.Semaphore, int]] = {}

    @property
    def share(self) -> int:
        return max(1, self.max_size // 2)

    @asynccontextmanager
    async def connection(self, timeout: float | None = None) -> AsyncIterator[AsyncConnection[Any]]:
        tenant = TENANT.get()
        if tenant is None:
            async with super().connection(timeout) as conn:
                yield conn
            return
        turns = self._turns
        turn, users = turns.get(tenant) or (asyncio.Semaphore(self.share), 0)
        turns[tenant] = (turn, users + 1)
        try:
            try:
                await asyncio.wait_for(turn.acquire(), self.timeout if timeout is None else timeout)
            except TimeoutError:
                raise PoolTimeout(f"tenant {tenant} holds its {self.share} connections") from None
            try:
                async with super().connection(timeout) as conn:
                    yield conn
            finally:
                turn.release()
        finally:
            users = turns[tenant][1] - 1
            if users:
                turns[tenant] = (turn, users)
            else:
                del turns[tenant]


def pool(
    dsn: str,
    *,
    min_size: int,
    max_size: int,
    timeout: float,
    checked: bool = False,
    kwargs: dict[str, Any] | None = None,
) -> AsyncConnectionPool:
    """A pool to `open()`; `checked`: test each connection before lending it (one more round trip), so
    one left dead by a PostgreSQL restart is replaced instead of failing its request. Shared by
    tenants (`SharedPool`) where `TENANT` is set. Keepalives and timeouts from `tidings.pg`."""
    return SharedPool(
        sturdy(dsn),
        min_size=min_size,
        max_size=max_size,
        open=False,
        timeout=timeout,
        reconnect_timeout=timeout,
        check=AsyncConnectionPool.check_connection if checked else None,
        kwargs=kwargs,
    )
