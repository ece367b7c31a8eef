"""Consumes notifications.feedback; produces the suppressions table (per tenant, channel and address).

Hard bounce, complaint, SMS STOP, dead token, disabled endpoint and an address-wide unsubscribe suppress;
`SOFT_BOUNCE_LIMIT` soft bounces within `SOFT_BOUNCE_WINDOW` suppress; START and resubscribe lift, and an
operator's resubscribe (provider `api`) lifts delivery failures only. Each row folds its feedback with the
router's rules (`processors.suppression`: the owner's refusal and the delivery failure, each by provider
time), kept in `registers`; `active`, `reason` and `since` are the suppression in force. So duplicated and
reordered feedback converge to the same row, and a soft bounce counts once per address and provider time,
however often the provider delivered it.

A row is written under a transaction-scoped advisory lock on its address, taken in key order: feedback
for one address can come from several partitions (one per recipient holding it), and two projection
processes each counting the other's third soft bounce as not yet there missed the limit.

The router keeps suppressions per recipient, so the registers are folded per recipient too, in
`suppression_holders`: a lift lifts the holder it names (and `UNNAMED` and `EARLIER`, whose owners are
not known), and the address is suppressed while any holder is, shown with the suppression in force
longest; lifted, with the latest lift of any holder. One row per address lifted by a lift naming
another recipient, or by one of two recipients' lifts, listed the address open while the router kept
holding it back.

An erasure (`forget`, run by the recipients projection) deletes the recipient's holders and the rows of
the addresses nobody else holds; feedback naming a recipient erased after it is skipped here (a lift
still lifts `UNNAMED` and `EARLIER`), so the order the two projections read in, and a rebuild, leave
the same holders.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from psycopg.types.json import Jsonb

from processors.recipients import SOFT_BOUNCE_LIMIT, SOFT_BOUNCE_WINDOW
from processors.suppression import FAILURES, LIFTS, REFUSALS, AddressSuppression, folded, restored
from projections.base import Cursor, Projection, grouped
from tidings.events import Event, ProviderFeedback
from tidings.vocabulary import email_key

LOCK = "SELECT pg_advisory_xact_lock(hashtextextended(%s || chr(31) || %s || chr(31) || %s, 0))"
ROW = """
SELECT active, reason, source, since, last_event_at, registers FROM suppressions
WHERE tenant_id = %s AND channel = %s AND address = %s
"""
UPSERT = """
INSERT INTO suppressions AS s
    (tenant_id, channel, address, active, reason, source, since, last_event_at, registers)
VALUES (%(tenant)s, %(channel)s, %(address)s, %(active)s, %(reason)s, %(source)s, %(since)s, %(last)s,
        %(registers)s)
ON CONFLICT (tenant_id, channel, address) DO UPDATE SET
    active = EXCLUDED.active, reason = EXCLUDED.reason, source = EXCLUDED.source, since = EXCLUDED.since,
    last_event_at = EXCLUDED.last_event_at, registers = EXCLUDED.registers
"""
HOLDERS = """
SELECT recipient_id, registers FROM suppression_holders
WHERE tenant_id = %s AND channel = %s AND address = %s AND recipient_id = ANY(%s)
"""
"""The holders a batch names, and the holder `''`: an address can be held by many recipients (one
webhook endpoint for all of a tenant's), and reading them all made each feedback cost their number."""
ANY_HOLDER = (
    "SELECT 1 FROM suppression_holders WHERE tenant_id = %s AND channel = %s AND address = %s LIMIT 1"
)
HOLDER = """
INSERT INTO suppression_holders AS h
    (tenant_id, channel, address, recipient_id, registers, active, reason, since, source)
VALUES (%(tenant)s, %(channel)s, %(address)s, %(recipient)s, %(registers)s, %(active)s, %(reason)s, %(since)s,
        %(source)s)
ON CONFLICT (tenant_id, channel, address, recipient_id) DO UPDATE SET
    registers = EXCLUDED.registers, active = EXCLUDED.active, reason = EXCLUDED.reason,
    since = EXCLUDED.since, source = EXCLUDED.source
"""
LATEST = "SELECT max(since) FROM suppression_holders WHERE tenant_id = %s AND channel = %s AND address = %s"
UNNAMED = ""
"""The holder of feedback that named no recipient (a provider callback without our ids), which the
router cannot apply: listed, and lifted by any recipient's lift, which it also keeps when it does not
exist yet, so an older suppression arriving later loses to it, whatever the order."""
EARLIER = "\x1fearlier"
"""The holder of a row kept before holders, whose recipients are not known (no recipient id holds a
control character): a recipient's first
feedback starts from its registers (a lift kept there still beats an older suppression redelivered
after the upgrade), and any recipient's lift lifts it."""
IN_FORCE = """
SELECT reason, since, source FROM suppression_holders
WHERE tenant_id = %s AND channel = %s AND address = %s AND active ORDER BY since, recipient_id LIMIT 1
"""
BOUNCE = """
INSERT INTO soft_bounces (tenant_id, channel, address, event_id, at)
SELECT %(tenant)s, %(channel)s, %(address)s, %(event_id)s, %(at)s
WHERE NOT EXISTS (SELECT 1 FROM soft_bounces WHERE tenant_id = %(tenant)s AND channel = %(channel)s
                  AND address = %(address)s AND at = %(at)s)
ON CONFLICT DO NOTHING
"""
"""One soft bounce per address and instant: a provider retrying its webhook (SendGrid for a day, SNS
by its delivery policy) sends the same bounce again, parsed into a new event id, and it counted
towards the limit once more."""
WINDOW_FULL = """
SELECT max(w.last) FROM (
    SELECT b.at, (SELECT count(*) FROM soft_bounces c WHERE c.tenant_id = b.tenant_id AND c.channel = b.channel
                    AND c.address = b.address AND c.at >= b.at AND c.at < b.at + %(window)s) AS n,
           (SELECT max(c.at) FROM soft_bounces c WHERE c.tenant_id = b.tenant_id AND c.channel = b.channel
                    AND c.address = b.address AND c.at >= b.at AND c.at < b.at + %(window)s) AS last
    FROM soft_bounces b WHERE b.tenant_id = %(tenant)s AND b.channel = %(channel)s AND b.address = %(address)s
                          AND b.at > %(at)s - %(window)s AND b.at <= %(at)s
) w WHERE w.n >= %(limit)s
"""
"""The full windows that hold the new bounce (at `at`): only those can have become full with it, and
looking at no others keeps a bounce's cost independent of the address's history (it grew with its
square: 1.5 s per bounce at 2,000 bounces)."""


ERASED = """
SELECT e.tenant_id, e.recipient_id, e.erased_at FROM erasures e
JOIN unnest(%s::text[], %s::text[]) AS b (tenant_id, recipient_id) USING (tenant_id, recipient_id)
"""
HELD_BY = """
SELECT channel, address, registers FROM suppression_holders WHERE tenant_id = %s AND recipient_id = %s
ORDER BY channel, address
"""


def normalized(channel: str, address: str) -> str:
    return email_key(address) if channel == "email" else address


class Suppressions(Projection):
    name = "suppressions"
    tables = ("suppressions", "suppression_holders", "soft_bounces")
    sources = ("feedback",)

    def apply(self, cur: Cursor, events: list[Event]) -> None:
        by_address: dict[tuple[str, str, str], list[ProviderFeedback]] = {}
        feedback = grouped(events, ProviderFeedback)
        named = sorted({(f.tenant_id, f.recipient_id) for f in feedback if f.recipient_id})
        erased = {
            (t, r): at
            for t, r, at in cur.execute(ERASED, ([t for t, _ in named], [r for _, r in named])).fetchall()
        }
        for f in feedback:
            if f.category and f.kind in ("unsubscribe", "resubscribe"):
                continue
            if (at := erased.get((f.tenant_id, f.recipient_id or ""))) and f.at <= at:
                if f.kind not in LIFTS:
                    continue
                f = f.model_copy(update={"recipient_id": None})
            if f.kind in REFUSALS | FAILURES | LIFTS or f.kind == "soft_bounce":
                by_address.setdefault((f.tenant_id, f.channel, normalized(f.channel, f.address)), []).append(
                    f
                )
        for key in sorted(by_address):
            cur.execute(LOCK, key)
            _address(cur, key, by_address[key])


def _address(cur: Cursor, key: tuple[str, str, str], feedback: list[ProviderFeedback]) -> None:
    tenant, channel, address = key
    row = cur.execute(ROW, key).fetchone()
    shown, restoring = None, False
    holders: dict[str, AddressSuppression] = {}
    named = sorted({f.recipient_id or "" for f in feedback} | {UNNAMED, EARLIER})
    for recipient, kept in cur.execute(HOLDERS, (*key, named)).fetchall():
        holders[recipient] = AddressSuppression.model_validate(kept)
    if row is not None:
        active, reason, source, since, last, kept = row
        shown = {"active": active, "reason": reason, "source": source, "since": since, "last": last}
        if not holders and cur.execute(ANY_HOLDER, key).fetchone() is None:
            restoring = True
            holders[EARLIER] = (
                AddressSuppression.model_validate(kept)
                if kept is not None
                else restored(reason if active else None, since if active else None, last, source)
            )
    changed: set[str] = {EARLIER} if restoring else set()
    lift: tuple[str, str | None] | None = None
    for f in feedback:
        at = f.at
        kind: str = f.kind
        if kind == "soft_bounce":
            params = {"tenant": tenant, "channel": channel, "address": address, "at": at}
            cur.execute(BOUNCE, params | {"event_id": f.event_id})
            full = cur.execute(
                WINDOW_FULL, params | {"window": SOFT_BOUNCE_WINDOW, "limit": SOFT_BOUNCE_LIMIT}
            ).fetchone()
            if not full or full[0] is None:
                continue
            kind, at = "soft_bounce_limit", full[0]
        mine = f.recipient_id or UNNAMED
        for holder in ({mine, UNNAMED} | ({EARLIER} & holders.keys())) if kind in LIFTS else {mine}:
            start = holders.get(EARLIER, AddressSuppression()) if holder not in (UNNAMED, EARLIER) else None
            holders[holder] = folded(holders.get(holder, start or AddressSuppression()), kind, at, f.provider)
            changed.add(holder)
        if kind in LIFTS:
            lift = (kind, f.provider)
    for holder in sorted(changed):
        h = holders[holder]
        if h.refusal is None and h.failure is None:
            continue
        current = h.effective()
        state = current or max((r for r in (h.refusal, h.failure) if r is not None), key=lambda r: r.since)
        cur.execute(
            HOLDER,
            {"tenant": tenant, "channel": channel, "address": address, "recipient": holder}
            | {"registers": Jsonb(h.model_dump(mode="json")), "active": current is not None}
            | {"reason": state.reason, "since": state.since, "source": state.source},
        )
    if changed:
        _write(cur, key, holders, shown, lift)


def _write(
    cur: Cursor,
    key: tuple[str, str, str],
    holders: dict[str, AddressSuppression],
    before: dict[str, Any] | None,
    lift: tuple[str, str | None] | None,
) -> None:
    """The address's row: the suppression in force longest among its holders, with the provider that
    set it, or, none in force, the lift that ended the last (a row lifted before keeps what it showed)."""
    tenant, channel, address = key
    times = [t for h in holders.values() if (t := h.last_event_at) is not None]
    last = max([*times, *([before["last"]] if before else [])])
    held = cur.execute(IN_FORCE, key).fetchone()
    if held is not None:
        reason, since, source = held
        kept = before is not None and before["active"] and before["reason"] == reason
        shown = {"active": True, "reason": reason, "since": since}
        shown["source"] = source or (before["source"] if kept and before else None)
    else:
        [(since,)] = cur.execute(LATEST, key).fetchall()
        if before is not None and not before["active"]:
            shown = {"active": False, "reason": before["reason"], "since": since, "source": before["source"]}
        else:
            kind, provider = lift or (None, None)
            shown = {"active": False, "reason": kind or "lifted", "since": since, "source": provider}
    cur.execute(
        UPSERT,
        {"tenant": tenant, "channel": channel, "address": address, **shown, "last": last, "registers": None},
    )


def forget(cur: Cursor, tenant: str, recipient: str, erased_at: datetime) -> None:
    """An erased recipient's holders go, and with them its link to its addresses: each address's row is
    shown again from the holders left, and goes too, with its soft bounces, when none is left (the
    address is the erased recipient's contact data, not a provider report about someone else's). The
    router forgot the recipient's suppressions with its state; `Suppressions` skips feedback naming it
    from before the erasure, so a rebuild, or feedback read after this, makes the same rows. Holders
    with feedback after the erasure belong to a recipient created again under the same id, and stay
    (a replayed erasure must not take them)."""
    gone = [
        (channel, address)
        for channel, address, kept in cur.execute(HELD_BY, (tenant, recipient)).fetchall()
        if (last := AddressSuppression.model_validate(kept).last_event_at) is None or last <= erased_at
    ]
    for channel, address in gone:
        key = (tenant, channel, address)
        cur.execute(LOCK, key)
        cur.execute(
            "DELETE FROM suppression_holders WHERE tenant_id = %s AND channel = %s AND address = %s "
            "AND recipient_id = %s",
            (*key, recipient),
        )
        row = cur.execute(ROW, key).fetchone()
        if cur.execute(ANY_HOLDER, key).fetchone() is None:
            for table in ("suppressions", "soft_bounces"):
                cur.execute(
                    f"DELETE FROM {table} WHERE tenant_id = %s AND channel = %s AND address = %s".encode(),
                    key,
                )
        elif row is not None:
            active, reason, source, since, last, _ = row
            shown = {"active": active, "reason": reason, "source": source, "since": since, "last": last}
            _write(cur, key, {}, shown, None)
