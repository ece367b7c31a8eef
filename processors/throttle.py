"""Consumes a request with the times of the recipient's recent notifications of its type or category;
produces whether it may pass and the times to keep.

A catalog type's `throttle = { limit = 3, window = "1h" }` lets at most `limit` notifications of the
type reach one recipient in any `window` (a sliding window, not calendar buckets: a burst at 10:59 and
another at 11:01 do not both pass). With `per = "category"` every type of the category that has the
same rule counts against one budget, a frequency cap ("at most 2 marketing messages a day").

A request over the limit is SKIPPED (`throttled`) as a whole, before its channels are resolved; one that
passes counts even if every channel is then skipped for other reasons, so a recipient's mute does not
reopen the budget. Critical types may be throttled too: the rule is the catalog author's explicit
choice, and a capped password-reset code is the usual reason. Digests the router assembles are not
throttled (their items were). Pure: `admit(rule, times, at)`; the router keeps `times` in its
`throttles` store.

`at` is when the request is due: its `scheduled_at`, else its `occurred_at` (never later than the
router's clock), so a backlog after an outage is judged by when the requests were made, not by how fast
the router catches up, and a request scheduled for Monday 09:00 counts on Monday, against what else
reaches the recipient then (counted when made, it let a request on Monday 09:01 through beside it, and
refused one scheduled a week after it). A quiet-hours deferral is decided after the throttle and is not
counted: requests admitted over a night can arrive together when it ends. Times are kept until the
clock (`now`) is two windows past them, scheduled ones included, so a request that arrives up to a
window late is judged against every time it could share a window with (kept for one window, a request
half a window late passed beside two already admitted, over a limit of 2). Requests out of order by
more than a window are counted approximately.
"""

from __future__ import annotations

from datetime import datetime

from tidings.catalog import ThrottleRule

MAX_TIMES = 10_000
"""The most times one throttle key keeps: a request that would keep more is refused, as over the rule.
Times ahead are kept until they pass, and requests scheduled one window apart over 400 days were each
admitted: the list grew past what a changelog record holds (2 MB, about 130,000 times), and the
router stopped on the request that took it over at every restart. 10,000 is about 150 KB."""


def due(occurred_at: datetime, scheduled_at: datetime | None, now: datetime) -> datetime:
    """When a request counts (`at` above): its `scheduled_at`, else its `occurred_at`, never later than
    the router's clock. A producer whose clock ran ahead was counted in the future, taking budget from
    the requests really made then."""
    made = min(occurred_at, now)
    return max(made, scheduled_at or made)


def admit(
    rule: ThrottleRule, times: list[int], at: datetime, now: datetime | None = None
) -> tuple[bool, list[int]]:
    """Whether a request due at `at` passes: no window of the rule's length holding `at` holds `limit`
    kept times already. Returns the epoch-ms times to keep (those that can still share a window with
    a request up to a window late, plus `at` when it passes)."""
    at_ms = _ms(at)
    span = rule.window_seconds * 1000
    horizon = min(at_ms, _ms(now) if now is not None else at_ms) - 2 * span
    kept = [t for t in times if t > horizon]
    near = [t for t in kept if abs(t - at_ms) < span]
    starts = {at_ms, *(t for t in near if t <= at_ms), *(t - span + 1 for t in near if t > at_ms)}
    busiest = max(sum(1 for t in near if s <= t < s + span) for s in starts)
    if busiest >= rule.limit or len(kept) >= MAX_TIMES:
        return False, kept
    return True, [*kept, at_ms]


def _ms(at: datetime) -> int:
    return int(at.timestamp() * 1000)
