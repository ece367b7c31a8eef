"""Reads notification types from TOML files and validates them; produces NotificationTypePublished.

A catalog file holds `[[type]]` tables: key, category, priority, critical, channels, expires_after,
optional digest and escalation rules, and `[type.templates.<channel>.<locale>]` tables with the fields
subject/title/body/html/data_json. Every template must compile and every channel must have a `default`
locale, so rendering can always fall back. Tenant `*` holds the types shared by every tenant.

`[type.digest]` has a `window` (like `1h`) and `[type.digest.templates.<channel>.<locale>]`: the
channels with a digest template collect a recipient's requests of the type and send one message per
window, rendered with `items` (each request's data) and `count`. `escalation = [{ after = "5m",
channel = "email", unless = "seen" }]` holds a channel back and sends it only if the notification was
not engaged with (`seen`, `read` or `clicked`) by then. A channel is either digested or escalated.
`throttle = { limit = 3, window = "1h", per = "type" }` caps how many notifications of the type (or,
with `per = "category"`, of its category) reach one recipient in any window (`processors/throttle.py`).
`condition = "not data.test"` must hold for a request to be sent at all, and `[type.channel_conditions]`
maps a channel to the condition its delivery needs (`sms = "amount >= 1000"`): Jinja2 expressions over
the template variables (`tidings.render.holds`). `[type.example]` and `[type.example_recipient]` are
accepted and not published: `tidings.preview` renders the templates with them before publishing.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from tidings.errors import InvalidEvent, summary
from tidings.events import CHANNELS, ChannelTemplate, Engagement, NotificationTypePublished
from tidings.render import FIELDS, RenderError, check_condition, check_template
from tidings.topics import tier_seconds

GLOBAL_TENANT = "*"
ENGAGEMENTS: tuple[Engagement, ...] = ("seen", "read", "clicked")
Templates = dict[str, dict[str, dict[str, str | None]]]
"""channel → locale → field → template source."""


@dataclass(frozen=True)
class DigestRule:
    window_seconds: int
    templates: Templates


@dataclass(frozen=True)
class EscalationStep:
    after_seconds: int
    channel: str
    unless: Engagement


MAX_LIMIT = 1000
MAX_WINDOW_SECONDS = 31 * 86_400
"""The longest throttle window, digest window and escalation delay. The `throttles` store keeps an entry
this long after its last write, so no throttle window may be longer; a digest or escalation timer far
enough out (after 2286) had a 14-digit due key that sorted before now, and fired at once."""


@dataclass(frozen=True)
class ThrottleRule:
    limit: int
    window_seconds: int
    per: str

    def key(self, tenant: str, recipient: str, t: NotificationTypePublished) -> str:
        """Per category, the rule is part of the key: types of the category with the same rule share
        one budget, and a type with a shorter window can never forget times a longer one still needs.
        NUL separates the parts, which no id may contain, so no recipient id can pose as a type."""
        if self.per == "category":
            scope = f"category\x00{t.category}\x00{self.limit}/{self.window_seconds}"
        else:
            scope = f"type\x00{t.notification_type}"
        return f"{tenant}\x00{recipient}\x00{scope}"

    def describe(self, t: NotificationTypePublished) -> str:
        scope = f"category {t.category}" if self.per == "category" else t.notification_type
        return f"at most {self.limit} per {self.window_seconds} s of {scope}"


def throttle_rule(t: NotificationTypePublished) -> ThrottleRule | None:
    """The type's throttle rule; raises InvalidEvent when it is malformed."""
    if t.throttle_json is None:
        return None
    raw = json.loads(t.throttle_json)
    key = t.notification_type
    if not isinstance(raw, dict) or set(raw) - {"limit", "window", "per"} or {"limit", "window"} - set(raw):
        raise InvalidEvent(f"{key}: throttle must be a table with limit, window and optionally per")
    limit, per = raw["limit"], raw.get("per", "type")
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise InvalidEvent(f"{key}: throttle limit must be an integer 1..{MAX_LIMIT}")
    if per not in ("type", "category"):
        raise InvalidEvent(f"{key}: throttle per must be 'type' or 'category', not {per!r}")
    try:
        window = tier_seconds(str(raw["window"]))
    except ValueError as exc:
        raise InvalidEvent(f"{key}: throttle window: {exc}") from None
    if not 1 <= window <= MAX_WINDOW_SECONDS:
        raise InvalidEvent(f"{key}: throttle window must be 1 s..31 days")
    return ThrottleRule(limit, window, per)


@dataclass(frozen=True)
class Conditions:
    notification: str | None
    channels: dict[str, str]


def conditions(t: NotificationTypePublished) -> Conditions | None:
    """The type's conditions; raises InvalidEvent when they are malformed."""
    if t.conditions_json is None:
        return None
    raw = json.loads(t.conditions_json)
    key = t.notification_type
    if not isinstance(raw, dict) or set(raw) - {"notification", "channels"}:
        raise InvalidEvent(f"{key}: conditions must be an object with notification and channels")
    notification, channels = raw.get("notification"), raw.get("channels") or {}
    if not isinstance(channels, dict):
        raise InvalidEvent(f"{key}: channel_conditions must be a table of channel = condition")
    templated = {tpl.channel for tpl in t.templates}
    if unknown := set(channels) - templated:
        raise InvalidEvent(f"{key}: conditions for channels without templates: {sorted(unknown)}")
    for source in [notification, *channels.values()]:
        if source is None:
            continue
        if not isinstance(source, str):
            raise InvalidEvent(f"{key}: a condition must be a string, not {source!r}")
        try:
            check_condition(source)
        except RenderError as exc:
            raise InvalidEvent(f"{key}: {exc}") from None
    return Conditions(notification, dict(channels))


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
    "throttle",
    "condition",
    "channel_conditions",
    "example",
    "example_recipient",
}


NEEDED = {"email": ("body", "html"), "sms": ("body",)}
"""The fields a channel cannot send without (one of them), in every locale: the gateway refused each
message of a template without one, and a locale is chosen whole, not field by field."""


def _templates(key: str, raw: dict[str, Any], publishing: bool = True) -> list[ChannelTemplate]:
    """`publishing` False: reading a published type (the router), whose locales without a needed field
    fail only their own sends, as they did before publishing checked them."""
    out = []
    for channel, locales in sorted(raw.items()):
        if channel not in CHANNELS:
            raise InvalidEvent(f"{key}: unknown channel {channel!r} in templates")
        if not isinstance(locales, dict):
            raise InvalidEvent(f"{key}: templates.{channel} must be a table of locales")
        if "default" not in locales:
            raise InvalidEvent(f"{key}: channel {channel} has no 'default' locale template")
        for locale, fields in sorted(locales.items()):
            if not isinstance(fields, dict):
                raise InvalidEvent(f"{key}: templates.{channel}.{locale} must be a table of fields")
            wrong = sorted(f for f, source in fields.items() if not isinstance(source, str | None))
            if wrong:
                raise InvalidEvent(f"{key}: {channel}/{locale}: template fields {wrong} must be strings")
            unknown = set(fields) - set(FIELDS)
            if unknown:
                raise InvalidEvent(f"{key}: {channel}/{locale}: unknown template fields {sorted(unknown)}")
            needed = NEEDED.get(channel, ()) if publishing else ()
            if needed and not any(fields.get(f) for f in needed):
                raise InvalidEvent(f"{key}: {channel}/{locale}: needs {' or '.join(needed)}")
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


def digest_rule(t: NotificationTypePublished, publishing: bool = False) -> DigestRule | None:
    """The type's digest rule; raises InvalidEvent when it is malformed (`publishing`: also when a
    locale lacks a field its channel cannot send without)."""
    if t.digest_json is None:
        return None
    raw = json.loads(t.digest_json)
    key = t.notification_type
    if not isinstance(raw, dict) or set(raw) - {"window", "templates"} or "window" not in raw:
        raise InvalidEvent(f"{key}: digest must be a table with a window and templates")
    try:
        window = tier_seconds(str(raw["window"]))
    except ValueError as exc:
        raise InvalidEvent(f"{key}: digest window: {exc}") from None
    if not 0 < window <= MAX_WINDOW_SECONDS:
        raise InvalidEvent(f"{key}: digest window must be more than 0 and at most 31 days")
    table: Templates = {}
    for tpl in _templates(f"{key} digest", raw.get("templates", {}), publishing):
        fields = tpl.model_dump(exclude={"channel", "locale"})
        table.setdefault(tpl.channel, {})[tpl.locale] = fields
    if not table:
        raise InvalidEvent(f"{key}: a digest needs a template for at least one channel")
    if missing := set(table) - set(t.default_channels):
        raise InvalidEvent(f"{key}: digest templates for channels the type does not use: {sorted(missing)}")
    return DigestRule(window, table)


def escalation_steps(t: NotificationTypePublished) -> list[EscalationStep]:
    """The type's escalation steps; raises InvalidEvent when they are malformed."""
    if t.escalation_json is None:
        return []
    key = t.notification_type
    steps = []
    for raw in json.loads(t.escalation_json).get("steps", []):
        if not isinstance(raw, dict) or set(raw) - {"after", "channel", "unless"} or "after" not in raw:
            raise InvalidEvent(f"{key}: an escalation step is a table with after, channel and unless")
        channel, unless = raw.get("channel"), raw.get("unless", "seen")
        if channel not in t.default_channels:
            raise InvalidEvent(f"{key}: escalation channel {channel!r} is not one of the type's channels")
        if unless not in ENGAGEMENTS:
            raise InvalidEvent(f"{key}: escalation unless {unless!r} is not one of {list(ENGAGEMENTS)}")
        try:
            after = tier_seconds(str(raw["after"]))
        except ValueError as exc:
            raise InvalidEvent(f"{key}: escalation after: {exc}") from None
        if not 0 < after <= MAX_WINDOW_SECONDS:
            raise InvalidEvent(f"{key}: escalation after must be more than 0 and at most 31 days")
        steps.append(EscalationStep(after, channel, unless))
    if len({s.channel for s in steps}) != len(steps):
        raise InvalidEvent(f"{key}: a channel can escalate only once")
    return steps


def _conditions_json(raw: dict[str, Any]) -> str | None:
    if "condition" not in raw and "channel_conditions" not in raw:
        return None
    return json.dumps({"notification": raw.get("condition"), "channels": raw.get("channel_conditions", {})})


def parse_type(tenant: str, raw: dict[str, Any], version: int = 1) -> NotificationTypePublished:
    key = raw.get("key", "?")
    if unknown := set(raw) - _KNOWN:
        raise InvalidEvent(f"{key}: unknown fields {sorted(unknown)}")
    channels = raw.get("channels", [])
    templates = _templates(key, raw.get("templates", {}))
    missing = set(channels) - {t.channel for t in templates}
    if missing:
        raise InvalidEvent(f"{key}: channels without templates: {sorted(missing)}")
    if not isinstance(raw.get("escalation", []), list):
        raise InvalidEvent(f"{key}: escalation must be a list of steps")
    try:
        expires = tier_seconds(str(raw["expires_after"])) if "expires_after" in raw else None
    except ValueError as exc:
        raise InvalidEvent(f"{key}: expires_after {exc}") from None
    try:
        published = NotificationTypePublished(
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
            throttle_json=json.dumps(raw["throttle"]) if "throttle" in raw else None,
            conditions_json=_conditions_json(raw),
        )
    except ValidationError as exc:
        raise InvalidEvent(f"{key}: {summary(exc)}") from None
    except ValueError as exc:
        raise InvalidEvent(f"{key}: {exc}") from None
    throttle_rule(published)
    conditions(published)
    digest = digest_rule(published, publishing=True)
    escalated = {s.channel for s in escalation_steps(published)}
    if digest is not None and escalated:
        raise InvalidEvent(
            f"{key}: a type with a digest cannot escalate: an escalation counts from the first notice and "
            "waits for that notification to be seen, but a digested item is noticed when its digest "
            "closes, and seen as the digest, under the digest's own id"
        )
    return published


def catalog_files(directory: Path) -> list[Path]:
    """The `.toml` files of a catalog folder, in name order, or the one file given."""
    return sorted(directory.glob("*.toml")) if directory.is_dir() else [directory]


def load(directory: Path, tenant: str = GLOBAL_TENANT) -> list[NotificationTypePublished]:
    """Every type in `directory/*.toml`, validated; version 1 until `next_versions` numbers them."""
    types: dict[str, NotificationTypePublished] = {}
    for path in catalog_files(directory):
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
