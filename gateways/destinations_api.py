"""Consumes HTTP requests about a tenant's outcome destinations; produces DestinationUpdated and
DestinationRemoved on notifications.destinations (read by `processors/relay.py`).

- `PUT /v1/destinations/{destination_id}`: `{"url", "secret", "statuses": [], "engagements": [],
  "enabled": true}` creates or replaces the destination; the tenant's outcomes of those statuses (all
  when empty) and its recipients' engagement of those kinds (none when empty) are then POSTed to `url`
  as Standard Webhooks signed with `secret`, by the webhook gateway.
- `DELETE /v1/destinations/{destination_id}`: stops them.

Both answer 202 once Kafka has the event. There is no read: the events hold the signing secret, and the
only copy of it the API would show is the one the caller just sent.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from gateways.api_schema import DestinationBody, body
from gateways.ops import Operation
from tidings.events import DestinationRemoved, DestinationUpdated, validated

Produce = Callable[..., Awaitable[None]]
Accept = Callable[..., web.Response]
PATH = "/v1/destinations/{destination_id}"


def operations(produce: Produce, accepted: Accept) -> list[Operation]:
    async def put_destination(request: web.Request, tenant: str) -> web.Response:
        fields = (await body(request, DestinationBody)).model_dump()
        destination = request.match_info["destination_id"]
        event = validated(DestinationUpdated, tenant_id=tenant, destination_id=destination, **fields)
        await produce(request, event)
        return accepted(event_id=event.event_id)

    async def delete_destination(request: web.Request, tenant: str) -> web.Response:
        destination = request.match_info["destination_id"]
        event = validated(DestinationRemoved, tenant_id=tenant, destination_id=destination)
        await produce(request, event)
        return accepted(event_id=event.event_id)

    return [
        Operation(
            "PUT", PATH, put_destination, "Create or change an outcome destination", DestinationBody, 202
        ),
        Operation("DELETE", PATH, delete_destination, "Remove an outcome destination", None, 202),
    ]
