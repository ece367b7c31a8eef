"""W3C trace context: every produced event carries a `traceparent` Kafka header."""

from __future__ import annotations

import secrets

TRACEPARENT = "traceparent"


def new_traceparent() -> str:
    return f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"


def child_traceparent(parent: bytes | str | None) -> str:
    """Same trace as the parent, new span id; a fresh trace when the parent is missing or malformed."""
    text = parent.decode(errors="replace") if isinstance(parent, bytes) else parent
    parts = (text or "").split("-")
    if len(parts) == 4 and len(parts[1]) == 32 and len(parts[2]) == 16:
        return f"{parts[0]}-{parts[1]}-{secrets.token_hex(8)}-{parts[3]}"
    return new_traceparent()
