"""Consumes HTTP requests about a tenant's suppressed addresses; produces ProviderFeedback on
notifications.feedback when an operator lifts one.

- `GET /v1/suppressions?channel=email&active=true&address=&limit=100&after=`: the tenant's suppressed
  addresses from the suppressions projection (channel, address, reason, source, since, last event),
  by channel and address, a page at a time (`next` is the `after` of the following page).
  `active=false` lists lifted ones, `active=any` both; `address` finds one (an email address in any
  case, with or without `channel`; other addresses as given: URL paths and tokens are case-sensitive).
- `POST /v1/recipients/{recipient}/suppressions/lift`: `{"channel", "address", "reason"}` lifts the
  suppression of an address the delivery failed on: a hard bounce, too many soft bounces, a dead push
  token, a disabled webhook endpoint. It is a ProviderFeedback `resubscribe` from provider `api` (the
  reason in its detail, so the lift is on the record), which the router applies to the recipient's
  state and the projection to the address's row; 202. The router keeps suppressions per recipient,
  so the lift names the recipient: an address held for other recipients only is 409, naming them
  (an address two recipients share stays suppressed until both are lifted). An address suppressed
  because its owner said so (unsubscribe, spam complaint, SMS STOP) is 409: only the recipient lifts
  that (a resubscribe link, START, their preferences), and an operator sending to them again would be
  mail they refused. A failure lifted
  over an earlier refusal uncovers it (`processors.suppression`): the address stays suppressed for it.

Both read the projection, so a suppression appears, and a lift shows, after the projection's delay.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from gateways.api_schema import LiftBody, Problem, body, problem
from gateways.ops import Operation
from processors.suppression import REFUSALS, AddressSuppression, Register
from projections.suppressions import EARLIER, UNNAMED, normalized
from tidings.events import ProviderFeedback, validated
from tidings.vocabulary import email_key

Produce = Callable[..., Awaitable[None]]
Accept = Callable[..., web.Response]
Rows = Callable[..., Awaitable[list[dict[str, Any]]]]
CONSENT = REFUSALS
"""Reasons the address's owner gave: not the operator's to lift."""
LIST = """
SELECT channel, address, active, reason, source, since, last_event_at FROM suppressions
WHERE tenant_id = %s AND (channel, address) > (%s, %s)
  AND (%s::text IS NULL OR channel = %s::text)
  AND (%s::text IS NULL OR address = %s::text OR (channel = 'email' AND address = %s::text))
  AND (%s::boolean IS NULL OR active = %s::boolean)
ORDER BY channel, address LIMIT %s
"""
ONE = "SELECT reason, active FROM suppressions WHERE tenant_id = %s AND channel = %s AND address = %s"
HELD = """
SELECT recipient_id, registers FROM suppression_holders
WHERE tenant_id = %s AND channel = %s AND address = %s AND active AND recipient_id = ANY(%s)
"""
"""The suppressions in force a lift naming a recipient reaches: its own, and those of holders whose owner
is not known (`UNNAMED`, `EARLIER`)."""
HOLDING = """
SELECT recipient_id FROM suppression_holders
WHERE tenant_id = %s AND channel = %s AND address = %s AND active ORDER BY since, recipient_id LIMIT 20
"""
ANY_HELD = "SELECT 1 FROM suppression_holders WHERE tenant_id = %s AND channel = %s AND address = %s LIMIT 1"
ACTIVE = {"true": True, "false": False, "any": None}
UNKNOWN = (UNNAMED, EARLIER)


def cursor(row: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps([row["channel"], row["address"]]).encode()).decode()


def parse_cursor(text: str) -> tuple[str, str]:
    """ValueError unless `text` is a cursor a page gave out."""
    try:
        channel, address = json.loads(base64.urlsafe_b64decode(text.encode()))
        channel, address = str(channel), str(address)
        f"{channel}{address}".encode()
    except (binascii.Error, ValueError, TypeError, RecursionError) as exc:
        raise ValueError(str(exc) or type(exc).__name__) from None
    return channel, address


def lifted_by(held: list[dict[str, Any]]) -> list[Register]:
    """The suppressions in force among the holders a lift reaches (`HELD`)."""
    return [
        r for h in held if (r := AddressSuppression.model_validate(h["registers"]).effective()) is not None
    ]


def operations(
    produce: Produce, accepted: Accept, rows: Rows, recipient_id: Callable[..., str]
) -> list[Operation]:
    async def list_suppressions(request: web.Request, tenant: str) -> web.Response:
        q = request.query
        try:
            limit = min(max(int(q.get("limit", 100)), 1), 1000)
            after = parse_cursor(q["after"]) if q.get("after") else ("", "")
            active = ACTIVE[q.get("active", "true")]
        except (ValueError, KeyError):
            return problem(400, "Bad query", "limit is 1..1000, active true|false|any, after a page's next")
        channel, address = q.get("channel") or None, q.get("address") or None
        forms: tuple[str | None, str | None] = (None, None)
        if address:
            forms = (normalized(channel, address),) * 2 if channel else (address, email_key(address))
        found = await rows(LIST, tenant, *after, channel, channel, address, *forms, active, active, limit)
        more = len(found) == limit
        return web.json_response({"items": found, "next": cursor(found[-1]) if more else None})

    async def lift(request: web.Request, tenant: str) -> web.Response:
        recipient = recipient_id(request)
        b = await body(request, LiftBody)
        address = normalized(b.channel, b.address)
        found = await rows(ONE, tenant, b.channel, address)
        if not found or not found[0]["active"]:
            raise Problem(problem(404, "Not suppressed", "the suppressions projection has no active row"))
        held = await rows(HELD, tenant, b.channel, address, [recipient, UNNAMED, EARLIER])
        known = held or await rows(ANY_HELD, tenant, b.channel, address)
        reasons = [r.reason for r in lifted_by(held)] if known else [found[0]["reason"]]
        if not reasons:
            holding = await rows(HOLDING, tenant, b.channel, address)
            names = ", ".join(
                json.dumps(h["recipient_id"]) for h in holding if h["recipient_id"] not in UNKNOWN
            )
            why = f"the address is suppressed for recipient {names}, not this one: a lift names its holder"
            raise Problem(problem(409, "Held for another recipient", why))
        if all(reason in CONSENT for reason in reasons):
            why = f"suppressed by its owner ({reasons[0]}): only the recipient can lift it"
            raise Problem(problem(409, "Not the operator's to lift", why))
        event = validated(
            ProviderFeedback,
            tenant_id=tenant,
            kind="resubscribe",
            channel=b.channel,
            address=b.address,
            recipient_id=recipient,
            provider="api",
            detail=f"lifted by the API: {b.reason}" if b.reason else "lifted by the API",
        )
        await produce(request, event)
        return accepted(event_id=event.event_id)

    return [
        Operation(
            "GET",
            "/v1/suppressions",
            list_suppressions,
            "The tenant's suppressed addresses",
            query=("channel", "active", "address", "limit", "after"),
        ),
        Operation(
            "POST",
            "/v1/recipients/{recipient}/suppressions/lift",
            lift,
            "Lift a delivery-failure suppression",
            LiftBody,
            202,
        ),
    ]
