"""The events that erase a recipient: out of every audience it is in, then `RecipientErased`.

Used by `DELETE /v1/recipients/{recipient}` and `tidings recipients erase`, which read the audiences from
the audiences projection. Membership lives on `notifications.audiences`, keyed by audience, so the
router cannot see it: without these removals the next broadcast to an audience would plan a request
for the erased recipient again.
"""

from __future__ import annotations

from collections.abc import Sequence

from tidings.broadcasts import membership
from tidings.events import AudienceMembersRemoved, RecipientErased, validated

MEMBERSHIPS = "SELECT audience_id FROM audience_members WHERE tenant_id = %s AND recipient_id = %s ORDER BY 1"


def erasure(
    *, tenant: str, recipient: str, audiences: Sequence[str], reason: str | None = None
) -> tuple[list[AudienceMembersRemoved], RecipientErased]:
    """The removals from `audiences` and the erasure, in the order to produce them."""
    removals = [
        e
        for audience in audiences
        for e in membership(tenant=tenant, audience=audience, recipients=[recipient], remove=True)
        if isinstance(e, AudienceMembersRemoved)
    ]
    erased = validated(RecipientErased, tenant_id=tenant, recipient_id=recipient, reason=reason)
    return removals, erased
