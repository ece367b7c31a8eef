"""Folds recipient and feedback events into one recipient's state: contacts, preferences, devices,
suppressions. Pure: `fold(state, event) -> state`, replayable from the topics at any time.

Suppression rules (`processors.suppression`): a hard bounce, complaint, SMS STOP or token-invalid is
permanent until lifted (START, resubscribe, or the address being set again; an operator's lift only
lifts delivery failures); `SOFT_BOUNCE_LIMIT` soft bounces within `SOFT_BOUNCE_WINDOW` suppress too.
An unsubscribe with a category opts out of that category's non-critical messages on the feedback's
channel (`unsubscribed_categories` key `<category>/<channel>`: an email's unsubscribe link stops those
emails, not the category's push notifications); without a category it suppresses the address for
non-critical messages. A webhook endpoint disabled by the gateway (`endpoint_disabled`) stays
suppressed until it is updated again.

A category unsubscribe and the preference rules are weighed by which came last (`processors.preferences`
`opted_out`): `rules_at` holds when each rule last changed value, so a rule turned on before the
unsubscribe does not override it, and a preference write that merely repeats a rule (a preference
page saving every toggle) is no new consent. Turning a category's rule on after an unsubscribe lifts
the unsubscribe (for that channel, or every channel), like a resubscribe.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator

from processors.suppression import (
    FAILURES,
    LIFTS,
    REFUSALS,
    AddressSuppression,
    all_messages,
    cleared,
    folded,
    restored,
)
from tidings.events import (
    DeviceRegistered,
    DeviceRemoved,
    Event,
    PreferencesUpdated,
    ProviderFeedback,
    QuietHours,
    RecipientErased,
    RecipientUpdated,
    WebhookEndpointRemoved,
    WebhookEndpointUpdated,
)
from tidings.vocabulary import email_key

SOFT_BOUNCE_LIMIT = 3
SOFT_BOUNCE_WINDOW = timedelta(days=7)
MAX_SOFT_BOUNCES_KEPT = 20
"""Soft bounces an address keeps in the router's state (within two windows of its newest). A bounce
that arrives more than a window after a newer one can complete a window in the suppressions projection
(which keeps them all) but not in the router."""
PERMANENT = (REFUSALS | FAILURES) - {"unsubscribe", "soft_bounce_limit"}
"""Kinds that suppress on their own: an unsubscribe suppresses only without a category, and the
soft-bounce limit is reached by counting."""
LIFTING = LIFTS
PROFILE = ("email", "phone", "locale", "timezone", "name")
MAX_STATE_BYTES = 512 * 1024
"""A recipient's state is one changelog record: properties merge and devices add up, and a record over
the changelog topic's limit (1 MiB by default) would fail every transaction that carried it. The
router refuses the event that would pass this instead (it goes to the DLQ), keeping the state it had;
an event that shrinks a state already over it (a removal) is taken."""


def state_bytes(state: RecipientState | None) -> int:
    """The size of a state's changelog record (UTF-8 JSON, as the router's store writes it)."""
    return 0 if state is None else len(state.__pydantic_serializer__.to_json(state))


CONSENT_HEADROOM = 128 * 1024
"""Room over MAX_STATE_BYTES kept for what stops sending: feedback (a complaint, an unsubscribe, a bounce)
and preference changes. With one limit for all, a state filled to it by properties dead-lettered the
next complaint, and mail went on to someone who had complained; 640 KiB is still well under 1 MiB."""


def oversized(
    before: RecipientState | None, folded: RecipientState, event: Event | None = None
) -> tuple[int, int] | None:
    """The size of `folded` and the limit it passes when `event` may not make it: over MAX_STATE_BYTES
    (plus CONSENT_HEADROOM for feedback and preferences) and grown. An event that shrinks a state already
    over it is taken, so the removals the refusal asks for can be made."""
    consent = isinstance(event, ProviderFeedback | PreferencesUpdated)
    limit = MAX_STATE_BYTES + (CONSENT_HEADROOM if consent else 0)
    size = state_bytes(folded)
    return (size, limit) if size > limit and size > state_bytes(before) else None


class Device(BaseModel):
    model_config = ConfigDict(frozen=True)
    platform: str
    token: str
    keys: dict[str, str] = {}
    app_id: str | None = None
    registered_at: datetime


class WebhookEndpoint(BaseModel):
    model_config = ConfigDict(frozen=True)
    url: str
    secret: str
    event_types: list[str] = []
    enabled: bool = True


class Suppression(BaseModel):
    model_config = ConfigDict(frozen=True)
    reason: str
    since: datetime
    all_messages: bool = True


class RecipientState(BaseModel):
    model_config = ConfigDict(frozen=True)
    email: str | None = None
    phone: str | None = None
    locale: str | None = None
    timezone: str | None = None
    name: str | None = None
    properties: dict[str, Any] = {}
    muted: bool = False
    rules: dict[str, bool] = {}
    rules_at: dict[str, datetime] = {}
    quiet_hours: QuietHours | None = None
    digest: dict[str, str] = {}
    devices: dict[str, Device] = {}
    webhooks: dict[str, WebhookEndpoint] = {}
    suppressions: dict[str, Suppression] = {}
    """The suppression in force per address (`address_key`), from `addresses`; what `plan` reads."""
    addresses: dict[str, AddressSuppression] = {}
    unsubscribed_categories: dict[str, datetime] = {}
    soft_bounces: dict[str, list[datetime]] = {}
    feedback_at: dict[str, datetime] = {}
    """The newest feedback per address, from states written before `addresses` was kept."""
    erased_at: datetime | None = None
    """When the recipient was erased: the router folds the erasure dated by its record's log time, the
    time the recipients projection keeps. The router keeps a state of only this instead of nothing:
    feedback dated before the erasure and reported after it (a late bounce) made a state holding the
    erased address again."""

    def rule(self, scope: str, key: str, channel: str | None) -> bool | None:
        return self.rules.get(rule_key(scope, key, channel))

    @model_validator(mode="before")
    @classmethod
    def _email_keys(cls, data: Any) -> Any:
        """Re-key email addresses with an internationalised domain kept before `email_key` (their
        IDNA form, or an unmapped Unicode one), so their suppressions keep matching."""
        if not isinstance(data, dict):
            return data
        for name in ("suppressions", "addresses", "soft_bounces", "feedback_at"):
            keyed = data.get(name)
            if isinstance(keyed, dict) and any(_legacy(k) for k in keyed):
                rekeyed: dict[str, Any] = {}
                for k, v in keyed.items():
                    rekeyed.setdefault(address_key("email", k[6:]) if _legacy(k) else k, v)
                data = {**data, name: rekeyed}
        return data


def _legacy(key: str) -> bool:
    return key.startswith("email:") and (not key.isascii() or "xn--" in key)


def rule_key(scope: str, key: str, channel: str | None) -> str:
    return f"{scope}:{key}:{channel or '*'}"


def address_key(channel: str, address: str) -> str:
    return f"{channel}:{email_key(address) if channel == 'email' else address}"


def fold(state: RecipientState | None, event: Event) -> RecipientState:
    state = state or RecipientState()
    if isinstance(event, RecipientErased):
        return RecipientState(erased_at=max(event.occurred_at, state.erased_at or event.occurred_at))
    if isinstance(event, RecipientUpdated):
        return _profile(state, event)
    if isinstance(event, PreferencesUpdated):
        return _preferences(state, event)
    if isinstance(event, DeviceRegistered):
        device = Device(
            platform=event.platform,
            token=event.token,
            keys=event.keys,
            app_id=event.app_id,
            registered_at=event.occurred_at,
        )
        return state.model_copy(
            update={
                "devices": {**state.devices, event.device_id: device},
                **_reset(state, "push", event.token),
            }
        )
    if isinstance(event, DeviceRemoved):
        return state.model_copy(
            update={"devices": {k: v for k, v in state.devices.items() if k != event.device_id}}
        )
    if isinstance(event, WebhookEndpointUpdated):
        endpoint = WebhookEndpoint(
            url=event.url, secret=event.secret, event_types=event.event_types, enabled=event.enabled
        )
        return state.model_copy(
            update={
                "webhooks": {**state.webhooks, event.endpoint_id: endpoint},
                **_reset(state, "webhook", event.url),
            }
        )
    if isinstance(event, WebhookEndpointRemoved):
        return state.model_copy(
            update={"webhooks": {k: v for k, v in state.webhooks.items() if k != event.endpoint_id}}
        )
    if isinstance(event, ProviderFeedback):
        if state.erased_at is not None and event.at <= state.erased_at:
            return state
        return _feedback(state, event)
    return state


def _profile(state: RecipientState, event: RecipientUpdated) -> RecipientState:
    update: dict[str, Any] = {f: getattr(event, f) for f in PROFILE if getattr(event, f) is not None}
    for f in event.unset:
        if f in PROFILE:
            update[f] = None
        elif f == "properties":
            update["properties"] = {}
    if event.properties_json is not None:
        update["properties"] = {**state.properties, **json.loads(event.properties_json)}
    for channel, field in (("email", "email"), ("sms", "phone")):
        new, old = update.get(field), getattr(state, field)
        if new and (old is None or address_key(channel, old) != address_key(channel, new)):
            state = state.model_copy(update=_reset(state, channel, new))
    return state.model_copy(update=update)


def _reset(state: RecipientState, channel: str, address: str) -> dict[str, Any]:
    """The updates that lift every suppression of an address set again."""
    key = address_key(channel, address)
    if key not in state.suppressions and key not in state.addresses:
        return {}
    registers = cleared(state.addresses.get(key) or _restored(state, key))
    return {
        "suppressions": {k: v for k, v in state.suppressions.items() if k != key},
        "addresses": {**state.addresses, key: registers},
    }


def _preferences(state: RecipientState, event: PreferencesUpdated) -> RecipientState:
    base = RecipientState() if event.replace else state
    rules = dict(base.rules)
    changed_at = dict(base.rules_at)
    unsubscribed = dict(state.unsubscribed_categories)
    for r in event.rules:
        key = rule_key(r.scope, r.key, r.channel)
        rules[key] = r.enabled
        if state.rules.get(key) != r.enabled:
            changed_at[key] = event.occurred_at
            if r.scope == "category" and r.enabled:
                unsubscribed = {
                    c: at
                    for c, at in unsubscribed.items()
                    if not _covers(r.key, r.channel, c) or at > event.occurred_at
                }
        elif key in state.rules_at:
            changed_at[key] = state.rules_at[key]
    quiet = None if event.clear_quiet_hours else (event.quiet_hours or base.quiet_hours)
    return state.model_copy(
        update={
            "rules": rules,
            "rules_at": {k: at for k, at in changed_at.items() if k in rules},
            "unsubscribed_categories": unsubscribed,
            "quiet_hours": quiet,
            "digest": {**base.digest, **event.digest},
            "muted": event.muted if event.muted is not None else base.muted,
        }
    )


def _covers(category: str, channel: str | None, unsubscribed: str) -> bool:
    """Whether a category rule (`channel` None: every channel) covers an `unsubscribed_categories` key."""
    unsubscribed_category, _, unsubscribed_channel = unsubscribed.rpartition("/")
    return unsubscribed_category == category and channel in (None, unsubscribed_channel)


def _feedback(state: RecipientState, event: ProviderFeedback) -> RecipientState:
    """Folds one piece of feedback. Suppressing and lifting an address go by provider time, as in the
    `suppressions` projection: feedback older than the address's last (a STOP retried after the START
    that followed it) changes nothing, and at the same instant suppressing wins. A category's
    resubscribe lifts that category's unsubscribe only, not the address's complaint or bounce."""
    key = address_key(event.channel, event.address)
    at = event.at
    suppressions = dict(state.suppressions)
    update: dict[str, Any] = {}
    suppress: Suppression | None = None
    if event.kind in PERMANENT:
        if event.kind == "token_invalid":
            devices = {
                k: d for k, d in state.devices.items() if d.token != event.address or d.registered_at > at
            }
            if len(devices) == len(state.devices):
                return state
            update["devices"] = devices
            if any(d.token == event.address for d in devices.values()):
                return state.model_copy(update=update)
        suppress = Suppression(reason=event.kind, since=at)
    elif event.kind == "soft_bounce":
        if at in state.soft_bounces.get(key, []):
            return state
        times = sorted([*state.soft_bounces.get(key, []), at])
        newest = times[-1]
        kept = [t for t in times if t > newest - 2 * SOFT_BOUNCE_WINDOW][-MAX_SOFT_BOUNCES_KEPT:]
        update["soft_bounces"] = {**state.soft_bounces, key: kept}
        if (full := window_full(times, at)) is not None:
            suppress = Suppression(reason="soft_bounce_limit", since=full)
    elif event.kind == "unsubscribe":
        if event.category:
            scoped = f"{event.category}/{event.channel}"
            update["unsubscribed_categories"] = {**state.unsubscribed_categories, scoped: at}
        else:
            suppress = Suppression(reason="unsubscribe", since=at, all_messages=False)
    elif event.kind == "resubscribe" and event.category:
        scoped = f"{event.category}/{event.channel}"
        update["unsubscribed_categories"] = {
            c: t for c, t in state.unsubscribed_categories.items() if c != scoped
        }
    if suppress is not None or (event.kind in LIFTING and not event.category):
        before = state.addresses.get(key) or _restored(state, key)
        when = suppress.since if suppress else at
        after = folded(before, suppress.reason if suppress else event.kind, when, event.provider)
        current = after.effective()
        if current is None:
            suppressions.pop(key, None)
        else:
            suppressions[key] = Suppression(
                reason=current.reason or "",
                since=current.since,
                all_messages=all_messages(current.reason or ""),
            )
        update["addresses"] = {**state.addresses, key: after}
    return state.model_copy(update={**update, "suppressions": suppressions})


def window_full(times: list[datetime], at: datetime) -> datetime | None:
    """When the soft-bounce limit was reached by a window holding the bounce at `at`, as the
    suppressions projection dates it (`WINDOW_FULL`): the latest bounce of the latest full window of
    `SOFT_BOUNCE_WINDOW` that starts at a bounce no later than `at` and contains it. The router dated
    it at the bounce that arrived last, so an operator's lift between the bounces left the address
    suppressed or not by arrival order, and unlike the projection."""
    ends = []
    for start in (b for b in times if at - SOFT_BOUNCE_WINDOW < b <= at):
        inside = [c for c in times if start <= c < start + SOFT_BOUNCE_WINDOW]
        if len(inside) >= SOFT_BOUNCE_LIMIT:
            ends.append(max(inside))
    return max(ends, default=None)


def _restored(state: RecipientState, key: str) -> AddressSuppression:
    """An address's registers from a state written before they were kept (its one suppression)."""
    s = state.suppressions.get(key)
    return restored(s.reason if s else None, s.since if s else None, state.feedback_at.get(key))
