"""The scheduler's punctuation with many pending timers, against the full scan it replaced, in one run.

Every 200 ms the scheduler asks each partition for its due timers. `Timers.due` takes them from a heap
beside the store (`tidings.state.DueKeys`); before, it sorted every key of the store and looked each up.
This measures, on one in-memory partition holding `--timers` pending commands (each with its
notification index entry, as in the scheduler): the punctuation when nothing is due, when `--due` timers
are due, and a step of an erasure walk (`SWEEP_BUDGET` timers; the first sorts a snapshot of the keys),
each the median of `--runs`; and the full sorted scan of the same store, measured in the same run. No
broker is needed. Prints one JSON line. Usage: python -m benchmarks.timers --json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from processors.scheduler import SWEEP_BUDGET
from processors.timers import Timers
from tidings.codec import default_codec
from tidings.events import DeliveryCommand, RenderedContent
from tidings.state import Store, due_bound

EPOCH = datetime(2026, 11, 25, tzinfo=UTC)


def pending(count: int) -> Timers:
    codec = default_codec()
    store: Store[bytes] = Store("bench", encode=bytes, decode=bytes)
    store.restore(0, [])
    timers = Timers(store, codec)
    for i in range(count):
        command = DeliveryCommand(
            tenant_id="acme",
            delivery_id=uuid.uuid4(),
            notification_id=uuid.uuid4(),
            recipient_id=f"r{i % 5000}",
            notification_type="order.shipped",
            channel="push",
            priority="normal",
            address=f"token-{i}",
            content=RenderedContent(title="Shipped", body="Your order is on its way."),
            not_before=EPOCH + timedelta(seconds=i),
        )
        timers.add(0, command, codec.encode(command))
    store.record_done()
    store.committed()
    return timers


def median_ms(runs: int, work: Callable[[], object], after: Callable[[], object] = lambda: None) -> float:
    took = []
    for _ in range(runs):
        started = time.perf_counter()
        work()
        took.append(time.perf_counter() - started)
        after()
    return statistics.median(took) * 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--timers", type=int, default=100_000)
    parser.add_argument("--due", type=int, default=100)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--json", action="store_true", help="Print one JSON line (the default output).")
    args = parser.parse_args(argv)
    timers = pending(args.timers)
    store = timers.store
    before = int((EPOCH - timedelta(seconds=1)).timestamp() * 1000)
    some_due = int((EPOCH + timedelta(seconds=args.due - 1)).timestamp() * 1000)
    timers.due(0, before)
    scan = median_ms(args.runs, lambda: [k for k in store.keys(0) if k <= due_bound(before)])
    idle = median_ms(args.runs, lambda: timers.due(0, before))
    taken: list[DeliveryCommand] = []

    def put_back() -> None:
        for command in taken:
            timers.add(0, command, default_codec().encode(command))
        store.record_done()
        store.committed()
        taken.clear()

    due = median_ms(args.runs, lambda: taken.extend(timers.due(0, some_due)), put_back)
    erased = lambda c: c.recipient_id == "r0"  # noqa: E731
    first = median_ms(args.runs, lambda: timers.sweep(0, "", SWEEP_BUDGET, erased), store.aborted)
    _, resume = timers.sweep(0, "", SWEEP_BUDGET, erased)
    store.committed()
    step = median_ms(args.runs, lambda: timers.sweep(0, resume or "", SWEEP_BUDGET, erased), store.committed)
    result: dict[str, Any] = {
        "benchmark": "timers",
        "pending_timers": args.timers,
        "runs": args.runs,
        "punctuation_nothing_due_ms": round(idle, 4),
        f"punctuation_{args.due}_due_ms": round(due, 3),
        "erasure_walk_first_step_ms": round(first, 2),
        "erasure_walk_next_step_ms": round(step, 2),
        "full_scan_ms": round(scan, 2),
        "full_scan_over_nothing_due": round(scan / idle) if idle else None,
    }
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
