"""Router throughput against the limit measured in the same run: a plain exactly-once copy loop.

Both read the same request bytes from topics with the same partition count on the same broker, with
the same transactional loop, batch size and isolation level. The copy loop forwards each record
unchanged; the router decodes, dedupes, folds recipient state, plans, renders and produces commands,
outcomes and changelog writes. Prints one JSON line. Usage: python -m benchmarks.router --json
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import uuid
from pathlib import Path
from typing import Any

from processors.router import Router
from tidings import devstack
from tidings.catalog import load
from tidings.client import Client
from tidings.config import Settings, settings
from tidings.events import DeviceRegistered, NotificationRequested, RecipientUpdated
from tidings.ids import new_notification_id
from tidings.kafka import EventProducer, Incoming, Output, TransactionalLoop, apply_topics, delete_topics
from tidings.topics import TopicSpec, names, registry

ROOT = Path(__file__).resolve().parents[1]


def topology(base: Settings, partitions: int) -> Settings:
    s = Settings(
        **(
            base.model_dump()
            | {
                "topic_prefix": f"bench{uuid.uuid4().hex[:8]}.",
                "partitions": partitions,
                "retry_tiers": "10s",
            }
        )
    )
    specs = registry(s)
    specs += [
        TopicSpec(s.topic_prefix + name, "k", (), partitions=partitions) for name in ("copy.in", "copy.out")
    ]
    apply_topics(s, specs)
    return s


def load_inputs(s: Settings, requests: int, recipients: int) -> list[bytes]:
    rng = random.Random(1)
    n = names(s)
    with Client(s) as client:
        for t in load(ROOT / "catalog"):
            client.publish(t, wait=False)
        for i in range(recipients):
            r = f"user-{i}"
            client.publish(
                RecipientUpdated(
                    tenant_id="acme",
                    recipient_id=r,
                    email=f"{r}@example.com",
                    phone=f"+49151{1000000 + i}",
                    locale=rng.choice(["de-AT", "en"]),
                ),
                wait=False,
            )
            client.publish(
                DeviceRegistered(
                    tenant_id="acme", recipient_id=r, device_id="d", platform="fcm", token=f"tok-{i}"
                ),
                wait=False,
            )
        client.flush()
    data = {"order": "A-1001", "carrier": "DHL"}
    values = []
    with EventProducer(s) as producer:
        for _ in range(requests):
            r = f"user-{rng.randrange(recipients)}"
            event = NotificationRequested(
                tenant_id="acme",
                notification_id=new_notification_id(),
                recipient_id=r,
                notification_type="order.shipped",
                data_json=json.dumps(data),
            )
            out = Output.event(n.requested, event)
            values.append(out.value or b"")
            producer.produce(out)
            producer.produce(Output(s.topic_prefix + "copy.in", out.key, out.value, out.headers))
    return values


def rate(loop: TransactionalLoop) -> float:
    assert loop.first_batch_at is not None and loop.last_commit_at is not None
    return loop.committed_records / (loop.last_commit_at - loop.first_batch_at)


def run_copy(s: Settings) -> float:
    out_topic = s.topic_prefix + "copy.out"

    def copy(record: Incoming) -> list[Output]:
        return [Output(out_topic, record.key, record.value, record.headers)]

    loop = TransactionalLoop(
        s,
        group_id=f"copy-{uuid.uuid4().hex[:6]}",
        topics=[s.topic_prefix + "copy.in"],
        handle=copy,
        transactional_id=f"copy-{uuid.uuid4().hex[:6]}",
    )
    loop.run(idle_exit_after=3)
    return rate(loop)


def run_router(s: Settings) -> tuple[float, int]:
    router = Router(s, instance=uuid.uuid4().hex[:6], group_id=f"router-{uuid.uuid4().hex[:6]}")
    router.run(idle_exit_after=3)
    requests = router.loop.committed_records
    return rate(router.loop), requests


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--recipients", type=int, default=200)
    parser.add_argument("--partitions", type=int, default=3)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="Print one JSON line (the default output).")
    args = parser.parse_args(argv)
    base = settings()
    devstack.up(base)
    routers, copies = [], []
    for _ in range(args.runs):
        s = topology(base, args.partitions)
        try:
            values = load_inputs(s, args.requests, args.recipients)
            copies.append(run_copy(s))
            router_rate, _ = run_router(s)
            routers.append(router_rate)
        finally:
            delete_topics(s, s.topic_prefix)
    result: dict[str, Any] = {
        "benchmark": "router",
        "requests": args.requests,
        "recipients": args.recipients,
        "partitions": args.partitions,
        "runs": args.runs,
        "request_bytes_median": int(statistics.median(len(v) for v in values)),
        "router_records_per_s": round(statistics.median(routers)),
        "copy_loop_records_per_s": round(statistics.median(copies)),
        "ratio": round(statistics.median(r / c for r, c in zip(routers, copies, strict=True)), 3),
        "router_runs": [round(x) for x in routers],
        "copy_runs": [round(x) for x in copies],
        "target_ratio": 0.6,
    }
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
