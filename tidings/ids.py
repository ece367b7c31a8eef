"""Identifiers: time-ordered notification ids and deterministic delivery ids."""

from __future__ import annotations

from collections.abc import Callable
from uuid import NAMESPACE_URL, UUID, uuid5

from uuid6 import uuid7

from tidings.errors import InvalidEvent

IDEMPOTENCY_NAMESPACE = uuid5(NAMESPACE_URL, "https://tidings.dev/idempotency-key")
BATCH_NAMESPACE = uuid5(NAMESPACE_URL, "https://tidings.dev/batch-idempotency-key")
BROADCAST_NAMESPACE = uuid5(NAMESPACE_URL, "https://tidings.dev/broadcast-idempotency-key")


def new_notification_id() -> UUID:
    """A UUIDv7: unique, and sortable by creation time."""
    return UUID(str(uuid7()))


def chosen_id(field: str, given: UUID | str | None, key: str | None, derive: Callable[[str], UUID]) -> UUID:
    """The id a producer chose: `given`, or derived from its idempotency key, or else a new UUIDv7."""
    if given is not None and key is not None:
        raise InvalidEvent(f"give {field} or idempotency_key, not both")
    if key is not None:
        if not 1 <= len(key.strip()) <= 255:
            raise InvalidEvent("idempotency_key must have 1..255 characters besides white space")
        return derive(key)
    try:
        return UUID(str(given)) if given is not None else new_notification_id()
    except ValueError:
        raise InvalidEvent(f"{field} {given!r} is not a UUID") from None


def notification_id_for(tenant_id: str, idempotency_key: str) -> UUID:
    """Map a producer's own idempotency key (an order id, say) to a stable notification id."""
    return uuid5(IDEMPOTENCY_NAMESPACE, f"{tenant_id}/{idempotency_key}")


def broadcast_id_for(tenant_id: str, audience_id: str, idempotency_key: str) -> UUID:
    """A broadcast's stable id from the producer's own key, per audience (the same key used for two
    audiences names two broadcasts); a namespace apart from notification ids."""
    return uuid5(BROADCAST_NAMESPACE, f"{tenant_id}/{audience_id}/{idempotency_key}")


def batch_item_id(tenant_id: str, idempotency_key: str, index: int) -> UUID:
    """The id of item `index` of a batch sent with `idempotency_key`: a namespace of its own, so no
    single request's key can ever name it (a key `k#0` beside a batch keyed `k`)."""
    return uuid5(BATCH_NAMESPACE, f"{tenant_id}/{index}/{idempotency_key}")


def delivery_id(notification_id: UUID, channel: str, address: str) -> UUID:
    """Deterministic, so a re-run of the router yields the same id and every later step can dedupe on it."""
    return uuid5(notification_id, f"{channel}/{address}")


def outcome_id(
    notification_id: UUID, status: str, channel: str | None, delivery: UUID | None, reason: str | None
) -> UUID:
    """An outcome's event id derived from what it says, so a replayed decision has the same id."""
    return uuid5(notification_id, f"{status}/{channel}/{delivery}/{reason}")


def command_id(delivery: UUID) -> UUID:
    return uuid5(delivery, "command")
