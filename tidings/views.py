"""Consumed records as plain JSON-ready dicts, for `tidings tail` and the audit tools."""

from __future__ import annotations

import base64
from typing import Any

from tidings.codec import Codec, default_codec
from tidings.errors import CodecError, InvalidEvent
from tidings.kafka import Incoming
from tidings.kafka.records import header_map


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
        view["value"] = event.model_dump(mode="json")
    except (CodecError, InvalidEvent) as exc:
        view["record"] = None
        view["error"] = f"{type(exc).__name__}: {exc}"
        view["value_base64"] = base64.b64encode(record.value or b"").decode()
    return view
