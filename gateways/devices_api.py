"""Consumes `PUT /v1/recipients/{recipient}/devices/{device}`; produces DeviceRegistered on
notifications.recipients, with a DeviceRemoved for every other recipient of the tenant whose device holds
the same token.

A push token (an FCM registration token, an APNs device token, a Web Push subscription) names an app
install, not a person: when another user signs in on the same phone, the app registers the same token
for them. The router keeps devices per recipient, and nothing took the token from the first one, so the
first user's notifications, password resets included, went on to the phone the second user now holds.
The devices projection knows each token's holders; the registration hands the token over by removing it
from the others (`reason` "token registered to another recipient") in the same acknowledged write.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from gateways.api_schema import DeviceBody, body
from tidings.events import DeviceRegistered, DeviceRemoved, validated

HOLDERS = """
SELECT recipient_id, device_id FROM devices
WHERE tenant_id = %s AND token = %s AND active AND recipient_id <> %s
ORDER BY recipient_id, device_id LIMIT 100
"""
HANDED_OVER = "token registered to another recipient"

Produce = Callable[..., Awaitable[None]]
Accept = Callable[..., web.Response]
Rows = Callable[..., Awaitable[list[dict[str, Any]]]]


def put_device(
    produce: Produce, accepted: Accept, rows: Rows
) -> Callable[[web.Request, str], Awaitable[web.Response]]:
    async def handle(request: web.Request, tenant: str) -> web.Response:
        b = await body(request, DeviceBody)
        recipient = request.match_info["recipient"]
        event = validated(
            DeviceRegistered,
            tenant_id=tenant,
            recipient_id=recipient,
            device_id=request.match_info["device"],
            **b.model_dump(),
        )
        removals = [
            validated(
                DeviceRemoved,
                tenant_id=tenant,
                recipient_id=held["recipient_id"],
                device_id=held["device_id"],
                reason=HANDED_OVER,
            )
            for held in await rows(HOLDERS, tenant, event.token, recipient)
        ]
        await produce(request, *removals, event)
        return accepted(event_id=event.event_id)

    handle.__name__ = "put_device"
    return handle
