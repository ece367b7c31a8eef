"""Consumes inbound SMS opt-outs that name only a number; produces one per recipient holding that number.

An inbound STOP or START carries the sender's number and nothing else, but the router keeps suppressions
in each recipient's state, keyed by recipient. Without a recipient id a STOP reached only the
suppressions table (the router learnt of it from the vendor's refusal of the next send), and a START
never lifted a suppression in the router at all: someone who texted START got no SMS until their number
was set again. The edge therefore looks the number up in the recipients projection (`recipients.phone`,
indexed by migration 0011) and produces the feedback once per recipient found, each keyed to that
recipient's partition, with an event id derived from the original one and the recipient. No holder
found, or the lookup (connection and query) not done within `TIMEOUT`, leaves the feedback as it was:
an opt-out is never dropped, or held back longer than that, for want of the lookup. A number set on a
recipient so recently that the projection has not applied it yet is not found, as before this lookup.
An erased recipient whose row the projection has not deleted yet is found, and the router then keeps
the number as that id's suppression, as it does for a bounce of a message sent before an erasure:
a suppression is the one thing about a person a sender keeps after erasing them (it honours their
objection), and it holds no more than the number. A delivery receipt at Vonage's account-wide URL
saying a number is dead names no recipient either, and goes the same way (`NUMBER_KINDS`).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Coroutine
from typing import Any, TypeVar
from uuid import UUID

import psycopg
from aiohttp import web
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import AsyncConnectionPool

from gateways import _pg as pg
from tidings.config import Settings
from tidings.events import ProviderFeedback

log = logging.getLogger(__name__)
T = TypeVar("T")

NUMBER_KINDS = {"sms_stop", "sms_start", "hard_bounce"}
"""Feedback about a number itself, which holds for every recipient holding it."""
MAX_HOLDERS = 1000
TIMEOUT = 5.0
HOLDERS = f"""
SELECT recipient_id FROM recipients WHERE tenant_id = %s AND phone = %s
ORDER BY recipient_id LIMIT {MAX_HOLDERS}
"""
DELIVERY = "SELECT notification_id, recipient_id FROM deliveries WHERE tenant_id = %s AND delivery_id = %s"
POOL: web.AppKey[AsyncConnectionPool] = web.AppKey("holders_pool", AsyncConnectionPool)


def addressed(report: ProviderFeedback, holders: list[str]) -> list[ProviderFeedback]:
    """`report` once per holder, or unchanged when nobody holds the number."""
    if not holders:
        return [report]
    return [
        report.model_copy(
            update={"recipient_id": holder, "event_id": uuid.uuid5(report.event_id, f"holder/{holder}")}
        )
        for holder in holders
    ]


def wanted(report: ProviderFeedback) -> bool:
    return report.channel == "sms" and report.kind in NUMBER_KINDS and report.recipient_id is None


async def _holders(pool: AsyncConnectionPool, report: ProviderFeedback) -> list[str]:
    async with pool.connection() as conn:
        cursor = await conn.execute(HOLDERS, (report.tenant_id, report.address))
        return [row[0] for row in await cursor.fetchall()]


async def _delivery(pool: AsyncConnectionPool, tenant: str, delivery: UUID) -> tuple[UUID, str | None] | None:
    async with pool.connection() as conn:
        cursor = await conn.execute(DELIVERY, (tenant, delivery))
        row = await cursor.fetchone()
        return None if row is None else (row[0], row[1])


async def delivery_of(pool: AsyncConnectionPool, tenant: str, ref: str) -> tuple[UUID, str | None] | None:
    """The notification and recipient of the tenant's delivery `ref` (a receipt's `client-ref`), from
    the delivery-status projection; None when it is not a delivery id, not there (yet), or the lookup
    failed: the receipt is then taken as one that names no delivery, as before the lookup."""
    try:
        delivery = UUID(ref)
    except ValueError:
        return None
    try:
        return await bounded(_delivery(pool, tenant, delivery))
    except (TimeoutError, psycopg.Error) as exc:
        log.warning("could not look up the delivery of a receipt, taking it without: %r", exc)
        return None


_ABANDONED: set[asyncio.Future[Any]] = set()


def _abandoned(task: asyncio.Future[Any]) -> None:
    _ABANDONED.discard(task)
    if not task.cancelled():
        task.exception()


async def lookup(pool: AsyncConnectionPool, report: ProviderFeedback) -> list[str]:
    """Who holds `report`'s number, or TimeoutError after `TIMEOUT`."""
    return await bounded(_holders(pool, report))


async def bounded(query: Coroutine[Any, Any, T]) -> T:
    """`query`'s answer, or TimeoutError after `TIMEOUT`. A query past its time is cancelled and left to
    end in the background: psycopg cancels a running query by asking the server on a new connection and
    waits for that, which against a PostgreSQL that stopped answering took `TIMEOUT` plus up to 10 s
    more when the lookup awaited its own cancellation.
    """
    task = asyncio.ensure_future(query)
    try:
        done, _ = await asyncio.wait({task}, timeout=TIMEOUT)
    except asyncio.CancelledError:
        task.cancel()
        _ABANDONED.add(task)
        task.add_done_callback(_abandoned)
        raise
    if not done:
        task.cancel()
        _ABANDONED.add(task)
        task.add_done_callback(_abandoned)
        raise TimeoutError(f"no answer within {TIMEOUT} s")
    return task.result()


async def resolve(pool: AsyncConnectionPool, reports: list[ProviderFeedback]) -> list[ProviderFeedback]:
    resolved: list[ProviderFeedback] = []
    for report in reports:
        if not wanted(report):
            resolved.append(report)
            continue
        try:
            holders = await lookup(pool, report)
        except (TimeoutError, psycopg.Error) as exc:
            log.warning("could not look up who holds an opted-out number, producing it as is: %r", exc)
            holders = []
        if len(holders) == MAX_HOLDERS:
            log.warning(
                "%s is held by %d recipients or more; the rest learn of it from the vendor",
                report.address,
                MAX_HOLDERS,
            )
        resolved.extend(addressed(report, holders))
    return resolved


def pool_options(dsn: str) -> dict[str, str | int]:
    """Connection options bounding the lookup, merged with the DSN's own: its `options` are kept with
    `statement_timeout` appended, and its `connect_timeout` is kept when shorter (0, no limit in libpq,
    is not)."""
    own = conninfo_to_dict(dsn)
    options = pg.bounded(dsn, int(TIMEOUT * 1000))["options"]
    connect_timeout = max(2, int(TIMEOUT))
    try:
        theirs = int(float(str(own.get("connect_timeout") or 0)))
    except ValueError:
        theirs = 0
    if theirs > 0:
        connect_timeout = min(connect_timeout, theirs)
    return {"options": options, "connect_timeout": connect_timeout}


def new_pool(dsn: str) -> AsyncConnectionPool:
    """A small pool that connects on first use, so the edge starts and takes opt-outs without PostgreSQL.
    The whole lookup (connection, query, rows) is bounded by `TIMEOUT`; the server also ends the query
    itself then (`statement_timeout`), and a connection is checked before it is lent, so one left dead
    by a PostgreSQL restart is replaced rather than failing an opt-out's lookup. A failed connection is
    retried only for `TIMEOUT`, then the next lookup starts afresh (`gateways._pg`)."""
    return pg.pool(dsn, min_size=0, max_size=2, timeout=TIMEOUT, checked=True, kwargs=pool_options(dsn))


def attach(application: web.Application, settings: Settings) -> None:
    async def pool(app: web.Application) -> AsyncIterator[None]:
        app[POOL] = new_pool(settings.postgres_dsn)
        await app[POOL].open()
        yield
        await app[POOL].close()

    application.cleanup_ctx.append(pool)
