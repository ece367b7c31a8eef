"""The analytics report's folding of query rows and its window rules."""

from datetime import UTC, datetime, timedelta

import pytest

from tidings.stats import parameters, report

T = datetime(2026, 11, 26, tzinfo=UTC)


def test_rows_fold_into_types_channels_rates_and_reasons() -> None:
    rows = {
        "statuses": [
            {"type": "a", "status": "SENT", "count": 3},
            {"type": "a", "status": "REQUESTED", "count": 1},
        ],
        "channels": [
            {"type": "a", "channel": "email", "status": "SENT", "reason": "", "count": 2},
            {"type": "a", "channel": "email", "status": "DELIVERED", "reason": "delivered", "count": 1},
            {"type": "a", "channel": "email", "status": "FAILED", "reason": "bounced", "count": 1},
            {"type": "a", "channel": "email", "status": "SKIPPED", "reason": "opted_out", "count": 5},
            {"type": "a", "channel": "email", "status": "QUEUED", "reason": "", "count": 7},
            {"type": "a", "channel": "email", "status": "CANCELLED", "reason": "returned", "count": 2},
            {"type": "a", "channel": "push", "status": "SKIPPED", "reason": "no_address", "count": 4},
        ],
        "latency": [{"type": "a", "channel": "email", "p50": 1200.4, "p95": 9000.6, "count": 3}],
        "engagement": [{"type": "a", "seen": 2, "read": 1}],
    }
    [(key, a)] = report(rows).items()
    assert key == "a" and a["notifications"] == 4 and a["status"] == {"SENT": 3, "REQUESTED": 1}
    email, push = a["channels"]["email"], a["channels"]["push"]
    assert email["deliveries"] == 18
    assert email["rate"] == 0.75, "SENT and DELIVERED of those that ended; decisions and pending left out"
    assert email["reasons"] == {"CANCELLED returned": 2, "FAILED bounced": 1, "SKIPPED opted_out": 5}
    assert email["time_to_send_ms"] == {"p50": 1200, "p95": 9001}
    assert push["rate"] is None and push["time_to_send_ms"] is None
    assert a["engagement"] == {"seen": 2, "read": 1}
    assert report({"statuses": [], "channels": [], "latency": [], "engagement": []}) == {}


@pytest.mark.parametrize(
    ("since", "until", "message"),
    [
        (T, T, "before"),
        (T, T - timedelta(hours=1), "before"),
        (T - timedelta(days=32), T, "31 days"),
        (T.replace(tzinfo=None), T, "time zone"),
    ],
)
def test_windows_must_be_ordered_bounded_and_zoned(since: datetime, until: datetime, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parameters("acme", since, until, None)
    assert parameters("acme", T - timedelta(days=31), T, "x")["type"] == "x"
