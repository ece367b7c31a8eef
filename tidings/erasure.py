"""The events that erase a recipient: out of every audience it is in, then `RecipientErased`.

Used by `DELETE /v1/recipients/{recipient}` and `tidings recipients erase`, which read the audiences from
the audiences projection. Membership lives on `notifications.broadcasts`, keyed by audience, so the
router cannot see it: without these removals the next broadcast to an audience would plan a request
for the erased recipient again. So both refuse to erase while the audiences projection has not read
that topic to its end (`behind`): a membership added just before, not yet in the table, was left in
the audience processor for good, and every later broadcast reached the erased recipient.
"""

from __future__ import annotations

from collections.abc import Sequence

from tidings.broadcasts import ids, membership
from tidings.events import AudienceMembersRemoved, RecipientErased, validated

MEMBERSHIPS = "SELECT audience_id FROM audience_members WHERE tenant_id = %s AND recipient_id = %s ORDER BY 1"
STORED = "SELECT partition, next_offset FROM projection_offsets WHERE projection = 'audiences' AND topic = %s"


CATCH_UP_S = 10.0
"""How long an erasure waits for the projection to apply the membership records on the topic when it
was asked: under steady broadcast traffic the projection is always a batch behind the newest, and
requiring no lag at one instant refused erasures for as long as the traffic lasted."""


def behind(ends: dict[int, int], stored: Sequence[tuple[int, int]]) -> int:
    """How many records of the broadcasts topic (its partitions' `ends`) the audiences projection has
    not applied, from its `stored` (partition, next offset) rows."""
    done = dict(stored)
    return sum(max(0, end - done.get(p, 0)) for p, end in ends.items())


def erasure(
    *, tenant: str, recipient: str, audiences: Sequence[str], reason: str | None = None
) -> tuple[list[AudienceMembersRemoved], RecipientErased]:
    """The removals from `audiences` and the erasure, in the order to produce them."""
    ids(audiences, "audiences")
    removals = [
        e
        for audience in audiences
        for e in membership(tenant=tenant, audience=audience, recipients=[recipient], remove=True)
        if isinstance(e, AudienceMembersRemoved)
    ]
    erased = validated(RecipientErased, tenant_id=tenant, recipient_id=recipient, reason=reason)
    return removals, erased
