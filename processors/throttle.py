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

`at` is the request's `occurred_at` (never later than the router's clock), so a backlog after an outage
is judged by when the requests were made, not by how fast the router catches up. Requests that arrive
out of order by more than a window are counted approximately: a time older than `at - window` is
forgotten when a later one is admitted.
"""

from __future__ import annotations

from datetime import datetime

from tidings.catalog import ThrottleRule


def admit(rule: ThrottleRule, times: list[int], at: datetime) -> tuple[bool, list[int]]:
    """Whether a request at `at` passes, and the epoch-ms times to keep: those still inside the window,
    plus `at` when it passes: never more than the limit that admitted them."""
    now_ms = int(at.timestamp() * 1000)
    recent = [t for t in times if now_ms - t < rule.window_seconds * 1000]
    if len(recent) >= rule.limit:
        return False, recent
    return True, [*recent, now_ms]
