"""Delivery-status projection throughput against the limit measured in the same run: a raw COPY.

The projection consumes DeliveryOutcome events from Kafka and writes the timeline, the delivery rows
and the notification summaries plus its offsets, in one PostgreSQL transaction per batch. The limit is
a raw COPY of the same timeline rows into an unindexed copy of `delivery_events` in the same database.
Prints one JSON line. Usage: python -m benchmarks.projection --json
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
import uuid
from typing import Any

import psycopg

from projections import Projection, Runner
from projections.db import migrate
from tidings import devstack
from tidings.config import Settings, settings
from tidings.events import DeliveryOutcome
from tidings.ids import delivery_id, new_notification_id
from tidings.kafka import EventProducer, Output, apply_topics, delete_topics
from tidings.topics import names, registry
from tidings.vocabulary import Channel, OutcomeStatus

FLOW: list[OutcomeStatus] = ["QUEUED", "SENT", "DELIVERED"]
CHANNELS: list[Channel] = ["email", "push", "in_app"]


def environment(base: Settings, partitions: int) -> Settings:
    prefix = f"benchp{uuid.uuid4().hex[:8]}."
    db = prefix.replace(".", "")
    with psycopg.connect(base.postgres_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {db}".encode())
    s = Settings(
        **(
            base.model_dump()
            | {
                "topic_prefix": prefix,
                "partitions": partitions,
                "retry_tiers": "10s",
                "postgres_dsn": base.postgres_dsn.rsplit("/", 1)[0] + "/" + db,
            }
        )
    )
    n = names(s)
    apply_topics(s, [spec for spec in registry(s) if spec.name in (n.requested, n.outcomes, n.dlq)])
    migrate(s.postgres_dsn)
    return s


def cleanup(base: Settings, s: Settings) -> None:
    """Drop the run's topics and database, so repeated runs do not pile partitions up on the broker."""
    delete_topics(base, s.topic_prefix)
    with psycopg.connect(base.postgres_dsn, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {s.postgres_dsn.rsplit('/', 1)[1]} WITH (FORCE)".encode())


def outcomes(count: int) -> list[DeliveryOutcome]:
    rng = random.Random(5)
    events: list[DeliveryOutcome] = []
    while len(events) < count:
        nid = new_notification_id()
        for channel in rng.sample(CHANNELS, 2):
            did = delivery_id(nid, channel, "x")
            for status in FLOW[: rng.randint(1, 3)]:
                events.append(
                    DeliveryOutcome(
                        tenant_id="acme",
                        notification_id=nid,
                        delivery_id=did,
                        recipient_id="u1",
                        channel=channel,
                        status=status,
                        provider="bench" if status != "QUEUED" else None,
                        attempt=1,
                    )
                )
    return events[:count]


def copy_rate(s: Settings, events: list[DeliveryOutcome]) -> float:
    rows = [
        (
            o.event_id,
            o.notification_id,
            o.delivery_id,
            o.tenant_id,
            o.channel,
            o.status,
            o.reason,
            o.provider,
            o.attempt,
            o.template_version,
            o.detail,
            o.occurred_at,
        )
        for o in events
    ]
    with psycopg.connect(s.postgres_dsn) as conn:
        conn.execute("CREATE TABLE raw_events (LIKE delivery_events)")
        started = time.perf_counter()
        with conn.cursor() as cur, cur.copy("COPY raw_events FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        conn.commit()
        return len(rows) / (time.perf_counter() - started)


def projection_rate(s: Settings) -> float:
    runner = Runner(s, Projection.registry["delivery_status"]())
    loop = runner.run(idle_exit_after=3)
    runner.close()
    assert loop.first_batch_at is not None and loop.last_batch_at is not None
    return loop.handled / (loop.last_batch_at - loop.first_batch_at)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--partitions", type=int, default=3)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="Print one JSON line (the default output).")
    args = parser.parse_args(argv)
    base = settings()
    devstack.up(base)
    projected, copied = [], []
    for _ in range(args.runs):
        s = environment(base, args.partitions)
        events = outcomes(args.events)
        with EventProducer(s) as producer:
            for e in events:
                producer.produce(Output.event(names(s).outcomes, e))
        try:
            projected.append(projection_rate(s))
            copied.append(copy_rate(s, events))
        finally:
            cleanup(base, s)
    result: dict[str, Any] = {
        "benchmark": "projection.delivery_status",
        "events": args.events,
        "partitions": args.partitions,
        "runs": args.runs,
        "projection_events_per_s": round(statistics.median(projected)),
        "raw_copy_rows_per_s": round(statistics.median(copied)),
        "ratio": round(statistics.median(p / c for p, c in zip(projected, copied, strict=True)), 3),
        "projection_runs": [round(x) for x in projected],
        "copy_runs": [round(x) for x in copied],
        "target_ratio": 0.5,
        "target_events_per_s": 20_000,
    }
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
