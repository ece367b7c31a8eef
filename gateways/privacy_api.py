"""Consumes a tenant's privacy requests about one recipient; produces AudienceMembersRemoved and
RecipientErased (erasure), or a JSON export read from the projections (access).

- `DELETE /v1/recipients/{recipient}[?reason=...]` (GDPR Art. 17): removes the recipient from every
  audience it is in (read from the audiences projection), then produces RecipientErased on
  notifications.recipients; 202 once Kafka has the events. The router, the scheduler and the
  projections carry it out (docs/architecture.md, "Erasure"). `reason` is kept for the audit trail (a
  ticket id) and must not hold personal data itself.
- `GET /v1/recipients/{recipient}/export[?limit=N]` (Art. 15 access, Art. 20 portability): what the
  tables hold about the recipient: contacts, properties, preferences, suppressions and unsubscribes,
  devices, audiences, its notifications with their deliveries and its engagement with them, its in-app
  items with their content, and an erasure. The newest
  `limit` notifications and items (1,000 by default, at most 10,000), with `truncated` saying whether
  there were more. Push tokens and webhook secrets are left out as in every read. The topics hold the
  same events until their retention: `tidings replay TOPIC ... --filter tenant_id=T --filter
  recipient_id=R` reads those.

`tidings recipients erase` and `tidings recipients export` do the same from the command line.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from psycopg import AsyncConnection
from psycopg.rows import dict_row

from gateways.api_schema import Problem, jsonable, problem, recipient_view
from gateways.ops import Operation
from processors.recipients import RecipientState
from tidings.config import Settings
from tidings.erasure import CATCH_UP_S, MEMBERSHIPS, STORED, behind, erasure
from tidings.errors import KafkaUnavailable, UnknownTopic
from tidings.kafka import end_offsets
from tidings.topics import names

log = logging.getLogger(__name__)

Produce = Callable[..., Awaitable[None]]
Accept = Callable[..., web.Response]
Rows = Callable[..., Awaitable[list[dict[str, Any]]]]
MAX_REASON = 500
DEFAULT_LIMIT, MAX_LIMIT = 1_000, 10_000

PROFILE = "SELECT state, updated_at FROM recipients WHERE tenant_id = %s AND recipient_id = %s"
DEVICES = """SELECT device_id, platform, app_id, active, registered_at, invalidated_at FROM devices
WHERE tenant_id = %s AND recipient_id = %s ORDER BY device_id"""
NOTIFICATIONS = """SELECT n.notification_id, n.notification_type, n.priority, n.requested_at, n.status,
       n.terminal_at, n.broadcast_id, s.seen_at, s.read_at, s.archived_at
FROM notifications n LEFT JOIN inbox_states s
  ON s.tenant_id = n.tenant_id AND s.recipient_id = n.recipient_id AND s.notification_id = n.notification_id
WHERE n.tenant_id = %s AND n.recipient_id = %s
ORDER BY n.requested_at DESC, n.notification_id DESC LIMIT %s"""
"""With the recipient's engagement (seen, read, archived; an email or push opened counts as read),
which `inbox_states` keeps for every notification, not only those with an in-app item: the export
left it out for the others. In the order of `notifications_recipient_history` (a notification whose
request is not projected yet, `requested_at` NULL, first): NULLS LAST, which no index has, sorted all of
the recipient's notifications for the newest `limit`."""
DELIVERIES = """SELECT notification_id, delivery_id, channel, provider, status, reason, attempts, first_at,
       last_at
FROM deliveries WHERE tenant_id = %s AND notification_id = ANY(%s) ORDER BY notification_id, channel"""
INBOX = """SELECT i.notification_id, i.delivery_id, i.notification_type, i.category, i.title, i.body,
       i.data_json, i.locale, i.requested_at, i.created_at, s.seen_at, s.read_at, s.archived_at,
       s.last_read_at, s.unread_at, s.last_archived_at, s.unarchived_at
FROM inbox_items i LEFT JOIN inbox_states s
  ON s.notification_id = i.notification_id AND s.tenant_id = i.tenant_id AND s.recipient_id = i.recipient_id
WHERE i.tenant_id = %s AND i.recipient_id = %s ORDER BY i.seq DESC LIMIT %s"""
ERASED = "SELECT erased_at, reason FROM erasures WHERE tenant_id = %s AND recipient_id = %s"


async def export(
    conn: AsyncConnection[Any], tenant: str, recipient: str, limit: int = DEFAULT_LIMIT
) -> dict[str, Any] | None:
    """Everything the tables hold about one recipient, or None when they hold nothing: read in one
    REPEATABLE READ snapshot, so a projection committing meanwhile (an erasure, new deliveries) shows
    in all of the export or in none of it."""
    async with conn.transaction():
        await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        return await _export(conn, tenant, recipient, limit)


async def _export(
    conn: AsyncConnection[Any], tenant: str, recipient: str, limit: int
) -> dict[str, Any] | None:
    async def rows(sql: str, *args: Any) -> list[dict[str, Any]]:
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(sql, args)
        return [jsonable(r) for r in await cur.fetchall()]

    profile = await rows(PROFILE, tenant, recipient)
    notifications = await rows(NOTIFICATIONS, tenant, recipient, limit + 1)
    inbox = await rows(INBOX, tenant, recipient, limit + 1)
    truncated = len(notifications) > limit or len(inbox) > limit
    notifications, inbox = notifications[:limit], inbox[:limit]
    deliveries: dict[str, list[dict[str, Any]]] = {}
    ids = [n["notification_id"] for n in notifications]
    for d in await rows(DELIVERIES, tenant, ids) if ids else []:
        deliveries.setdefault(d.pop("notification_id"), []).append(d)
    found = {
        "devices": await rows(DEVICES, tenant, recipient),
        "audiences": [r["audience_id"] for r in await rows(MEMBERSHIPS, tenant, recipient)],
        "notifications": [
            n | {"deliveries": deliveries.get(n["notification_id"], [])} for n in notifications
        ],
        "inbox": inbox,
        "erased": next(iter(await rows(ERASED, tenant, recipient)), None),
    }
    if not profile and not any(found.values()):
        return None
    state = RecipientState.model_validate(profile[0]["state"]) if profile else None
    return {
        "tenant_id": tenant,
        "recipient_id": recipient,
        "exported_at": datetime.now(UTC).isoformat(),
        "profile": recipient_view(state) | {"updated_at": profile[0]["updated_at"]} if state else None,
        **found,
        "truncated": truncated,
    }


async def audiences_behind(settings: Settings, rows: Rows) -> int:
    """How many membership records, of those on the topic now, the audiences projection has still not
    applied after waiting up to `CATCH_UP_S` for it (`tidings.erasure`)."""
    topic = names(settings).broadcasts
    ends = await asyncio.to_thread(end_offsets, settings, topic)
    deadline = time.monotonic() + CATCH_UP_S
    while True:
        stored = await rows(STORED, topic)
        lag = behind(ends, [(r["partition"], r["next_offset"]) for r in stored])
        if lag == 0 or time.monotonic() > deadline:
            return lag
        await asyncio.sleep(0.25)


def operations(
    settings: Settings,
    produce: Produce,
    accepted: Accept,
    rows: Rows,
    recipient_id: Callable[[web.Request], str],
    connection: Callable[[web.Request], Any],
) -> list[Operation]:
    async def erase_recipient(request: web.Request, tenant: str) -> web.Response:
        """503 while the audiences projection has not read the membership topic to its end: the
        recipient's audiences are not all known, and one left out kept the recipient in it for good."""
        recipient = recipient_id(request)
        reason = request.query.get("reason") or None
        if reason is not None and len(reason) > MAX_REASON:
            raise Problem(problem(400, "Bad query", f"reason is at most {MAX_REASON} characters"))
        try:
            lag = await audiences_behind(settings, rows)
        except (KafkaUnavailable, UnknownTopic) as exc:
            log.warning("could not read the audiences projection's lag: %s", exc)
            raise Problem(problem(503, "Kafka unavailable", "retry later")) from None
        if lag:
            why = (
                f"the audiences projection has {lag} membership records to apply, so the recipient's "
                "audiences are not all known; retry when it has caught up (tidings run projection audiences)"
            )
            response = problem(503, "Audiences not caught up", why)
            response.headers["Retry-After"] = "5"
            raise Problem(response)
        audiences = [r["audience_id"] for r in await rows(MEMBERSHIPS, tenant, recipient)]
        removals, erased = erasure(tenant=tenant, recipient=recipient, audiences=audiences, reason=reason)
        if removals:
            await produce(request, *removals)
        await produce(request, erased)
        return accepted(event_id=erased.event_id, event_ids=[e.event_id for e in removals] or None)

    async def export_recipient(request: web.Request, tenant: str) -> web.Response:
        recipient = recipient_id(request)
        try:
            limit = int(request.query.get("limit", DEFAULT_LIMIT))
        except ValueError:
            limit = 0
        if not 1 <= limit <= MAX_LIMIT:
            raise Problem(problem(400, "Bad query", f"limit is 1..{MAX_LIMIT}"))
        async with connection(request) as conn:
            found = await export(conn, tenant, recipient, limit)
        if found is None:
            return problem(404, "Unknown recipient", "the projections hold nothing about this recipient")
        return web.json_response(found)

    path = "/v1/recipients/{recipient}"
    return [
        Operation(
            "DELETE", path, erase_recipient, "Erase a recipient's personal data", None, 202, query=("reason",)
        ),
        Operation(
            "GET", path + "/export", export_recipient, "Everything held about a recipient", query=("limit",)
        ),
    ]
