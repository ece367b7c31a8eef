"""Consumes HTTP requests about audiences and broadcasts; produces their events on
notifications.broadcasts (expanded by `processors/audience.py`).

Routes of the server-side API (`gateways/api.py` mounts them, with its authentication and errors):
- `POST /v1/audiences/{audience}/members`: `{"add": [...], "remove": [...]}`, up to 10,000 each;
  produced as events of at most 1,000 members, adds before removes, in one acknowledged write.
- `POST /v1/broadcasts`: one notification to every current member of `audience`; 202 with the
  broadcast id. Idempotent like `POST /v1/notifications`: an `Idempotency-Key` (header or body) derives
  the id, and the audience processor ignores a broadcast id it has seen (30 days); a key first used for
  another broadcast is 422 `Idempotency-Key reused` (it was 202, and the new broadcast was dropped).
  Each member's notification id is uuid5(broadcast id, recipient), readable with
  `GET /v1/notifications/{id}`.
- `GET /v1/audiences/{audience}`: its size now; `GET /v1/audiences/{audience}/members?limit=100&after=`:
  its members by recipient id, a page at a time; `GET /v1/broadcasts/{broadcast_id}`: the broadcast,
  the number of members it covered, its cancellation, and `delivery`: its member notifications by
  status and their deliveries by channel and status (`tidings.broadcasts.delivery_report`, from the
  delivery-status projection). These read projections, so they lag the topics by the projections' delay.
- `POST /v1/audiences/{audience}/broadcasts/{broadcast_id}/cancel`: members not yet reached get
  nothing, the others' notifications are cancelled. The audience is in the path because a broadcast
  lives in its audience's partition: a cancellation naming another audience cannot find it, so one
  naming another audience than the projection knows the broadcast under is 409.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any
from uuid import UUID

from aiohttp import web
from pydantic import TypeAdapter, ValidationError

from gateways.api_schema import BroadcastBody, BroadcastCancelBody, MembersBody, Problem, body, problem
from gateways.ops import Operation
from tidings.broadcasts import (
    REPORT_CHANNELS,
    REPORT_STATUSES,
    broadcast_request,
    delivery_report,
    membership,
)
from tidings.events import BroadcastCancelled, Event, Identifier, validated

Produce = Callable[..., Awaitable[None]]
Accept = Callable[..., web.Response]
Rows = Callable[..., Awaitable[list[dict[str, Any]]]]
SameRequest = Callable[[str, str, str | None, Any], Awaitable[None]]
BROADCAST = """
SELECT * FROM broadcasts WHERE tenant_id = %s AND broadcast_id = %s
ORDER BY requested_at IS NULL, requested_at, audience_id LIMIT 1
"""
AUDIENCES_OF = "SELECT audience_id FROM broadcasts WHERE tenant_id = %s AND broadcast_id = %s"
"""The audiences the projection knows a broadcast under: a cancellation naming another went to that
audience's partition, found nothing there, and was answered 202 while the broadcast went on."""
IDENTIFIER: TypeAdapter[str] = TypeAdapter(Identifier)
MEMBERS = """
SELECT recipient_id, joined_at FROM audience_members
WHERE tenant_id = %s AND audience_id = %s AND recipient_id > %s ORDER BY recipient_id LIMIT %s
"""


def operations(
    produce: Produce,
    accepted: Accept,
    header_key: Callable[[web.Request], str | None],
    rows: Rows,
    same_request: SameRequest,
) -> list[Operation]:
    async def audience_members(request: web.Request, tenant: str) -> web.Response:
        b = await body(request, MembersBody)
        audience = request.match_info["audience"]
        events: list[Event] = [
            *membership(tenant=tenant, audience=audience, recipients=b.add),
            *membership(tenant=tenant, audience=audience, recipients=b.remove, remove=True),
        ]
        if not events:
            raise Problem(problem(422, "Nothing to change", "give recipients to add or remove"))
        await produce(request, *events)
        return accepted(event_ids=[e.event_id for e in events])

    async def broadcast(request: web.Request, tenant: str) -> web.Response:
        b, key = await body(request, BroadcastBody), header_key(request)
        if key is not None and b.idempotency_key not in (None, key):
            raise Problem(problem(422, "Two different idempotency keys", "header and body disagree"))
        fields: dict[str, Any] = b.model_dump(exclude={"idempotency_key"})
        event = broadcast_request(tenant=tenant, idempotency_key=b.idempotency_key or key, **fields)
        await same_request(
            tenant,
            "broadcast",
            b.idempotency_key or key,
            b.model_dump(mode="json", exclude={"idempotency_key"}),
        )
        await produce(request, event)
        return accepted(broadcast_id=event.broadcast_id)

    async def cancel_broadcast(request: web.Request, tenant: str) -> web.Response:
        b = await body(request, BroadcastCancelBody)
        try:
            bid = UUID(request.match_info["broadcast_id"])
        except ValueError:
            return problem(404, "Unknown broadcast", "broadcast ids are UUIDs")
        audience = request.match_info["audience"]
        known = {r["audience_id"] for r in await rows(AUDIENCES_OF, tenant, bid)}
        if known and audience not in known:
            why = f"the broadcast is to {', '.join(sorted(known))}; cancel it under that audience"
            return problem(409, "Wrong audience", why)
        event = validated(
            BroadcastCancelled,
            tenant_id=tenant,
            correlation_id=str(bid),
            audience_id=audience,
            broadcast_id=bid,
            reason=b.reason,
        )
        await produce(request, event)
        return accepted(event_id=event.event_id)

    async def get_audience(request: web.Request, tenant: str) -> web.Response:
        audience = request.match_info["audience"]
        found = await rows(
            "SELECT members FROM audiences WHERE tenant_id = %s AND audience_id = %s", tenant, audience
        )
        return web.json_response({"audience_id": audience, "members": found[0]["members"] if found else 0})

    async def get_members(request: web.Request, tenant: str) -> web.Response:
        try:
            limit = min(max(int(request.query.get("limit", 100)), 1), 1000)
        except ValueError:
            return problem(400, "Bad query", "limit is 1..1000; after is the last recipient id of a page")
        after = request.query.get("after", "")
        try:
            if after:
                IDENTIFIER.validate_python(after)
        except ValidationError:
            return problem(400, "Bad query", "after is the last recipient id of a page")
        found = await rows(MEMBERS, tenant, request.match_info["audience"], after, limit)
        more = len(found) == limit
        return web.json_response({"items": found, "next": found[-1]["recipient_id"] if more else None})

    async def get_broadcast(request: web.Request, tenant: str) -> web.Response:
        try:
            bid = UUID(request.match_info["broadcast_id"])
        except ValueError:
            return problem(404, "Unknown broadcast", "broadcast ids are UUIDs")
        found = await rows(BROADCAST, tenant, bid)
        if not found:
            return problem(404, "Unknown broadcast", "not (yet) in the audiences projection")
        report = delivery_report(
            await rows(REPORT_STATUSES, tenant, bid), await rows(REPORT_CHANNELS, tenant, bid)
        )
        return web.json_response({**found[0], "delivery": report})

    return [
        Operation("GET", "/v1/audiences/{audience}", get_audience, "An audience's size"),
        Operation(
            "GET",
            "/v1/audiences/{audience}/members",
            get_members,
            "An audience's members",
            query=("limit", "after"),
        ),
        Operation(
            "GET",
            "/v1/broadcasts/{broadcast_id}",
            get_broadcast,
            "A broadcast, its cancellation and its delivery",
        ),
        Operation(
            "POST",
            "/v1/audiences/{audience}/members",
            audience_members,
            "Add or remove members",
            MembersBody,
            202,
        ),
        Operation(
            "POST",
            "/v1/broadcasts",
            broadcast,
            "Notify every member of an audience",
            BroadcastBody,
            202,
            idempotent=True,
        ),
        Operation(
            "POST",
            "/v1/audiences/{audience}/broadcasts/{broadcast_id}/cancel",
            cancel_broadcast,
            "Cancel a broadcast",
            BroadcastCancelBody,
            202,
        ),
    ]
