"""Consumes `DELETE /v1/recipients/{recipient}[?reason=...]`; produces AudienceMembersRemoved for every
audience the recipient is in (read from the audiences projection), then RecipientErased on
notifications.recipients.

Answers 202 once Kafka has the events: the router, the scheduler and the projections carry the erasure
out from there (docs/architecture.md, "Erasure"). `reason` is kept with the erasure for the audit trail
(a ticket id, say), so it must not hold personal data itself.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from gateways.api_schema import Problem, problem
from gateways.ops import Operation
from tidings.erasure import MEMBERSHIPS, erasure

Produce = Callable[..., Awaitable[None]]
Accept = Callable[..., web.Response]
Rows = Callable[..., Awaitable[list[dict[str, Any]]]]
MAX_REASON = 500


def operations(
    produce: Produce, accepted: Accept, rows: Rows, recipient_id: Callable[[web.Request], str]
) -> list[Operation]:
    async def erase_recipient(request: web.Request, tenant: str) -> web.Response:
        recipient = recipient_id(request)
        reason = request.query.get("reason") or None
        if reason is not None and len(reason) > MAX_REASON:
            raise Problem(problem(400, "Bad query", f"reason is at most {MAX_REASON} characters"))
        audiences = [r["audience_id"] for r in await rows(MEMBERSHIPS, tenant, recipient)]
        removals, erased = erasure(tenant=tenant, recipient=recipient, audiences=audiences, reason=reason)
        await produce(request, *removals, erased)
        return accepted(event_id=erased.event_id, event_ids=[e.event_id for e in removals] or None)

    return [
        Operation(
            "DELETE",
            "/v1/recipients/{recipient}",
            erase_recipient,
            "Erase a recipient's personal data (GDPR Art. 17)",
            None,
            202,
        )
    ]
