"""Consumes an API request's idempotency key and body; produces whether the key was first used for that
same request (Stripe's rule, and the IETF Idempotency-Key draft's 422).

A key derives the notification id, and the router drops a second request under an id it has seen: a
key reused for another request (another recipient, type or data) was answered 202 and then dropped as a
duplicate, or, landing on another recipient's partition, sent under the first one's id, where the
cancel of either one was refused as naming the wrong recipient. The edge keeps a digest of the first
request under each key in Redis for the router's dedupe window and refuses a different one. Redis not
answering lets the request pass, as the rate limit does: the router still drops a plain retry.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateways.api_schema import Problem, problem

log = logging.getLogger(__name__)

KEPT_S = 7 * 24 * 3600
"""As long as the router's dedupe remembers an id: past it, the key names a new request anyway."""


def digest(request: Any) -> str:
    return hashlib.sha256(json.dumps(request, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


async def first_used_for(client: aioredis.Redis, name: str, request: Any) -> bool:
    """Whether the key `name` was first used for `request` (JSON-able), remembering it if this is its
    first use. One round trip: `SET NX GET` (Redis 7) answers the first request's digest, or sets it."""
    mine = digest(request)
    try:
        first = await client.set(name, mine, nx=True, get=True, ex=KEPT_S)
    except (RedisError, OSError) as exc:
        log.warning("idempotency key unchecked, Redis did not answer: %s", exc)
        return True
    return first is None or (first.decode() if isinstance(first, bytes) else first) == mine


async def same_request(
    client: aioredis.Redis, prefix: str, tenant: str, kind: str, key: str | None, request: Any
) -> None:
    """Problem 422 when `key` (of `kind`: a request's, a batch's) was first used for another request."""
    if key is None:
        return
    name = f"{prefix}tidings:idem:{kind}:{tenant}:{digest(key)}"
    if not await first_used_for(client, name, request):
        why = "this key was first used for a different request; use a new key for a new request"
        raise Problem(problem(422, "Idempotency-Key reused", why))
