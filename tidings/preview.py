"""Consumes a candidate catalog and example data; produces each channel's rendered content as the router
would render it (`tidings catalog preview`), and the example check of `tidings catalog publish`.

Rendering goes through the router's own pieces: `processors.plan.context` builds the template variables
(the data's keys, `data`, `recipient`, `notification`) and `tidings.render.render` picks the locale
(`de-AT` → `de` → `default`) and renders in the sandbox with its caps, so a preview shows what a request
with that data would carry, and a template that would fail in the router fails here with the same error.

A type may carry `[type.example]` (request data) and `[type.example_recipient]` (`name`, `locale`,
`properties`) in its catalog file. They are not published. `tidings catalog publish` renders every
template of such a type, every channel and every locale, digest templates included (with the example as
two items), and publishes nothing when one fails: a missing variable (templates use strict undefined),
a `data_json` that is not a JSON object or output over its cap is found before a request is rejected for
it. Conditions are evaluated in a preview and reported; one that does not hold for the example is not an
error (examples are often the case a condition excludes), one that cannot be evaluated is.
"""

from __future__ import annotations

import json
import tomllib
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from processors.plan import Catalog, context, unmet
from processors.recipients import RecipientState
from tidings.catalog import catalog_files, load
from tidings.errors import InvalidEvent
from tidings.events import NotificationRequested, NotificationTypePublished
from tidings.render import RenderError, render

RECIPIENT_FIELDS = frozenset({"name", "locale", "properties"})
DIGEST_ITEMS = 2


@dataclass(frozen=True)
class Example:
    data: dict[str, Any]
    recipient: dict[str, Any]


@dataclass(frozen=True)
class Rendering:
    """One channel's content for the previewed request: the template locale chosen, the rendered fields
    (None where the template has no such field), and why the channel's condition stops it, if it does."""

    channel: str
    locale: str
    fields: dict[str, str | None]
    digest: bool = False
    unmet: str | None = None

    def view(self) -> dict[str, Any]:
        return {
            "channel": self.channel,
            "digest": self.digest,
            "locale": self.locale,
            "channel_condition_not_met": self.unmet,
            **{k: v for k, v in self.fields.items() if v is not None},
        }


def examples(directory: Path) -> dict[str, Example]:
    """The `[type.example]` and `[type.example_recipient]` tables of a catalog file or folder, by type key
    (the files are assumed valid: `tidings.catalog.load` reads them first)."""
    found: dict[str, Example] = {}
    for path in catalog_files(directory):
        for raw in tomllib.loads(path.read_text()).get("type", []):
            if "example" in raw or "example_recipient" in raw:
                found[str(raw.get("key"))] = example(str(raw.get("key")), raw)
    return found


def example(key: str, raw: Mapping[str, Any]) -> Example:
    data, recipient = raw.get("example", {}), raw.get("example_recipient", {})
    if not isinstance(data, dict) or not isinstance(recipient, dict):
        raise InvalidEvent(f"{key}: example and example_recipient must be tables")
    if unknown := set(recipient) - RECIPIENT_FIELDS:
        raise InvalidEvent(f"{key}: example_recipient: unknown fields {sorted(unknown)}")
    return Example(data, recipient)


def _request(t: NotificationTypePublished, data: Mapping[str, Any], digest: bool) -> NotificationRequested:
    payload = {"items": [data] * DIGEST_ITEMS, "count": DIGEST_ITEMS} if digest else data
    try:
        return NotificationRequested(
            tenant_id=t.tenant_id if t.tenant_id != "*" else "preview",
            notification_id=uuid.UUID(int=0),
            recipient_id="preview",
            notification_type=t.notification_type,
            data_json=json.dumps(payload),
            digest_of=[uuid.UUID(int=0)] if digest else None,
        )
    except ValidationError as exc:
        raise InvalidEvent(f"{t.notification_type}: example data: {exc}") from None


def _state(recipient: Mapping[str, Any]) -> RecipientState:
    try:
        return RecipientState(**recipient)
    except ValidationError as exc:
        raise InvalidEvent(f"example_recipient: {exc}") from None


def condition(t: NotificationTypePublished, ex: Example) -> str | None:
    """Why the type's `condition` stops a request with the example's data, or None."""
    catalog = Catalog()
    rules = catalog.rules(t)
    ctx = context(_request(t, ex.data, False), t, _state(ex.recipient))
    return unmet(rules.conditions.notification if rules.conditions else None, t, ctx)


def preview(
    t: NotificationTypePublished,
    ex: Example,
    *,
    locale: str | None = None,
    channels: Iterable[str] | None = None,
    digest: bool = False,
) -> list[Rendering]:
    """The type's channels (or `channels`) rendered for a request with the example's data, in `locale`
    (else the recipient's). Raises InvalidEvent naming the channel when a template fails."""
    catalog = Catalog()
    rules = catalog.rules(t)
    if digest and rules.digest is None:
        raise InvalidEvent(f"{t.notification_type} has no digest templates")
    templates = rules.digest.templates if digest and rules.digest else catalog.templates(t)
    state = _state(ex.recipient)
    ctx = context(_request(t, ex.data, digest), t, state)
    ordered = [
        *(c for c in t.default_channels if c in templates),
        *(c for c in templates if c not in t.default_channels),
    ]
    wanted = list(channels) if channels is not None else ordered
    if unknown := [c for c in wanted if c not in templates]:
        kind = "digest templates" if digest else "templates"
        raise InvalidEvent(f"{t.notification_type} has no {kind} for {unknown}")
    out = []
    for channel in wanted:
        try:
            rendered = render(templates[channel], locale or state.locale, ctx)
        except RenderError as exc:
            raise InvalidEvent(f"{t.notification_type} {channel}: {exc}") from None
        why = None
        if rules.conditions is not None and not digest:
            why = unmet(rules.conditions.channels.get(channel), t, ctx)
        out.append(Rendering(channel, rendered.locale, rendered.fields, digest, why))
    return out


def check(t: NotificationTypePublished, ex: Example) -> int:
    """Render every template of the type (every channel and locale, and the digest templates) with the
    example; returns how many were rendered. Raises InvalidEvent naming the first that fails."""
    catalog = Catalog()
    rules = catalog.rules(t)
    condition(t, ex)
    rendered = 0
    digests = rules.digest.templates if rules.digest else {}
    for digest, templates in ((False, catalog.templates(t)), (True, digests)):
        for channel, locales in templates.items():
            for locale in locales:
                try:
                    preview(t, ex, locale=locale, channels=[channel], digest=digest)
                except InvalidEvent as exc:
                    where = f"{'digest ' if digest else ''}{locale}"
                    raise InvalidEvent(f"example: {exc} (locale {where})") from None
                rendered += 1
    return rendered


def load_checked(directory: Path, tenant: str) -> tuple[list[NotificationTypePublished], int, list[str]]:
    """`tidings.catalog.load`, then every example rendered through its type's templates (`check`).
    Returns the types, how many templates were rendered and the keys of the types without an example."""
    types = load(directory, tenant)
    found = examples(directory)
    rendered = sum(check(t, found[t.notification_type]) for t in types if t.notification_type in found)
    return types, rendered, sorted(t.notification_type for t in types if t.notification_type not in found)
