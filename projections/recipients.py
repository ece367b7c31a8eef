"""Consumes notifications.recipients and notifications.feedback; produces the recipients table (contacts,
preferences, suppressions and category unsubscribes, for reads).

The state column is the same fold the router keeps (`processors.recipients.fold`) of the same two
co-partitioned topics, so API reads and routing decisions agree: the suppressions and category
unsubscribes `GET /v1/recipients/{id}`, the preference centre and the export show are the ones the
router applies (read from the recipients topic alone, they were always empty). An event the router
refuses for the state's size limit (and dead-letters) is skipped here too. Both topics are keyed by
recipient, so each row sees each topic's events in order.

Feedback naming a recipient, dated at or before its erasure, is skipped, as the suppressions
projection skips it: a bounce reported after the erasure must not bring the erased address back.
Feedback that changes nothing (a delivery receipt, an open) writes nothing: one per message sent,
each rewrote the recipient's row, and made a row for a recipient only ever addressed directly.

A `RecipientErased` deletes the recipient's row and its inbox items requested before the erasure (by
log time: the record timestamps the router orders requests and erasures by), and notes the erasure in
the `erasures` ledger, which the in-app gateway checks before it writes an item.
The inbox delete first takes a lock that waits for inserts in flight (SHARE ROW EXCLUSIVE conflicts
with their ROW EXCLUSIVE): an item the gateway wrote before seeing the ledger row is committed by then
and deleted here, and an insert that waited starts its snapshot after this commit and sees the ledger.
Events after the erasure start a new row, as for a new recipient.
"""

from __future__ import annotations

from typing import Any

from psycopg.types.json import Jsonb

from processors.recipients import RecipientState, fold, oversized
from projections.base import Cursor, Projection
from projections.suppressions import forget
from tidings.events import Event, ProviderFeedback, RecipientErased
from tidings.kafka import Incoming
from tidings.kafka.records import log_time

UPSERT = """
INSERT INTO recipients (tenant_id, recipient_id, email, phone, locale, timezone, name, state, updated_at)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (tenant_id, recipient_id) DO UPDATE SET
    email = EXCLUDED.email, phone = EXCLUDED.phone, locale = EXCLUDED.locale, timezone = EXCLUDED.timezone,
    name = EXCLUDED.name, state = EXCLUDED.state, updated_at = EXCLUDED.updated_at
"""
ERASE = """
INSERT INTO erasures AS e (tenant_id, recipient_id, erased_at, reason) VALUES (%(t)s, %(r)s, %(at)s, %(why)s)
ON CONFLICT (tenant_id, recipient_id) DO UPDATE SET erased_at = GREATEST(e.erased_at, EXCLUDED.erased_at),
    reason = CASE WHEN EXCLUDED.erased_at >= e.erased_at THEN EXCLUDED.reason ELSE e.reason END
"""
ERASED = """
SELECT tenant_id, recipient_id, erased_at FROM erasures
WHERE (tenant_id, recipient_id) IN (SELECT * FROM unnest(%s::text[], %s::text[]))
"""
FORGET = [
    "DELETE FROM recipients WHERE tenant_id = %(t)s AND recipient_id = %(r)s",
    "DELETE FROM inbox_items WHERE tenant_id = %(t)s AND recipient_id = %(r)s AND requested_at < %(at)s",
]


class Recipients(Projection):
    name = "recipients"
    tables = ("recipients",)
    sources = ("recipients", "feedback")
    by_record = True

    def decode_record(self, record: Incoming) -> Any:
        """An erasure's time is its record's log time, the clock commands' `requested_at` is on."""
        event = super().decode_record(record)
        if isinstance(event, RecipientErased) and (at := log_time(record)) is not None:
            return event.model_copy(update={"occurred_at": at})
        return event

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
        named = sorted({(e.tenant_id, e.recipient_id) for e in relevant if isinstance(e, ProviderFeedback)})
        erased = {
            (t, r): at
            for t, r, at in cur.execute(ERASED, ([k[0] for k in named], [k[1] for k in named])).fetchall()
        }
        updated: dict[tuple[str, str], tuple[RecipientState, Any]] = {}
        for e in relevant:
            k = (e.tenant_id, e.recipient_id)  # type: ignore[attr-defined]
            if isinstance(e, RecipientErased):
                states.pop(k, None)
                updated.pop(k, None)
                erase(cur, e)
                erased[k] = max(e.occurred_at, erased.get(k, e.occurred_at))
                continue
            if isinstance(e, ProviderFeedback) and (at := erased.get(k)) and e.at <= at:
                continue
            before = states.get(k)
            folded = fold(before, e)
            if isinstance(e, ProviderFeedback) and folded == (before or RecipientState()):
                continue
            if oversized(before, folded, e) is not None:
                continue
            states[k] = folded
            updated[k] = (states[k], e.occurred_at)
        cur.executemany(
            UPSERT,
            [
                (t, r, s.email, s.phone, s.locale, s.timezone, s.name, Jsonb(s.model_dump(mode="json")), at)
                for (t, r), (s, at) in updated.items()
            ],
        )


def erase(cur: Cursor, event: RecipientErased) -> None:
    cur.execute("LOCK TABLE inbox_items IN SHARE ROW EXCLUSIVE MODE")
    params = {"t": event.tenant_id, "r": event.recipient_id, "at": event.occurred_at, "why": event.reason}
    cur.execute(ERASE, params)
    for sql in FORGET:
        cur.execute(sql, params)
    forget(cur, event.tenant_id, event.recipient_id, event.occurred_at)
