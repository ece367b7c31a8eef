"""Webhook gateway throughput against the limit measured in the same run: a plain aiohttp client loop.

A receiver process (aiohttp, answering 204) runs on loopback. The ceiling is a plain aiohttp loop
posting the same JSON bodies with the same concurrency. The gateway consumes the same number of
delivery commands from Kafka and sends each through the full runner: Redis claim, SSRF check, Standard
Webhooks signing, outcome records, offset commits. Apprise's json:// notifier sends the same payloads
to the same receiver, sequentially, as its `notify()` does. Prints one JSON line.
Usage: python -m benchmarks.webhook --json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from typing import Any

import aiohttp
from aiohttp import web

from gateways.runner import GatewayRunner, GatewaySettings
from gateways.webhook.standard import StandardWebhook, WebhookSettings
from tidings import devstack
from tidings.config import Settings, settings
from tidings.events import DeliveryCommand, RenderedContent
from tidings.kafka import EventProducer, Output, apply_topics, delete_topics
from tidings.topics import names, registry

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def serve() -> None:
    async def ok(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=204)

    async def main() -> None:
        app = web.Application()
        app.router.add_post("/{tail:.*}", ok)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0, backlog=1024).start()
        print(runner.addresses[0][1], flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


def bodies(count: int) -> list[str]:
    return [json.dumps({"invoice": f"INV-{i:06d}", "amount": 12.5, "currency": "EUR"}) for i in range(count)]


async def plain_loop(url: str, payloads: list[str], concurrency: int) -> float:
    limit = asyncio.Semaphore(concurrency)

    async def post(session: aiohttp.ClientSession, body: str) -> None:
        async with (
            limit,
            session.post(url, data=body.encode(), headers={"content-type": "application/json"}) as r,
        ):
            await r.read()
            assert r.status == 204

    async with aiohttp.ClientSession() as session:
        started = time.monotonic()
        await asyncio.gather(*(post(session, body) for body in payloads))
        return len(payloads) / (time.monotonic() - started)


def gateway(base: Settings, url: str, payloads: list[str], concurrency: int) -> float:
    s = Settings(**(base.model_dump() | {"topic_prefix": f"benchw{uuid.uuid4().hex[:8]}.", "partitions": 3}))
    apply_topics(s, registry(s))
    n = names(s)
    with EventProducer(s) as producer:
        for i, body in enumerate(payloads):
            command = DeliveryCommand(
                tenant_id="acme",
                delivery_id=uuid.uuid4(),
                notification_id=uuid.uuid4(),
                recipient_id=f"user-{i % 500}",
                notification_type="invoice.due",
                channel="webhook",
                priority="normal",
                address=url,
                address_params={"secret": SECRET},
                content=RenderedContent(data_json=body),
            )
            producer.produce(Output.event(n.delivery("webhook"), command))

    async def run() -> GatewayRunner:
        provider = StandardWebhook(WebhookSettings(allow_cidrs="127.0.0.1/32"))
        runner = GatewayRunner(s, "webhook", [provider], GatewaySettings(concurrency=concurrency))
        await runner.run(idle_exit_after=2)
        return runner

    try:
        runner = asyncio.run(run())
    finally:
        delete_topics(s, s.topic_prefix)
    assert runner.counts.get("sent") == len(payloads), runner.counts
    assert runner.first_batch_at is not None and runner.last_commit_at is not None
    return len(payloads) / (runner.last_commit_at - runner.first_batch_at)


def apprise_loop(url: str, payloads: list[str]) -> float:
    import apprise

    notifier = apprise.Apprise()
    notifier.add(url.replace("http://", "json://"))
    started = time.monotonic()
    for body in payloads:
        assert notifier.notify(body=body, title="invoice.due")
    return len(payloads) / (time.monotonic() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sends", type=int, default=5000)
    parser.add_argument("--apprise-sends", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="Print one JSON line (the default output).")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve()
        return 0
    base = settings()
    devstack.up(base)
    receiver = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.webhook", "--serve"],
        stdout=subprocess.PIPE,
        text=True,
        env=os.environ,
    )
    try:
        assert receiver.stdout is not None
        url = f"http://127.0.0.1:{int(receiver.stdout.readline())}/hooks"
        payloads = bodies(args.sends)
        plains, gateways = [], []
        for _ in range(args.runs):
            plains.append(asyncio.run(plain_loop(url, payloads, args.concurrency)))
            gateways.append(gateway(base, url, payloads, args.concurrency))
        appr = apprise_loop(url, payloads[: args.apprise_sends])
    finally:
        receiver.terminate()
        receiver.wait()
    result: dict[str, Any] = {
        "benchmark": "webhook",
        "sends": args.sends,
        "concurrency": args.concurrency,
        "runs": args.runs,
        "gateway_sends_per_s": round(statistics.median(gateways)),
        "plain_loop_sends_per_s": round(statistics.median(plains)),
        "ratio": round(statistics.median(g / p for g, p in zip(gateways, plains, strict=True)), 3),
        "apprise_sends_per_s": round(appr),
        "apprise_ratio": round(appr / statistics.median(plains), 3),
        "gateway_vs_apprise": round(statistics.median(gateways) / appr, 1),
        "gateway_runs": [round(x) for x in gateways],
        "plain_runs": [round(x) for x in plains],
        "target_ratio": 0.7,
    }
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
