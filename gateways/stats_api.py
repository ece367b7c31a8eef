"""Consumes HTTP requests for a tenant's delivery analytics; produces nothing (reads the projections).

`GET /v1/stats?from=ISO&to=ISO&type=KEY`: per notification type, notifications by status, per channel
the deliveries by status, skip and failure reasons, the success rate and time to send, and engagement
(`tidings/stats.py`). The window defaults to the last 24 hours and is at most 31 days; `from` and `to`
need a time zone.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web
from psycopg.rows import dict_row

from gateways.api_schema import problem
from gateways.ops import Operation
from tidings import stats

DEFAULT_WINDOW = timedelta(hours=24)


def _time(request: web.Request, name: str) -> datetime | None:
    text = request.query.get(name)
    return datetime.fromisoformat(text.replace("Z", "+00:00")) if text else None


def operations(pool: web.AppKey[Any]) -> list[Operation]:
    async def get_stats(request: web.Request, tenant: str) -> web.Response:
        try:
            until = _time(request, "to") or datetime.now(UTC)
            since = _time(request, "from") or until - DEFAULT_WINDOW
            args = stats.parameters(tenant, since, until, request.query.get("type") or None)
        except (ValueError, OverflowError) as exc:
            return problem(400, "Bad window", str(exc))
        async with request.app[pool].connection() as conn:
            conn.row_factory = dict_row
            found = await stats.fetch(conn, args)
        body = {"from": since.isoformat(), "to": until.isoformat(), "types": stats.report(found)}
        return web.json_response(body)

    return [
        Operation(
            "GET",
            "/v1/stats",
            get_stats,
            "Delivery analytics over a time window",
            query=("from", "to", "type"),
        )
    ]
