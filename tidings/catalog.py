"""Reads notification types from TOML files and validates them; produces NotificationTypePublished.

A catalog file holds `[[type]]` tables: key, category, priority, critical, channels, expires_after,
optional digest and escalation rules, and `[type.templates.<channel>.<locale>]` tables with the fields
subject/title/body/html/data_json. Every template must compile and every channel must have a `default`
locale, so rendering can always fall back. Tenant `*` holds the types shared by every tenant.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from tidings.errors import InvalidEvent
from tidings.events import CHANNELS, ChannelTemplate, NotificationTypePublished
from tidings.render import FIELDS, RenderError, check_template
from tidings.topics import tier_seconds

GLOBAL_TENANT = "*"
_KNOWN = {
    "key",
    "category",
    "priority",
    "critical",
    "channels",
    "expires_after",
    "templates",
    "digest",
    "escalation",
}


def _templates(key: str, raw: dict[str, Any]) -> list[ChannelTemplate]:
    out = []
    for channel, locales in sorted(raw.items()):
        if channel not in CHANNELS:
            raise InvalidEvent(f"{key}: unknown channel {channel!r} in templates")
        if "default" not in locales:
            raise InvalidEvent(f"{key}: channel {channel} has no 'default' locale template")
        for locale, fields in sorted(locales.items()):
            unknown = set(fields) - set(FIELDS)
            if unknown:
                raise InvalidEvent(f"{key}: {channel}/{locale}: unknown template fields {sorted(unknown)}")
            for field, source in fields.items():
                try:
                    check_template(field, source)
                except RenderError as exc:
                    raise InvalidEvent(f"{key}: {channel}/{locale}: {exc}") from None
            try:
                out.append(ChannelTemplate(channel=channel, locale=locale, **fields))
            except ValidationError as exc:
                raise InvalidEvent(f"{key}: {channel}/{locale}: {exc}") from None
    return out


def parse_type(tenant: str, raw: dict[str, Any], version: int = 1) -> NotificationTypePublished:
    key = raw.get("key", "?")
    if unknown := set(raw) - _KNOWN:
        raise InvalidEvent(f"{key}: unknown fields {sorted(unknown)}")
    channels = raw.get("channels", [])
    templates = _templates(key, raw.get("templates", {}))
    missing = set(channels) - {t.channel for t in templates}
    if missing:
        raise InvalidEvent(f"{key}: channels without templates: {sorted(missing)}")
    try:
        expires = tier_seconds(raw["expires_after"]) if "expires_after" in raw else None
        return NotificationTypePublished(
            tenant_id=tenant,
            notification_type=key,
            version=version,
            category=raw.get("category", ""),
            priority=raw.get("priority", "normal"),
            critical=raw.get("critical", False),
            default_channels=channels,
            templates=templates,
            expires_after_seconds=expires,
            digest_json=json.dumps(raw["digest"]) if "digest" in raw else None,
            escalation_json=json.dumps({"steps": raw["escalation"]}) if "escalation" in raw else None,
        )
    except (ValidationError, ValueError) as exc:
        raise InvalidEvent(f"{key}: {exc}") from None


def load(directory: Path, tenant: str = GLOBAL_TENANT) -> list[NotificationTypePublished]:
    """Every type in `directory/*.toml`, validated; version 1 until `next_versions` numbers them."""
    types: dict[str, NotificationTypePublished] = {}
    files = sorted(directory.glob("*.toml")) if directory.is_dir() else [directory]
    for path in files:
        try:
            document = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise InvalidEvent(f"{path}: {exc}") from None
        for raw in document.get("type", []):
            parsed = parse_type(tenant, raw)
            if parsed.notification_type in types:
                raise InvalidEvent(f"{path}: type {parsed.notification_type} is defined twice")
            types[parsed.notification_type] = parsed
    if not types:
        raise InvalidEvent(f"no [[type]] tables in {directory}")
    return list(types.values())


def _content(t: NotificationTypePublished) -> dict[str, Any]:
    return t.model_dump(exclude={"event_id", "occurred_at", "correlation_id", "version"})


def next_versions(
    new: Iterable[NotificationTypePublished], current: dict[str, NotificationTypePublished]
) -> list[NotificationTypePublished]:
    """Number changed types after their latest published version; unchanged types are left out."""
    out = []
    for t in new:
        latest = current.get(t.key)
        if latest is not None and _content(latest) == _content(t):
            continue
        out.append(t.model_copy(update={"version": (latest.version + 1) if latest else 1}))
    return out
