"""Consumes a recipient's state and a notification type; produces whether a channel is wanted and when
(`opted_out`, `quiet_until`), for `processors.plan`. The precedence is in that module's docstring."""

from __future__ import annotations

from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from processors.recipients import RecipientState, rule_key
from tidings.events import NotificationTypePublished, QuietHours

UTC_ZONE = ZoneInfo("UTC")


def zone(name: str | None) -> ZoneInfo:
    try:
        return ZoneInfo(name) if name else UTC_ZONE
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return UTC_ZONE


def quiet_until(quiet: QuietHours | None, tz_name: str | None, now: datetime) -> datetime | None:
    """The UTC instant the recipient's quiet hours end, if `now` falls inside them (DST-correct)."""
    if quiet is None or quiet.start == quiet.end:
        return None
    tz = zone(quiet.timezone or tz_name)
    local = now.astimezone(tz)
    start, end = time.fromisoformat(quiet.start), time.fromisoformat(quiet.end)
    t = local.time().replace(tzinfo=None)
    if start < end:
        inside, end_date = start <= t < end, local.date()
    else:
        inside = t >= start or t < end
        end_date = local.date() if t < end else local.date() + timedelta(days=1)
    if not inside:
        return None
    wall = datetime.combine(end_date, end)
    release = wall.replace(tzinfo=tz).astimezone(UTC_ZONE)
    if release.astimezone(tz).replace(tzinfo=None) != wall:
        release = _gap_end(wall.replace(tzinfo=tz, fold=1).astimezone(UTC_ZONE), release, tz, wall)
    elif release <= now:  # inside the repeated hour of a DST fall-back: the end is its second occurrence
        release = wall.replace(tzinfo=tz, fold=1).astimezone(UTC_ZONE)
    return release


def _gap_end(before: datetime, after: datetime, tz: ZoneInfo, wall: datetime) -> datetime:
    """The first instant after a DST gap holding the wall time `wall`, between the instants `before`
    and `after` that wall time names by the offsets on either side. Python reads a time in the gap by
    the offset before it, which ended quiet hours that end at 02:30 at 03:30, half an hour late."""
    lo, hi = int(before.timestamp()), int(after.timestamp())
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if datetime.fromtimestamp(mid, tz).replace(tzinfo=None) > wall:
            hi = mid
        else:
            lo = mid
    return datetime.fromtimestamp(hi, UTC_ZONE)


def opted_out(channel: str, t: NotificationTypePublished, state: RecipientState) -> str | None:
    """Why the recipient does not want this channel for this type, or None."""
    if t.critical:
        return None
    if state.muted:
        return "global mute"
    unsubscribed = state.unsubscribed_categories.get(f"{t.category}/{channel}")
    for scope, key in (("type", t.notification_type), ("category", t.category)):
        for ch in (channel, None):
            decision = state.rule(scope, key, ch)
            if decision is None:
                continue
            if not decision:
                return f"{scope} {key} off for {ch or 'every channel'}"
            if unsubscribed is None or _opted_in_since(unsubscribed, channel, t, state):
                return None
            return f"unsubscribed from {t.category} {channel}"
    if unsubscribed is not None:
        return f"unsubscribed from {t.category} {channel}"
    return None


def _opted_in_since(
    unsubscribed: datetime, channel: str, t: NotificationTypePublished, state: RecipientState
) -> bool:
    """Whether a rule that lets this type through on this channel was turned on after the unsubscribe:
    the most specific rule decides whether it is off, but any of them turned on later is the newer
    consent. Only the first one found was weighed: a type rule for email from before an unsubscribe
    outweighed the same type turned on for every channel after it."""
    return any(
        changed >= unsubscribed
        for scope, key in (("type", t.notification_type), ("category", t.category))
        for ch in (channel, None)
        if state.rule(scope, key, ch)
        and (changed := state.rules_at.get(rule_key(scope, key, ch))) is not None
    )
