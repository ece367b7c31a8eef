"""Consumes notifications.recipients; produces the recipients table (contacts and preferences, for reads).

The state column is the same fold the router keeps (`processors.recipients.fold`), so API reads and
routing decisions agree. One topic, keyed by recipient, so each row sees its events in order.
"""

from __future__ import annotations

from typing import Any

from psycopg.types.json import Jsonb

from processors.recipients import RecipientState, fold
from projections.base import Cursor, Projection
from tidings.events import Event

UPSERT = """
INSERT INTO recipients (tenant_id, recipient_id, email, phone, locale, timezone, name, state, updated_at)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (tenant_id, recipient_id) DO UPDATE SET
    email = EXCLUDED.email, phone = EXCLUDED.phone, locale = EXCLUDED.locale, timezone = EXCLUDED.timezone,
    name = EXCLUDED.name, state = EXCLUDED.state, updated_at = EXCLUDED.updated_at
"""


class Recipients(Projection):
    name = "recipients"
    tables = ("recipients",)
    sources = ("recipients",)

    def apply(self, cur: Cursor, events: list[Event]) -> None:
        relevant = [e for e in events if getattr(e, "recipient_id", None)]
        keys = sorted({(e.tenant_id, e.recipient_id) for e in relevant})  # type: ignore[attr-defined]
        if not keys:
            return
        states: dict[tuple[str, str], RecipientState] = {}
        for tenant, recipient, state in cur.execute(
            "SELECT tenant_id, recipient_id, state FROM recipients WHERE (tenant_id, recipient_id) IN "
            "(SELECT * FROM unnest(%s::text[], %s::text[]))",
            ([k[0] for k in keys], [k[1] for k in keys]),
        ).fetchall():
            states[(tenant, recipient)] = RecipientState.model_validate(state)
        updated: dict[tuple[str, str], tuple[RecipientState, Any]] = {}
        for e in relevant:
            k = (e.tenant_id, e.recipient_id)  # type: ignore[attr-defined]
            states[k] = fold(states.get(k), e)
            updated[k] = (states[k], e.occurred_at)
        cur.executemany(
            UPSERT,
            [
                (t, r, s.email, s.phone, s.locale, s.timezone, s.name, Jsonb(s.model_dump(mode="json")), at)
                for (t, r), (s, at) in updated.items()
            ],
        )
