"""Consumed records as plain JSON-ready dicts, for `tidings tail` and the audit tools.

Signing secrets (a webhook endpoint's or destination's `secret`, in its events and in the delivery
commands that carry it) and a Web Push subscription's `key_auth` are shown as `[redacted]`: the
DLQ and the topics keep them for their retention, and what an operator prints ends up in terminals,
tickets and logs. Their bytes stay in the record for `tidings dlq replay`.
"""

from __future__ import annotations

import base64
from typing import Any

from tidings.codec import Codec, default_codec
from tidings.errors import CodecError, InvalidEvent
from tidings.events import Event
from tidings.kafka import Incoming
from tidings.kafka.records import header_map

SECRETS = frozenset({"secret", "key_auth"})


def record_view(record: Incoming, codec: Codec | None = None) -> dict[str, Any]:
    view: dict[str, Any] = {
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "timestamp_ms": record.timestamp_ms,
        "key": record.key.decode(errors="replace") if record.key is not None else None,
        "headers": header_map(record.headers),
    }
    try:
        event = record.decode(codec or default_codec())
        view["record"] = type(event).__name__
        view["value"] = redacted(event.model_dump(mode="json"))
    except (CodecError, InvalidEvent) as exc:
        view["record"] = None
        view["error"] = f"{type(exc).__name__}: {exc}"
        view["value_base64"] = base64.b64encode(record.value or b"").decode()
    return view


def event_view(record: Incoming, event: Event) -> dict[str, Any]:
    """A decoded record, where it sits and what it holds (secrets redacted), for `tidings audit --json`."""
    return {
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "record": type(event).__name__,
        "value": redacted(event.model_dump(mode="json")),
    }


def redacted(value: Any) -> Any:
    """`value` with every entry named in SECRETS replaced, at any depth."""
    if isinstance(value, dict):
        return {k: "[redacted]" if k in SECRETS and v else redacted(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redacted(v) for v in value]
    return value
