"""The PostgreSQL connection pools of the HTTP edge (API reads, the inbox feed, SMS holder lookups).

psycopg_pool retries a connection that failed with a backoff that doubles from 1 s for up to
`reconnect_timeout` (300 s by default), and requests wait for that attempt meanwhile: after an outage the
edge went on failing for about as long again as PostgreSQL had been away. These pools retry only as
long as a request waits (`timeout`); the next request then starts a fresh attempt, which connects at
once if PostgreSQL is back (tests/integration/test_sms_opt_outs.py measures it).
"""

from __future__ import annotations

from typing import Any

from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import AsyncConnectionPool

STATEMENT_TIMEOUT_MS = 30_000
"""The edge's reads: a statement blocked (behind a migration's lock, say) or slow gives its connection
back within this, as a 503, rather than holding one of a few pooled connections for good."""


def bounded(dsn: str, statement_timeout_ms: int | None = None) -> dict[str, Any]:
    """Connection `options` with `statement_timeout` appended to the DSN's own (an `options` given to
    the pool replaces the DSN's: a `search_path` set there was lost)."""
    ms = STATEMENT_TIMEOUT_MS if statement_timeout_ms is None else statement_timeout_ms
    own = str(conninfo_to_dict(dsn).get("options") or "")
    return {"options": " ".join(filter(None, [own, f"-c statement_timeout={ms}"]))}


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
    one left dead by a PostgreSQL restart is replaced instead of failing its request."""
    return AsyncConnectionPool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        open=False,
        timeout=timeout,
        reconnect_timeout=timeout,
        check=AsyncConnectionPool.check_connection if checked else None,
        kwargs=kwargs,
    )
