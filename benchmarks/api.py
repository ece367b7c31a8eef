"""HTTP ingest throughput against the limit measured in the same run: producing the same requests
straight to Kafka.

The edge runs as its own process (`tidings run edge` with an API key). A client posts `--requests`
notifications to `POST /v1/notifications`, `--concurrency` at a time; each answer waits for Kafka's
acknowledgement (acks=all). The ceiling is the same number of NotificationRequested events produced
by an asyncio producer in this process with the same concurrency, each awaited until acknowledged:
what a service with a Kafka client gets without the API. Prints one JSON line.
Usage: python -m benchmarks.api --json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp

from tidings import devstack
from tidings.client import notification_request
from tidings.config import Settings, settings
from tidings.kafka import Output, apply_topics, delete_topics
from tidings.kafka.aio import AsyncProducer
from tidings.topics import names, registry

KEY = "bench-api-key-0123456789abcdef"
TIDINGS = str(Path(sys.executable).with_name("tidings"))


def body(i: int) -> dict[str, Any]:
    return {
        "recipient": f"user-{i % 500}",
        "type": "order.shipped",
        "data": {"order": f"A-{i}", "carrier": "DHL"},
    }


async def bounded(count: int, concurrency: int, one: Any) -> float:
    """Seconds to run `one(i)` for every i, `concurrency` at a time."""
    limit = asyncio.Semaphore(concurrency)

    async def run(i: int) -> None:
        async with limit:
            await one(i)

    started = time.monotonic()
    await asyncio.gather(*(run(i) for i in range(count)))
    return time.monotonic() - started


async def direct(s: Settings, count: int, concurrency: int) -> float:
    producer = AsyncProducer(s)
    await producer.start()
    topic = names(s).requested
    try:

        async def one(i: int) -> None:
            event = notification_request(tenant="acme", **body(i))
            await producer.deliver(Output.event(topic, event))

        return count / await bounded(count, concurrency, one)
    finally:
        await producer.stop()


async def over_http(url: str, count: int, concurrency: int) -> float:
    headers = {"Authorization": f"Bearer {KEY}"}
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as http:

        async def one(i: int) -> None:
            async with http.post(url, json=body(i)) as r:
                assert r.status == 202, await r.text()

        return count / await bounded(count, concurrency, one)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_edge(s: Settings, port: int) -> subprocess.Popen[bytes]:
    env = os.environ | {
        "TIDINGS_KAFKA_BOOTSTRAP": s.kafka_bootstrap,
        "TIDINGS_TOPIC_PREFIX": s.topic_prefix,
        "TIDINGS_EDGE_API_KEYS": f"acme:{KEY}",
    }
    edge = subprocess.Popen([TIDINGS, "run", "edge", "--port", str(port)], env=env, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return edge
        except OSError:
            time.sleep(0.2)
    edge.kill()
    raise RuntimeError("the edge did not start")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="Print one JSON line (the default output).")
    args = parser.parse_args(argv)
    base = settings()
    devstack.up(base)
    s = Settings(**(base.model_dump() | {"topic_prefix": f"bencha{uuid.uuid4().hex[:8]}.", "partitions": 3}))
    apply_topics(s, registry(s))
    port = free_port()
    edge = start_edge(s, port)
    http_runs, direct_runs = [], []
    try:
        url = f"http://127.0.0.1:{port}/v1/notifications"
        for _ in range(args.runs):
            direct_runs.append(asyncio.run(direct(s, args.requests, args.concurrency)))
            http_runs.append(asyncio.run(over_http(url, args.requests, args.concurrency)))
    finally:
        edge.terminate()
        edge.wait(timeout=30)
        delete_topics(s, s.topic_prefix)
    result = {
        "benchmark": "api",
        "requests": args.requests,
        "concurrency": args.concurrency,
        "runs": args.runs,
        "api_requests_per_s": round(statistics.median(http_runs)),
        "direct_produce_per_s": round(statistics.median(direct_runs)),
        "ratio": round(statistics.median(h / d for h, d in zip(http_runs, direct_runs, strict=True)), 3),
        "api_runs": [round(x) for x in http_runs],
        "direct_runs": [round(x) for x in direct_runs],
    }
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
