"""The HTTP call every HTTP provider makes: POST, read a capped answer, map transport failures.

Timeouts and connection failures (refused, reset, TLS) are `ProviderUnavailable`, the same for every
vendor; what a status code means is each provider's own business.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp
from multidict import CIMultiDictProxy

from gateways.base import ProviderUnavailable


@dataclass(frozen=True)
class Answer:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes
    cut: bool = False
    """The body broke off or stalled (a 2xx only: any other status raises): `body` is what came."""


async def post(
    session: aiohttp.ClientSession, what: str, url: str, *, body: bytes, limit: int, **options: Any
) -> Answer:
    """POST `body` without following redirects; at most `limit` bytes of the answer are read. A 2xx whose
    body then stalls or breaks is the 2xx, with what was read: the receiver had accepted it, and taken
    for a failure it was sent again (a duplicate), counted against the circuit and, for a webhook,
    towards disabling the endpoint."""
    try:
        async with session.post(url, data=body, allow_redirects=False, **options) as response:
            data, cut = b"", False
            try:
                while len(data) < limit and (chunk := await response.content.read(limit - len(data))):
                    data += chunk
            except (TimeoutError, aiohttp.ClientError):
                if not 200 <= response.status < 300:
                    raise
                cut = True
            return Answer(response.status, response.headers, data, cut)
    except TimeoutError as exc:
        raise ProviderUnavailable(f"{what} timed out: {type(exc).__name__}") from None
    except aiohttp.ClientError as exc:
        raise ProviderUnavailable(f"{what} connection failed: {type(exc).__name__}") from None


MAX_RETRY_AFTER_S = 24 * 3600.0


def json_object(body: bytes) -> dict[str, Any]:
    """A vendor's JSON answer as a dict; anything else (HTML error pages, garbage) as {}."""
    try:
        data = json.loads(body)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def retry_after(value: str | None) -> float | None:
    """Seconds from a `Retry-After` value: delta-seconds or an HTTP date (RFC 9110 §10.2.3), at most
    `MAX_RETRY_AFTER_S`. The value comes from whoever answers (a tenant's webhook endpoint): `inf`
    or a year would otherwise hold a circuit, or a retry, for as long. A date without a zone (the
    asctime form, `-0000`) is GMT, as every HTTP date is, not the host's local time."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            at = parsedate_to_datetime(value)
            if at.tzinfo is None:
                at = at.replace(tzinfo=UTC)
            seconds = at.timestamp() - time.time()
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
    return min(max(0.0, seconds), MAX_RETRY_AFTER_S) if math.isfinite(seconds) else None
