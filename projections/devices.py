"""Consumes notifications.recipients and notifications.feedback; produces the devices table.

A device is active from its registration until it is removed or its token is reported dead by the
provider at a time after that registration. Invalidations are kept, so a registration that arrives after
a newer invalidation (the topics are read independently) still comes out inactive.

An erasure deletes the recipient's devices: all of them, since registrations on the same topic before
it are already applied and those after it come later. The
invalidations stay: a dead token, without the recipient it belonged to, identifies no one.
"""

from __future__ import annotations

from projections.base import Cursor, Projection
from tidings.events import DeviceRegistered, DeviceRemoved, Event, ProviderFeedback, RecipientErased

REGISTER = """
INSERT INTO devices AS d (tenant_id, recipient_id, device_id, platform, token, app_id, active, registered_at,
                          invalidated_at)
SELECT %(tenant)s, %(recipient)s, %(device)s, %(platform)s, %(token)s, %(app_id)s, inv.at IS NULL, %(at)s, inv.at
FROM (SELECT min(at) AS at FROM token_invalidations
      WHERE tenant_id = %(tenant)s AND token = %(token)s AND at > %(at)s) inv
ON CONFLICT (tenant_id, recipient_id, device_id) DO UPDATE SET
    platform = EXCLUDED.platform, token = EXCLUDED.token, app_id = EXCLUDED.app_id, active = EXCLUDED.active,
    registered_at = EXCLUDED.registered_at, invalidated_at = EXCLUDED.invalidated_at
WHERE EXCLUDED.registered_at >= d.registered_at
"""
REMOVE = """
UPDATE devices SET active = false, invalidated_at = %(at)s
WHERE tenant_id = %(tenant)s AND recipient_id = %(recipient)s AND device_id = %(device)s
  AND registered_at <= %(at)s AND (invalidated_at IS NULL OR invalidated_at > %(at)s OR active)
"""
INVALIDATE = """
WITH noted AS (
    INSERT INTO token_invalidations (tenant_id, token, at) VALUES (%(tenant)s, %(token)s, %(at)s)
    ON CONFLICT DO NOTHING
)
UPDATE devices SET active = false,
    invalidated_at = CASE WHEN invalidated_at IS NULL OR invalidated_at > %(at)s THEN %(at)s ELSE invalidated_at END
WHERE tenant_id = %(tenant)s AND token = %(token)s AND registered_at < %(at)s
"""


class Devices(Projection):
    name = "devices"
    tables = ("devices", "token_invalidations")
    sources = ("recipients", "feedback")

    def apply(self, cur: Cursor, events: list[Event]) -> None:
        for e in events:
            if isinstance(e, DeviceRegistered):
                cur.execute(
                    REGISTER,
                    {
                        "tenant": e.tenant_id,
                        "recipient": e.recipient_id,
                        "device": e.device_id,
                        "platform": e.platform,
                        "token": e.token,
                        "app_id": e.app_id,
                        "at": e.occurred_at,
                    },
                )
            elif isinstance(e, DeviceRemoved):
                cur.execute(
                    REMOVE,
                    {
                        "tenant": e.tenant_id,
                        "recipient": e.recipient_id,
                        "device": e.device_id,
                        "at": e.occurred_at,
                    },
                )
            elif isinstance(e, RecipientErased):
                cur.execute(
                    "DELETE FROM devices WHERE tenant_id = %s AND recipient_id = %s",
                    (e.tenant_id, e.recipient_id),
                )
            elif isinstance(e, ProviderFeedback) and e.kind == "token_invalid":
                cur.execute(
                    INVALIDATE,
                    {"tenant": e.tenant_id, "token": e.address, "at": e.at},
                )
