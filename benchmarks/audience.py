"""Broadcast expansion against the limit measured in the same run: producing the same request bytes.

The audience processor expands one broadcast to every member of an audience into requests on
notifications.requested. The limit is the same transactional loop producing the same records, already
encoded, in transactions of the same size (`MAX_PER_TICK`), so the ratio is the cost of the expansion
itself (member lookup, ids, model, Avro encoding) over the cost of committing its output exactly once.
Prints one JSON line. Usage: python -m benchmarks.audience --json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from benchmarks.router import topology
from processors import audience
from processors.audience import Audience
from processors.members import member_request, request_template
from tidings import devstack
from tidings.catalog import load
from tidings.client import Client
from tidings.config import Settings, settings
from tidings.events import BroadcastRequested
from tidings.kafka import Output, TransactionalLoop, delete_topics
from tidings.topics import names

ROOT = Path(__file__).resolve().parents[1]
DATA = {"title": "Dark mode is here", "body": "Try it in your settings."}


def prepare(s: Settings, members: int) -> BroadcastRequested:
    with Client(s, source="bench") as client:
        for t in load(ROOT / "catalog"):
            client.publish(t, wait=False)
        client.add_members(tenant="acme", audience="all", recipients=[f"user-{i}" for i in range(members)])
    return BroadcastRequested(
        tenant_id="acme",
        audience_id="all",
        broadcast_id=uuid.uuid4(),
        notification_type="product.announcement",
        data_json=json.dumps(DATA),
    )


def run_audience(s: Settings, broadcast: BroadcastRequested) -> tuple[float, int]:
    """Requests/s from reading the broadcast to committing its last slice (membership loaded before)."""
    group = f"audience-{uuid.uuid4().hex[:6]}"
    Audience(s, instance=uuid.uuid4().hex[:6], group_id=group).run(idle_exit_after=2)
    with Client(s, source="bench") as client:
        client.publish(broadcast)
    proc = Audience(s, instance=uuid.uuid4().hex[:6], group_id=group)
    marks: list[float] = []
    advance = proc.expander.advance_all

    def timed() -> list[Output]:
        outputs = advance()
        if outputs:
            marks.append(time.monotonic())
        return outputs

    proc.loop.punctuate = timed
    proc.run(idle_exit_after=2)
    assert proc.loop.first_batch_at is not None and marks
    made = proc.expander.requests_made
    return made / (marks[-1] - proc.loop.first_batch_at), made


def run_limit(s: Settings, broadcast: BroadcastRequested, members: int) -> float:
    """The same records, encoded beforehand, committed by the same loop in transactions of the same size."""
    n = names(s)
    template = request_template(broadcast)
    outputs = [Output.event(n.requested, member_request(template, f"user-{i}")) for i in range(members)]
    sent = 0
    marks: list[float] = []

    def produce() -> list[Output]:
        nonlocal sent
        if not marks:
            marks.append(time.monotonic())
        chunk = outputs[sent : sent + audience.MAX_PER_TICK]
        sent += len(chunk)
        if chunk:
            marks.append(time.monotonic())
        return chunk

    loop = TransactionalLoop(
        s,
        group_id=f"limit-{uuid.uuid4().hex[:6]}",
        topics=[n.broadcasts],
        handle=lambda record: [],
        transactional_id=f"limit-{uuid.uuid4().hex[:6]}",
        punctuate=produce,
        pending=lambda: sent < len(outputs),
        eager=lambda: sent < len(outputs),
    )
    loop.run(idle_exit_after=2)
    return members / (marks[-1] - marks[0])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--members", type=int, default=50_000)
    parser.add_argument("--partitions", type=int, default=3)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="Print one JSON line (the default output).")
    args = parser.parse_args(argv)
    base = settings()
    devstack.up(base)
    expansions, limits = [], []
    for _ in range(args.runs):
        s = topology(base, args.partitions)
        try:
            broadcast = prepare(s, args.members)
            limits.append(run_limit(s, broadcast, args.members))
            rate, made = run_audience(s, broadcast)
            assert made == args.members, f"expanded {made} of {args.members}"
            expansions.append(rate)
        finally:
            delete_topics(s, s.topic_prefix)
    result: dict[str, Any] = {
        "benchmark": "audience",
        "members": args.members,
        "partitions": args.partitions,
        "runs": args.runs,
        "expansion_requests_per_s": round(statistics.median(expansions)),
        "limit_requests_per_s": round(statistics.median(limits)),
        "ratio": round(statistics.median(e / c for e, c in zip(expansions, limits, strict=True)), 3),
        "expansion_runs": [round(x) for x in expansions],
        "limit_runs": [round(x) for x in limits],
    }
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
