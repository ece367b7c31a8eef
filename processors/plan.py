"""Consumes a NotificationRequested with the recipient's state and the catalog; produces its delivery plan.

`plan(request, recipient, catalog, now)` is pure. Channel resolution, highest first:

1. the request's `channels` restrict the candidates (default: the type's channels), and the type's
   `condition` (the whole request) and channel conditions must hold, critical or not: they are the type
   author's rules, not the recipient's (`SKIPPED condition`);
2. a `critical` type is always delivered (no opt-out, no mute, no quiet hours, no category unsubscribe);
3. global mute opts out;
4. type x channel rule, then type x every channel;
5. category x channel rule, then category x every channel, then a category unsubscribe from feedback;
   a rule that turns the channel on gives way to an unsubscribe of the category on that channel that
   came after the rule last changed (someone who opted in and then clicked the unsubscribe link is
   unsubscribed);
6. otherwise the type's default: delivered.

Webhooks go to every enabled endpoint of the recipient whose `event_types` name the type or its
category (or are empty); a request can give its own email and SMS addresses. Then per address: suppressed
addresses are skipped (a plain unsubscribe only for non-critical types); a request past its expiry
is EXPIRED; `scheduled_at` in the future and, for push and SMS, quiet hours in the recipient's time
zone (not for critical types) defer the command to `notifications.scheduled`.
Quiet hours do not hold email, in-app or webhooks, which do not interrupt anyone.

A channel with an escalation step is deferred by its `after` and carries `unless`, so the scheduler
drops it if the notification is engaged with first. When no other channel sends a notice (none
allowed, no address), the escalation is the notice: the first step goes at once and later steps keep
their distance from it, as a fallback channel would. A channel with a digest template is not sent but
listed in `Plan.digested` (non-critical types, no future `scheduled_at`, no `recipient_overrides`, data
up to `DIGEST_ITEM_BYTES` and `DIGEST_ITEM_DEPTH`, unless the recipient turned the category's digest off);
the router collects it (`processors/digest.py`).
A digest request (`digest_of` set) renders with the digest templates and is never digested again.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from pydantic import ValidationError

from processors.preferences import opted_out, quiet_until
from processors.recipients import RecipientState, address_key
from tidings.catalog import (
    GLOBAL_TENANT,
    Conditions,
    DigestRule,
    EscalationStep,
    Templates,
    ThrottleRule,
    conditions,
    digest_rule,
    escalation_steps,
    throttle_rule,
)
from tidings.codec import Codec
from tidings.errors import InvalidEvent
from tidings.events import (
    Channel,
    DeliveryCommand,
    DeliveryOutcome,
    NotificationRequested,
    NotificationTypePublished,
    OutcomeStatus,
    RenderedContent,
)
from tidings.ids import command_id, delivery_id
from tidings.kafka.records import Incoming, table_events
from tidings.render import RenderError, holds, render
from tidings.vocabulary import MAX_JSON_DEPTH, MAX_SCHEDULE_AHEAD, check_overrides, json_depth

log = logging.getLogger(__name__)

INTERRUPTING = frozenset({"push", "sms"})
DIGEST_ITEM_BYTES = 8 * 1024
"""A request with more data than this is not digested: it is sent on its own."""
DIGEST_ITEM_DEPTH = MAX_JSON_DEPTH - 2
"""Nor one nested deeper than this: the digest's data holds each item two levels down (`{"items":
[...]}`), and one item nested 63 deep made the whole digest too deep, every item in it REJECTED."""


def digestible(request: NotificationRequested) -> bool:
    """A request with its own addresses (`recipient_overrides`, the API's `to`) is not digested either:
    the digest goes to the recipient's, and took the mail meant for the address the producer named to
    the profile's (or to none, after the item was QUEUED)."""
    text = request.data_json
    if len(text) > DIGEST_ITEM_BYTES or request.recipient_overrides:
        return False
    return (
        text.count("{") + text.count("[") <= DIGEST_ITEM_DEPTH
        or json_depth(request.data) <= DIGEST_ITEM_DEPTH
    )


@dataclass(frozen=True)
class Rules:
    digest: DigestRule | None
    escalation: dict[str, EscalationStep]
    throttle: ThrottleRule | None = None
    conditions: Conditions | None = None


class Catalog:
    """The latest version of every notification type, by tenant; tenant `*` is the fallback."""

    def __init__(self) -> None:
        self._types: dict[tuple[str, str], NotificationTypePublished] = {}
        self._templates: dict[tuple[str, str, int], Templates] = {}
        self._rules: dict[tuple[str, str, int], Rules] = {}

    def apply(self, published: NotificationTypePublished) -> None:
        """Keep the newest version; one published again under the same number replaces it, as it does
        in the compacted topic a restarted router reads, so the rules and templates made from the
        replaced record are dropped with it (they stayed, and running routers kept sending the first
        content while restarted ones sent the second)."""
        key = (published.tenant_id, published.notification_type)
        current = self._types.get(key)
        if current is None or published.version >= current.version:
            self._types[key] = published
            if current is not None:
                self._templates.pop((*key, current.version), None)
                self._rules.pop((*key, current.version), None)

    def follow(self, records: Iterable[Incoming], codec: Codec) -> None:
        """Apply the catalog topic's records (undecodable ones skipped, see `table_events`)."""
        for event in table_events(records, codec, "catalog"):
            if isinstance(event, NotificationTypePublished):
                self.apply(event)

    def type_keys(self, tenant: str) -> set[str]:
        """The types a tenant can request: its own and the global ones."""
        return {k for t, k in self._types if t in (tenant, GLOBAL_TENANT)}

    def get(self, tenant: str, type_: str) -> NotificationTypePublished | None:
        return self._types.get((tenant, type_)) or self._types.get((GLOBAL_TENANT, type_))

    def rules(self, t: NotificationTypePublished) -> Rules:
        """The type's digest, escalation, throttle and condition rules; raises InvalidEvent when one is
        malformed, whatever the error: a type published by another producer than `tidings catalog
        publish` can hold JSON of any shape (`{"steps": 5}` raised TypeError, which escaped the digest
        punctuation and stopped the router at every restart)."""
        key = (t.tenant_id, t.notification_type, t.version)
        if key not in self._rules:
            try:
                steps = {s.channel: s for s in escalation_steps(t)}
                self._rules[key] = Rules(digest_rule(t), steps, throttle_rule(t), conditions(t))
            except InvalidEvent:
                raise
            except Exception as exc:
                why = f"{type(exc).__name__}: {exc}"
                raise InvalidEvent(f"{t.notification_type} v{t.version}: malformed rules ({why})") from None
        return self._rules[key]

    def templates(self, t: NotificationTypePublished) -> Templates:
        key = (t.tenant_id, t.notification_type, t.version)
        if key not in self._templates:
            table: Templates = {}
            for tpl in t.templates:
                table.setdefault(tpl.channel, {})[tpl.locale] = {
                    "subject": tpl.subject,
                    "title": tpl.title,
                    "body": tpl.body,
                    "html": tpl.html,
                    "data_json": tpl.data_json,
                }
            self._templates[key] = table
        return self._templates[key]

    def __len__(self) -> int:
        return len(self._types)


@dataclass
class Plan:
    commands: list[DeliveryCommand] = field(default_factory=list)
    deferred: list[DeliveryCommand] = field(default_factory=list)
    outcomes: list[DeliveryOutcome] = field(default_factory=list)
    digested: list[Channel] = field(default_factory=list)


def addresses(
    channel: str, request: NotificationRequested, state: RecipientState, t: NotificationTypePublished
) -> list[tuple[str, dict[str, str]]]:
    overrides = request.recipient_overrides or {}
    if channel == "in_app":
        return [(request.recipient_id, {})]
    if channel == "push":
        return [
            (
                d.token,
                {
                    "platform": d.platform,
                    "device_id": device_id,
                    **({"app_id": d.app_id} if d.app_id else {}),
                    **{f"key_{k}": v for k, v in d.keys.items()},
                },
            )
            for device_id, d in sorted(state.devices.items())
        ]
    if channel == "webhook":
        wanted = {t.notification_type, t.category}
        return [
            (e.url, {"endpoint_id": endpoint_id, "secret": e.secret})
            for endpoint_id, e in sorted(state.webhooks.items())
            if e.enabled and (not e.event_types or wanted & set(e.event_types))
        ]
    direct = overrides.get(channel) or {"email": state.email, "sms": state.phone}.get(channel)
    return [(direct, {})] if direct else []


def context(
    request: NotificationRequested, t: NotificationTypePublished, state: RecipientState
) -> dict[str, Any]:
    data = request.data
    return {
        **data,
        "data": data,
        "recipient": {
            "id": request.recipient_id,
            "name": state.name,
            "locale": state.locale,
            "properties": state.properties,
        },
        "notification": {
            "id": str(request.notification_id),
            "type": t.notification_type,
            "category": t.category,
        },
    }


def unmet(source: str | None, t: NotificationTypePublished, ctx: dict[str, Any]) -> str | None:
    """Why a condition does not hold for this request (None when it holds or there is none); raises
    InvalidEvent when it cannot be evaluated, as for a template that fails."""
    if source is None:
        return None
    try:
        ok, why = holds(source, ctx)
    except RenderError as exc:
        raise InvalidEvent(f"{t.notification_type} v{t.version}: {exc}") from exc
    return None if ok else f"condition not met: {why}"


def gate(request: NotificationRequested, state: RecipientState | None, catalog: Catalog) -> str | None:
    """Why the type's `condition` stops this request as a whole, or None. Digest requests pass: each
    item was checked when it was planned."""
    t = catalog.get(request.tenant_id, request.notification_type)
    rule = checked(request, catalog.rules(t)) if t is not None else None
    if t is None or rule is None or rule.notification is None:
        return None
    return unmet(rule.notification, t, context(request, t, state or RecipientState()))


def checked(request: NotificationRequested, rules: Rules) -> Conditions | None:
    """The conditions a request is checked against: none for a digest request, whose items were."""
    return rules.conditions if request.digest_of is None else None


def _after(step: EscalationStep | None) -> int:
    return 0 if step is None else step.after_seconds


def expiry(request: NotificationRequested, t: NotificationTypePublished) -> datetime | None:
    """When a request stops being worth sending: its own `expires_at`, else its type's `expires_after`
    from when it is due (its `scheduled_at`, else when it was requested). From the request alone, a
    type kept 30 minutes could not be scheduled further ahead: every scheduled send EXPIRED at once.
    An `expires_after` past the last date a datetime holds is no expiry: every request of such a type
    was REJECTED (date value out of range)."""
    if request.expires_at is not None or not t.expires_after_seconds:
        return request.expires_at
    due = max(request.occurred_at, request.scheduled_at or request.occurred_at)
    try:
        return due + timedelta(seconds=t.expires_after_seconds)
    except OverflowError:
        return None


def plan(
    request: NotificationRequested,
    recipient: RecipientState | None,
    catalog: Catalog,
    now: datetime,
    *,
    gated: bool = False,
    requested_at: datetime | None = None,
) -> Plan:
    """Raises InvalidEvent when the request cannot be planned at all (unknown type, template failure).
    `gated`: the caller already passed the request through `gate`, so its `condition` is not evaluated
    again. `requested_at`: when the request reached the log (its record's timestamp, the time the router
    orders its inputs by), recorded on the commands; the request's own `occurred_at` by default."""
    state = recipient or RecipientState()
    t = catalog.get(request.tenant_id, request.notification_type)
    if t is None:
        raise InvalidEvent(f"unknown notification type {request.notification_type!r}")
    result = Plan()
    nid = request.notification_id

    def outcome(
        status: OutcomeStatus,
        reason: str | None,
        channel: Channel | None = None,
        did: Any = None,
        detail: str | None = None,
    ) -> None:
        result.outcomes.append(
            DeliveryOutcome.decided(
                nid,
                status,
                reason,
                channel=channel,
                delivery_id=did,
                occurred_at=now,
                tenant_id=request.tenant_id,
                recipient_id=request.recipient_id,
                template_version=t.version,
                detail=detail,
            )
        )

    try:
        check_overrides(request.recipient_overrides)
    except ValueError as exc:
        raise InvalidEvent(str(exc)) from None
    expires_at = expiry(request, t)
    if expires_at is not None and expires_at <= now:
        outcome("EXPIRED", "expired")
        return result
    rules = catalog.rules(t)
    ctx = context(request, t, state)
    checks = checked(request, rules)
    if checks is not None and not gated and (why := unmet(checks.notification, t, ctx)):
        outcome("SKIPPED", "condition", detail=why)
        return result
    scheduled = request.scheduled_at if request.scheduled_at and request.scheduled_at > now else None
    if scheduled is not None and scheduled > now + MAX_SCHEDULE_AHEAD:
        raise InvalidEvent(
            f"scheduled_at {scheduled.isoformat()} is more than {MAX_SCHEDULE_AHEAD.days} days ahead"
        )
    digest: frozenset[str] = frozenset()
    if request.digest_of is not None:
        if rules.digest is None:
            raise InvalidEvent(f"{t.notification_type} v{t.version} has no digest templates")
        templates = rules.digest.templates
    else:
        templates = catalog.templates(t)
        if (
            rules.digest is not None
            and not t.critical
            and scheduled is None
            and digestible(request)
            and state.digest.get(t.category) != "off"
        ):
            digest = frozenset(rules.digest.templates)
    escalation = rules.escalation if request.digest_of is None else {}
    asked = request.priority or t.priority
    priority = "critical" if t.critical else ("high" if asked == "critical" else asked)
    locale = request.locale or state.locale
    candidates = [c for c in t.default_channels if request.channels is None or c in request.channels]
    candidates += [c for c in dict.fromkeys(request.channels or []) if c not in candidates]
    if not candidates:
        outcome("SKIPPED", "no_channel")
    released: list[datetime] = []
    """When each command of a channel that is not escalated goes out: an escalation counts from the
    first of them, so it backs up a notice the recipient had `after` to see."""
    ladder: datetime | None = None
    """With no such notice, when the escalation's first step that sends goes out (after quiet hours: an
    email step after a push held by them went out hours before it) less its `after`.
    A digested channel is a notice too, sent when its digest closes (types published before digests and
    escalations were exclusive): its escalation counts from the request, as it did."""
    for channel in sorted(candidates, key=lambda c: (c in escalation, _after(escalation.get(c)))):
        if channel not in templates:
            outcome("SKIPPED", "no_template", channel)
            continue
        if checks is not None and (why := unmet(checks.channels.get(channel), t, ctx)):
            outcome("SKIPPED", "condition", channel, detail=why)
            continue
        if why := opted_out(channel, t, state):
            outcome("SKIPPED", "opted_out", channel, detail=why)
            continue
        targets = addresses(channel, request, state, t)
        if not targets:
            outcome("SKIPPED", "no_address", channel)
            continue
        if channel in digest:
            result.digested.append(channel)
            continue
        try:
            rendered = render(templates[channel], locale, ctx)
            content = RenderedContent(**rendered.fields)
        except (RenderError, ValidationError) as exc:
            raise InvalidEvent(f"template {t.notification_type} v{t.version} {channel}: {exc}") from exc
        step = escalation.get(channel)
        deferrals = [(scheduled, "scheduled")]
        leads = step is not None and not released and not result.digested and ladder is None
        if step is not None and not leads:
            first = min(released) if released else ladder or scheduled or now
            if (escalate_at := first + timedelta(seconds=step.after_seconds)) > now:
                deferrals.append((escalate_at, "escalation"))
        not_before, reason = max(
            ((d, r) for d, r in deferrals if d is not None), default=(None, None), key=lambda x: x[0]
        )
        if channel in INTERRUPTING and not t.critical:
            quiet_end = quiet_until(state.quiet_hours, state.timezone, not_before or now)
            if quiet_end is not None:
                not_before, reason = quiet_end, "quiet_hours_deferred"
        for address, params in targets:
            did = delivery_id(nid, channel, address)
            suppression = state.suppressions.get(address_key(channel, address))
            if suppression is not None and (suppression.all_messages or not t.critical):
                outcome("SKIPPED", "suppressed", channel, did, detail=suppression.reason)
                continue
            if not_before is not None and expires_at is not None and not_before >= expires_at:
                outcome("EXPIRED", "expired", channel, did, detail=f"{reason} until after expiry")
                continue
            command = DeliveryCommand(
                event_id=command_id(did),
                occurred_at=now,
                tenant_id=request.tenant_id,
                correlation_id=str(nid),
                delivery_id=did,
                notification_id=nid,
                recipient_id=request.recipient_id,
                notification_type=t.notification_type,
                category=t.category,
                channel=channel,
                priority=priority,
                address=address,
                address_params=params,
                content=content,
                locale=rendered.locale,
                template_version=t.version,
                not_before=not_before,
                expires_at=expires_at,
                unless=step.unless if step else None,
                requested_at=requested_at or request.occurred_at,
            )
            if step is None:
                released.append(not_before or now)
            elif leads:
                ladder = (not_before or now) - timedelta(seconds=step.after_seconds)
            if not_before is not None:
                result.deferred.append(command)
                why = f"sent at {not_before.isoformat()} unless {step.unless} by then" if step else None
                outcome("DEFERRED", reason, channel, did, detail=why)
            else:
                result.commands.append(command)
                outcome("QUEUED", None, channel, did)
    return result
