"""Consumes recipients' preference-centre requests over HTTP; produces PreferencesUpdated to
notifications.recipients.

The end-user side of preferences, mounted with the inbox (same HS256 JWT: `sub` is the recipient,
`tenant` the tenant), so an app or a hosted page can let people manage what they receive:

- `GET /v1/me/preferences`: the recipient's current preferences (mute, rules, quiet hours, digest
  choices) and the categories they unsubscribed from by email link, from the recipients projection.
  A recipient the projection does not know yet gets the defaults.
- `PATCH /v1/me/preferences`: the same body as the server-side API's preferences write; produces
  PreferencesUpdated for the token's recipient only (202 once Kafka acknowledged it). The router
  honours it from the next request on; critical types still reach everyone, as the catalog says.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from psycopg import errors as pg_errors
from psycopg_pool import PoolTimeout

from gateways import _pg as pg
from gateways.api_schema import PreferencesBody, Problem, body, problem, recipient_view
from gateways.feed import POOL, recipient_of
from gateways.ops import OPERATIONS, Operation
from processors.recipients import RecipientState
from tidings.config import Settings
from tidings.errors import InvalidEvent, KafkaUnavailable
from tidings.events import PreferencesUpdated, validated
from tidings.kafka import Output
from tidings.kafka.aio import AsyncProducer
from tidings.topics import names

TOKEN = "recipientToken"
STATE = "SELECT state FROM recipients WHERE tenant_id = %s AND recipient_id = %s"


def mount(
    application: web.Application, settings: Settings, secret: str, producer: web.AppKey[AsyncProducer]
) -> None:
    """Mount after `feed.mount`, whose connection pool the reads share."""
    topic = names(settings).recipients

    def caller(request: web.Request) -> tuple[str, str]:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        found = recipient_of(token, secret) if scheme.lower() == "bearer" else None
        if found is None:
            response = problem(401, "A valid token is required")
            response.headers["WWW-Authenticate"] = "Bearer"
            raise Problem(response)
        pg.TENANT.set(found[0])
        return found

    async def read(request: web.Request) -> web.Response:
        try:
            tenant, recipient = caller(request)
            async with application[POOL].connection() as conn:
                row = await (await conn.execute(STATE, (tenant, recipient))).fetchone()
        except Problem as exc:
            return exc.response
        except (pg_errors.OperationalError, PoolTimeout):
            return problem(503, "The read store is unavailable", "try again later")
        view: dict[str, Any] = recipient_view(RecipientState.model_validate(row[0] if row else {}))
        return web.json_response({"preferences": view["preferences"], "unsubscribed": view["unsubscribed"]})

    async def write(request: web.Request) -> web.Response:
        try:
            tenant, recipient = caller(request)
            fields = (await body(request, PreferencesBody)).model_dump()
            event = validated(PreferencesUpdated, tenant_id=tenant, recipient_id=recipient, **fields)
            await request.app[producer].deliver(Output.event(topic, event))
        except Problem as exc:
            return exc.response
        except InvalidEvent as exc:
            return problem(422, "Invalid event", str(exc))
        except KafkaUnavailable:
            return problem(503, "Not accepted", "Kafka did not acknowledge; try again")
        return web.json_response({"event_id": str(event.event_id)}, status=202)

    application.router.add_get("/v1/me/preferences", read)
    application.router.add_patch("/v1/me/preferences", write)
    application.setdefault(OPERATIONS, []).extend(
        [
            Operation("GET", "/v1/me/preferences", read, "My preferences", security=TOKEN),
            Operation(
                "PATCH", "/v1/me/preferences", write, "Set my preferences", PreferencesBody, 202, TOKEN
            ),
        ]
    )
