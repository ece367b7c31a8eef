"""Runner behaviour on the real stack: circuits pause consumption, cluster-wide rate limits, webhook
endpoints disabled after sustained failure, and a graceful stop that commits what it sent."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis.asyncio
from aiohttp import web

from gateways.marks import mark_ref
from gateways.runner import GatewayRunner, GatewaySettings
from gateways.webhook.standard import StandardWebhook, WebhookSettings
from tests.integration.conftest import read_all
from tests.integration.test_sms_opt_outs import Freezer
from tests.servers.webhook import SECRET
from tidings.audit import replay_dead_letter
from tidings.codec import default_codec
from tidings.config import Settings
from tidings.events import DeliveryCommand, DeliveryOutcome, ProviderFeedback, RenderedContent
from tidings.kafka import EventProducer, Output
from tidings.kafka.aio import AsyncConsumer
from tidings.kafka.records import header_map
from tidings.topics import names

Handler = Callable[[web.Request], Awaitable[web.Response]]


def commands(url: str, count: int) -> list[DeliveryCommand]:
    return [
        DeliveryCommand(
            tenant_id="acme",
            delivery_id=uuid.uuid4(),
            notification_id=uuid.uuid4(),
            recipient_id=f"u{i % 7}",
            notification_type="invoice.due",
            channel="webhook",
            priority="normal",
            address=url,
            address_params={"secret": SECRET},
            content=RenderedContent(data_json=f'{{"i": {i}}}'),
        )
        for i in range(count)
    ]


def produce(s: Settings, batch: list[DeliveryCommand]) -> None:
    with EventProducer(s) as producer:
        for c in batch:
            producer.produce(Output.event(names(s).delivery("webhook"), c))


def runner(s: Settings, **config: Any) -> GatewayRunner:
    provider = StandardWebhook(WebhookSettings(allow_cidrs="127.0.0.1/32", read_timeout=2))
    rates = config.pop("rates", None)
    return GatewayRunner(s, "webhook", [provider], GatewaySettings(**config), rates=rates)


def accepting(bodies: list[bytes]) -> Handler:
    """A receiver that keeps each body and answers 204."""

    async def handler(request: web.Request) -> web.Response:
        bodies.append(await request.read())
        return web.Response(status=204)

    return handler


def produce_due(s: Settings, topic: str, command: DeliveryCommand, due: bytes) -> None:
    """A retry record as a gateway writes it, with the `tidings.due` header given."""
    from gateways.outputs import DUE

    out = Output.event(topic, command)
    with EventProducer(s) as producer:
        producer.produce(Output(out.topic, out.key, out.value, [*out.headers, (DUE, due)]))


async def serve(handler: Handler) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.router.add_post("/{name}", handler)
    app_runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.1)
    await app_runner.setup()
    await web.TCPSite(app_runner, "127.0.0.1", 0).start()
    return app_runner, f"http://127.0.0.1:{app_runner.addresses[0][1]}"


def outcomes(s: Settings) -> list[DeliveryOutcome]:
    decoded = [default_codec().decode(r.value or b"") for r in read_all(s, names(s).outcomes)]
    return [o for o in decoded if isinstance(o, DeliveryOutcome)]


def test_a_throttled_endpoint_gets_nothing_until_its_retry_after_passes(
    namespace: Callable[..., Settings],
) -> None:
    s = namespace(retry_tiers="1s,2s,4s")
    hits: list[tuple[float, int]] = []

    async def handler(request: web.Request) -> web.Response:
        await request.read()
        status = 429 if not hits else 204
        hits.append((time.monotonic(), status))
        return web.Response(status=status, headers={"Retry-After": "2"} if status == 429 else {})

    async def scenario() -> GatewayRunner:
        app_runner, base = await serve(handler)
        produce(s, commands(f"{base}/hook", 30))
        gateway = runner(s, concurrency=1)
        await gateway.run(idle_exit_after=5)
        await app_runner.cleanup()
        return gateway

    gateway = asyncio.run(scenario())
    throttled_at = hits[0][0]
    assert hits[0][1] == 429 and len(hits) == 31
    assert all(at - throttled_at >= 1.9 for at, _ in hits[1:]), "sent while the circuit was open"
    assert gateway.counts["circuit_open"] == 29 and gateway.counts["sent"] == 30
    statuses = [o.status for o in outcomes(s)]
    assert statuses.count("SENT") == 30 and statuses.count("RETRYING") == 30


def test_one_tenants_throttling_endpoint_does_not_hold_up_anothers(
    namespace: Callable[..., Settings],
) -> None:
    """The circuit is the tenant's endpoint's: webhooks to a healthy endpoint go out while another
    tenant's, on the same host, answers 429 with a long Retry-After, in the same partitions."""
    s = namespace(retry_tiers="1s,1m")
    hits: dict[str, int] = {"slow": 0, "fine": 0}

    async def handler(request: web.Request) -> web.Response:
        await request.read()
        name = request.match_info["name"]
        hits[name] += 1
        if name == "slow":
            return web.Response(status=429, headers={"Retry-After": "30"})
        return web.Response(status=204)

    async def scenario() -> GatewayRunner:
        app_runner, base = await serve(handler)
        slow = commands(f"{base}/slow", 10)
        fine = [c.model_copy(update={"tenant_id": "globex"}) for c in commands(f"{base}/fine", 10)]
        produce(s, [c for pair in zip(slow, fine, strict=True) for c in pair])
        gateway = runner(s, concurrency=1)
        await gateway.run(idle_exit_after=3)
        await app_runner.cleanup()
        return gateway

    gateway = asyncio.run(scenario())
    assert hits == {"slow": 1, "fine": 10}
    assert gateway.counts["sent"] == 10 and gateway.counts["circuit_open"] == 9
    retrying = [o.reason for o in outcomes(s) if o.status == "RETRYING"]
    assert retrying == ["1m"] * 10, "each waits in the tier that covers the Retry-After"


def test_consecutive_failures_open_the_circuit_for_the_cooloff(namespace: Callable[..., Settings]) -> None:
    s = namespace(retry_tiers="1s,2s,3s,4s")
    hits: list[float] = []

    async def handler(request: web.Request) -> web.Response:
        await request.read()
        hits.append(time.monotonic())
        return web.Response(status=503 if len(hits) <= 3 else 204)

    async def scenario() -> None:
        app_runner, base = await serve(handler)
        produce(s, commands(f"{base}/hook", 10))
        await runner(s, concurrency=1, circuit_failures=3, circuit_cooloff=2.0).run(idle_exit_after=4)
        await app_runner.cleanup()

    asyncio.run(scenario())
    assert len([h for h in hits if h < hits[0] + 1.9]) == 3, "kept sending after 3 failures in a row"
    assert [o.status for o in outcomes(s)].count("SENT") == 10


def test_rate_limit_holds_across_two_gateways(namespace: Callable[..., Settings]) -> None:
    s = namespace(retry_tiers="1s")
    hits: list[float] = []

    async def handler(request: web.Request) -> web.Response:
        await request.read()
        hits.append(time.monotonic())
        return web.Response(status=204)

    async def scenario() -> None:
        app_runner, base = await serve(handler)
        produce(s, commands(f"{base}/hook", 60))
        rates = {"standard": (20.0, 1)}
        await asyncio.gather(
            runner(s, rates=rates).run(idle_exit_after=3), runner(s, rates=rates).run(idle_exit_after=3)
        )
        await app_runner.cleanup()

    asyncio.run(scenario())
    assert len(hits) == 60
    span = max(hits) - min(hits)
    assert span >= 59 / 20 - 0.5, f"60 sends in {span:.2f}s exceed 20/s"


def test_endpoint_disabled_after_sustained_failure(namespace: Callable[..., Settings]) -> None:
    s = namespace(retry_tiers="1s")
    calls: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        await request.read()
        calls.append(request.match_info["name"])
        return web.Response(status=500)

    async def scenario() -> None:
        app_runner, base = await serve(handler)
        config = {"endpoint_disable_failures": 2, "endpoint_disable_after": 0.0}
        first = commands(f"{base}/broken", 2)
        produce(s, first[:1])
        await runner(s, **config).run(idle_exit_after=3)
        produce(s, first[1:])
        await runner(s, **config).run(idle_exit_after=3)
        produce(s, commands(f"{base}/broken", 1))
        await runner(s, **config).run(idle_exit_after=2)
        await app_runner.cleanup()

    async def failing_counts() -> list[bytes]:
        client = redis.asyncio.Redis.from_url(s.redis_url)
        try:
            return [k async for k in client.scan_iter(f"{s.topic_prefix}tidings:failing:*")]
        finally:
            await client.aclose()

    asyncio.run(scenario())
    assert len(calls) == 4, "the disabled endpoint was called again"
    feedback = [default_codec().decode(r.value or b"") for r in read_all(s, names(s).feedback)]
    [disabled] = [f for f in feedback if isinstance(f, ProviderFeedback)]
    assert disabled.kind == "endpoint_disabled" and disabled.address.endswith("/broken")
    assert asyncio.run(failing_counts()) == [], "kept, a re-enabled endpoint was disabled at one failure"
    statuses = [(o.status, o.reason) for o in outcomes(s)]
    assert statuses.count(("FAILED", "retries_exhausted")) == 2
    assert statuses.count(("SUPPRESSED", "address_dead")) == 1


def test_stop_finishes_in_flight_sends_and_commits_them(namespace: Callable[..., Settings]) -> None:
    s = namespace(retry_tiers="1s")
    received: list[str] = []
    first = asyncio.Event()

    async def handler(request: web.Request) -> web.Response:
        await request.read()
        first.set()
        await asyncio.sleep(0.3)
        received.append(request.headers["webhook-id"])
        return web.Response(status=204)

    async def scenario() -> GatewayRunner:
        app_runner, base = await serve(handler)
        produce(s, commands(f"{base}/slow", 200))
        gateway = runner(s, concurrency=8)
        task = asyncio.create_task(gateway.run())
        await first.wait()
        gateway.stop()
        await task
        sent_before = len(received)
        again = runner(s)
        await again.run(idle_exit_after=3)
        await app_runner.cleanup()
        assert sent_before == gateway.counts["sent"] and 0 < sent_before < 200
        return again

    again = asyncio.run(scenario())
    assert len(received) == len(set(received)) == 200
    assert again.counts.get("duplicates", 0) == 0 and again.counts.get("re_emitted", 0) == 0
    assert [o.status for o in outcomes(s)].count("SENT") == 200


def test_tenant_chains_choose_the_provider_order(namespace: Callable[..., Settings]) -> None:
    s = namespace(retry_tiers="1s")

    async def handler(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=204)

    async def scenario() -> None:
        app_runner, base = await serve(handler)
        batch = commands(f"{base}/hook", 6)
        batch = [c.model_copy(update={"tenant_id": "beta"}) if i % 2 else c for i, c in enumerate(batch)]
        produce(s, batch)
        local = WebhookSettings(allow_cidrs="127.0.0.1/32")
        chain = [StandardWebhook(local).named("primary"), StandardWebhook(local).named("dedicated")]
        with pytest.raises(ValueError, match="nowhere"):
            GatewayRunner(s, "webhook", chain, GatewaySettings(chains="acme=nowhere"))
        gateway = GatewayRunner(s, "webhook", chain, GatewaySettings(chains="acme=dedicated,primary"))
        await gateway.run(idle_exit_after=3)
        await app_runner.cleanup()

    asyncio.run(scenario())
    used = {(o.event_id, o.provider) for o in outcomes(s) if o.status == "SENT"}
    by_tenant = {(o.tenant_id, o.provider) for o in outcomes(s) if o.status == "SENT"}
    assert len(used) == 6 and by_tenant == {("acme", "dedicated"), ("beta", "primary")}


def test_redis_outage_pauses_instead_of_crashing(namespace: Callable[..., Settings], tmp_path: Path) -> None:
    """A private Redis is stopped mid-run and started again (empty): the gateway waits it out."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(tmp_path)]
    s = namespace(retry_tiers="1s", redis_url=f"redis://127.0.0.1:{port}/0")
    received: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        await request.read()
        received.append(request.headers["webhook-id"])
        await asyncio.sleep(0.05)
        return web.Response(status=204)

    async def wait_for_redis() -> None:
        while True:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                return
            except OSError:
                await asyncio.sleep(0.05)

    async def scenario() -> GatewayRunner:
        server = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
        await wait_for_redis()
        app_runner, base = await serve(handler)
        produce(s, commands(f"{base}/hook", 40))
        gateway = runner(s, concurrency=2, busy_backoff=0.5)
        task = asyncio.create_task(gateway.run(idle_exit_after=3))
        while len(received) < 5:
            await asyncio.sleep(0.01)
        server.kill()
        server.wait()
        await asyncio.sleep(1.5)
        assert not task.done(), "the gateway stopped while Redis was down"
        server = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
        try:
            await asyncio.wait_for(task, timeout=120)
        finally:
            server.kill()
            server.wait()
            await app_runner.cleanup()
        return gateway

    gateway = asyncio.run(scenario())
    assert gateway.counts["redis_unavailable"] >= 1
    sent = {(o.delivery_id, o.event_id) for o in outcomes(s) if o.status == "SENT"}
    assert len({d for d, _ in sent}) == len(sent) == 40
    assert len(set(received)) == 40


def test_a_command_a_provider_cannot_take_fails_into_the_dlq_and_the_rest_flow(
    namespace: Callable[..., Settings],
) -> None:
    """A URL the SSRF guard cannot parse, or a signing secret that is not base64, once crashed the whole
    gateway on every restart. Now the first is rejected and the second (an exception the provider did
    not type) is FAILED `provider_error` with a dead letter, which a re-emitted outcome brings again."""
    s = namespace()
    received: list[bytes] = []

    async def handler(request: web.Request) -> web.Response:
        received.append(await request.read())
        return web.Response(status=204)

    async def scenario() -> tuple[GatewayRunner, GatewayRunner, list[DeliveryCommand]]:
        app_runner, base = await serve(handler)
        batch = commands(f"{base}/hook", 6)
        batch[1] = batch[1].model_copy(update={"address": "https://a..b/x"})
        batch[2] = batch[2].model_copy(update={"address": "https://[::1/x"})
        batch[4] = batch[4].model_copy(update={"address_params": {"secret": "whsec_" + "A" * 17}})
        produce(s, batch)
        first = runner(s)
        await first.run(idle_exit_after=3)
        client = redis.asyncio.Redis.from_url(s.redis_url)
        key = f"{s.topic_prefix}tidings:delivery:{mark_ref(batch[4])}"
        mark = json.loads(await client.get(key) or b"{}")
        await client.set(key, json.dumps(mark | {"emitted": False}))
        await client.aclose()
        produce(s, [batch[4]])
        second = runner(s)
        await second.run(idle_exit_after=3)
        await app_runner.cleanup()
        return first, second, batch

    first, second, batch = asyncio.run(scenario())
    assert len(received) == 3 and first.counts["sent"] == 3
    assert first.counts["provider_errors"] == 1 and second.counts["re_emitted"] == 1
    failed = {o.delivery_id: (o.reason, o.event_id) for o in outcomes(s) if o.status == "FAILED"}
    reasons = {did: str(reason) for did, (reason, _) in failed.items()}
    assert reasons.keys() == {batch[1].delivery_id, batch[2].delivery_id, batch[4].delivery_id}
    assert reasons[batch[1].delivery_id].startswith("webhook host is not a valid name")
    assert reasons[batch[2].delivery_id].startswith("webhook URL does not parse")
    assert reasons[batch[4].delivery_id] == "provider_error"
    letters = [(r.value, header_map(r.headers)) for r in read_all(s, names(s).dlq)]
    assert len(letters) == 2, "the re-emitted outcome lost its dead letter"
    assert {value for value, _ in letters} == {default_codec().encode(batch[4])}
    assert all(h["tidings.error.type"] == "Error" for _, h in letters), letters


def test_a_retry_after_longer_than_the_next_tier_goes_to_a_tier_that_covers_it(
    namespace: Callable[..., Settings],
) -> None:
    """Written to the 1 s tier with a due time 3 s out, it would hold up every retry behind it there."""
    s = namespace(retry_tiers="1s,4s,8s")
    hits: list[int] = []

    async def handler(request: web.Request) -> web.Response:
        await request.read()
        hits.append(429 if not hits else 204)
        return web.Response(status=hits[-1], headers={"Retry-After": "3"} if hits[-1] == 429 else {})

    async def scenario() -> None:
        app_runner, base = await serve(handler)
        produce(s, commands(f"{base}/hook", 1))
        await runner(s, concurrency=1).run(idle_exit_after=6)
        await app_runner.cleanup()

    asyncio.run(scenario())
    assert hits == [429, 204]
    assert [(o.status, o.reason) for o in outcomes(s)] == [("RETRYING", "4s"), ("SENT", None)]


def test_redis_stalling_after_a_send_does_not_send_it_again(namespace: Callable[..., Settings]) -> None:
    """Redis stops answering for 7 s while the webhook is being sent: clearing the endpoint's failure
    count times out (5 s) and so does the first try of the SENT mark. The gateway keeps trying to
    record it instead of reading the command again and sending it a second time once its claim
    expires."""
    s = namespace()
    received: list[bytes] = []
    url = urlsplit(s.redis_url)
    freezer = Freezer(url.hostname or "127.0.0.1", url.port or 6379)

    async def handler(request: web.Request) -> web.Response:
        received.append(await request.read())
        if len(received) == 1:
            freezer.frozen.set()
            asyncio.get_running_loop().call_later(7.0, freezer.frozen.clear)
        return web.Response(status=204)

    async def scenario() -> GatewayRunner:
        app_runner, base = await serve(handler)
        produce(s, commands(f"{base}/hook", 1))
        async with freezer as port:
            relayed = s.model_copy(update={"redis_url": url._replace(netloc=f"127.0.0.1:{port}").geturl()})
            gateway = runner(relayed, inflight_ttl=30, busy_backoff=0.5)
            await gateway.run(idle_exit_after=4)
        await app_runner.cleanup()
        return gateway

    gateway = asyncio.run(scenario())
    assert len(received) == 1
    assert [o.status for o in outcomes(s)] == ["SENT"]
    assert "marks_lost" not in gateway.counts


def test_pausing_or_seeking_a_partition_a_rebalance_took_away_is_a_no_op(
    namespace: Callable[..., Settings],
) -> None:
    """A rebalance runs between a batch's awaits; aiokafka raised on the partitions it took, which
    crashed the gateway mid-batch during every deploy."""
    s = namespace()
    topic = names(s).delivery("webhook")
    produce(s, commands("https://example.com/hook", 2))

    async def scenario() -> tuple[list[tuple[str, int]], dict[tuple[str, int], int]]:
        consumer = AsyncConsumer(s, group_id=f"{s.topic_prefix}g", topics=[topic])
        await consumer.start()
        try:
            while not consumer.assignment():
                await consumer.batch(timeout_ms=100)
            gone = (topic, 99)
            consumer.pause([gone, *consumer.assignment()])
            consumer.seek(gone, 0)
            consumer.resume([gone])
            return consumer.assignment(), await consumer.lag()
        finally:
            await consumer.stop()

    assigned, lag = asyncio.run(scenario())
    assert (topic, 99) not in assigned and (topic, 99) not in lag


def test_a_claim_outlasts_the_wait_for_its_rate_limit_token(namespace: Callable[..., Settings]) -> None:
    """Sends queued behind a rate limit for longer than a claim lives keep their claims, so no other
    gateway can take the same commands over and send them too."""
    s = namespace()

    async def handler(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=204)

    async def scenario() -> list[bytes | None]:
        app_runner, base = await serve(handler)
        batch = commands(f"{base}/hook", 6)
        produce(s, batch)
        gateway = runner(s, concurrency=6, inflight_ttl=2, rates={"standard": (1.0, 1)})
        task = asyncio.create_task(gateway.run(idle_exit_after=2))
        client = redis.asyncio.Redis.from_url(s.redis_url)
        await asyncio.sleep(3.5)
        seen = [await client.get(f"{s.topic_prefix}tidings:delivery:{mark_ref(c)}") for c in batch]
        await client.aclose()
        await task
        await app_runner.cleanup()
        return seen

    seen = asyncio.run(scenario())
    assert all(mark is not None for mark in seen), "a claim expired while its send waited for a token"
    assert [o.status for o in outcomes(s)].count("SENT") == 6


def test_a_replayed_dead_letter_is_sent_once_after_the_fix(namespace: Callable[..., Settings]) -> None:
    """`tidings dlq replay` puts a command back on its topic; its delivery's mark says done, which made
    the replay a duplicate for as long as the mark lived. A replay now claims it once."""
    s = namespace(retry_tiers="1s")
    statuses: list[int] = []

    async def handler(request: web.Request) -> web.Response:
        await request.read()
        statuses.append(503 if fixed.is_set() is False else 204)
        return web.Response(status=statuses[-1])

    fixed = asyncio.Event()

    async def scenario() -> GatewayRunner:
        app_runner, base = await serve(handler)
        produce(s, commands(f"{base}/hook", 1))
        await runner(s).run(idle_exit_after=3)
        fixed.set()
        [letter] = read_all(s, names(s).dlq)
        with EventProducer(s) as producer:
            replay_dead_letter(producer, letter)
            replay_dead_letter(producer, letter)
        again = runner(s)
        await again.run(idle_exit_after=3)
        await app_runner.cleanup()
        return again

    again = asyncio.run(scenario())
    assert statuses == [503, 503, 204]
    assert again.counts["sent"] == 1 and again.counts["duplicates"] == 1
    assert [o.status for o in outcomes(s)] == ["RETRYING", "FAILED", "SENT"]


def test_a_retry_whose_due_cannot_be_read_or_is_years_out_is_sent_not_a_crash_or_a_stall(
    namespace: Callable[..., Settings],
) -> None:
    """`tidings.due` comes from another process: unreadable, it stopped the gateway on every restart;
    years ahead (a writer's clock), it held its tier partition for good. Each waits at most the
    longest tier after it was written; one without a time is due at once."""
    from gateways.outputs import DUE
    from tests.raw_headers import Raw, produce_raw

    s = namespace(retry_tiers="1s,2s", partitions=1)
    hits: list[bytes] = []
    handler = accepting(hits)

    async def scenario() -> None:
        app_runner, base = await serve(handler)
        unreadable, far, overflowing, long = commands(f"{base}/hook", 4)
        for command, due in (
            (unreadable, b"1.7e12"),
            (far, b"32503680000000"),
            (overflowing, b"1" + b"0" * 400),
            (long, b"9" * 5000),
        ):
            produce_due(s, names(s).retry("webhook", "1s"), command, due)
        undated = Output.event(names(s).retry("webhook", "1s"), commands(f"{base}/hook", 1)[0])
        far_and_undated = replace(undated, headers=[*undated.headers, (DUE, b"9999999999999999")])
        produce_raw(s, [Raw(far_and_undated, timestamp_ms=0)])
        await runner(s, concurrency=1).run(idle_exit_after=5)
        await app_runner.cleanup()

    asyncio.run(scenario())
    assert len(hits) == 5, "a due no float holds stopped the gateway at every start"
    assert [o.status for o in outcomes(s)] == ["SENT"] * 5


def test_redis_refusing_writes_when_full_pauses_the_gateway_instead_of_stopping_it(
    namespace: Callable[..., Settings], tmp_path: Any
) -> None:
    """Redis out of memory (or a failover's read-only primary) answers errors, not silence: the gateway
    crashed on every restart for as long as it lasted. Now the partition waits, and nothing is sent
    without its claim."""
    import shutil
    import subprocess

    import redis

    from tests.ports import free_port

    binary = shutil.which("redis-server")
    assert binary is not None, "tidings dev up installs redis-server"
    port = free_port()
    options = {"port": str(port), "bind": "127.0.0.1", "save": "", "appendonly": "no", "dir": str(tmp_path)}
    options |= {"maxmemory": "2mb", "maxmemory-policy": "noeviction"}
    arguments = [part for k, v in options.items() for part in (f"--{k}", v)]
    server = subprocess.Popen([binary, *arguments], stdout=subprocess.DEVNULL)
    try:
        client = redis.Redis(port=port)
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.1)
        try:
            for i in range(10_000):
                client.set(f"ballast{i}", b"x" * 10_000)
        except redis.exceptions.OutOfMemoryError:
            pass
        s = namespace(redis_url=f"redis://127.0.0.1:{port}/0")
        hits: list[bytes] = []
        handler = accepting(hits)

        async def scenario() -> GatewayRunner:
            app_runner, base = await serve(handler)
            produce(s, commands(f"{base}/hook", 3))
            gateway = runner(s, busy_backoff=0.5)
            asyncio.get_running_loop().call_later(8, gateway.stop)
            await gateway.run()
            await app_runner.cleanup()
            return gateway

        gateway = asyncio.run(scenario())
        assert hits == [] and gateway.counts["redis_unavailable"] >= 3
    finally:
        server.terminate()
        server.wait(10)


@pytest.mark.parametrize("tiers", ["1s,2s", ""])
def test_retries_waiting_in_a_tier_no_longer_configured_are_still_read(
    namespace: Callable[..., Settings], tiers: str
) -> None:
    """TIDINGS_RETRY_TIERS changed from 1s,5s to 1s,2s: what waited in the 5s tier was read by nobody
    and stayed RETRYING for good; changed to none at all, so did every tier."""
    from tidings.kafka import apply_topics
    from tidings.topics import registry

    before = namespace(retry_tiers="1s,5s", partitions=1)
    after = Settings(**(before.model_dump() | {"retry_tiers": tiers}))
    apply_topics(after, registry(after))
    hits: list[bytes] = []
    handler = accepting(hits)

    async def scenario() -> None:
        app_runner, base = await serve(handler)
        [waiting] = commands(f"{base}/hook", 1)
        waiting = waiting.model_copy(update={"attempt": 2})
        produce_due(before, names(before).retry("webhook", "5s"), waiting, b"0")
        await runner(after, concurrency=1).run(idle_exit_after=4)
        await app_runner.cleanup()

    asyncio.run(scenario())
    assert len(hits) == 1
    assert [o.status for o in outcomes(after)] == ["SENT"]


def test_a_send_longer_than_a_claims_lifetime_keeps_its_claim(namespace: Callable[..., Settings]) -> None:
    """A chain walk can outlast the claim (here 2 s against a 5 s send): the claim expired mid-send and
    a rebalance's new owner sent the command again. It is held until the walk ends."""
    s = namespace()
    marks: list[object] = []
    [command] = commands("placeholder", 1)

    async def handler(request: web.Request) -> web.Response:
        await request.read()
        await asyncio.sleep(5)
        client = redis.asyncio.Redis.from_url(s.redis_url)
        raw = await client.get(f"{s.topic_prefix}tidings:delivery:{mark_ref(command)}")
        await client.aclose()
        marks.append(json.loads(raw)["state"] if raw else None)
        return web.Response(status=204)

    async def scenario() -> None:
        app_runner, base = await serve(handler)
        produce(s, [command.model_copy(update={"address": f"{base}/hook"})])
        provider = StandardWebhook(WebhookSettings(allow_cidrs="127.0.0.1/32", read_timeout=10))
        config = GatewaySettings(inflight_ttl=2)
        await GatewayRunner(s, "webhook", [provider], config).run(idle_exit_after=2)
        await app_runner.cleanup()

    asyncio.run(scenario())
    assert marks == ["inflight"]
    assert [o.status for o in outcomes(s)] == ["SENT"]


def test_a_command_that_expires_while_waiting_for_its_rate_limit_token_is_not_sent(
    namespace: Callable[..., Settings],
) -> None:
    """Expiry was checked when the command was claimed only: a flash sale that ended while its send
    waited its turn went out all the same."""
    from datetime import UTC, datetime, timedelta

    s = namespace(partitions=1)
    hits: list[bytes] = []
    handler = accepting(hits)

    async def scenario() -> None:
        app_runner, base = await serve(handler)
        soon = datetime.now(UTC) + timedelta(seconds=8)
        produce(s, [c.model_copy(update={"expires_at": soon}) for c in commands(f"{base}/hook", 4)])
        await runner(s, concurrency=4, rates={"standard": (0.25, 1)}).run(idle_exit_after=3)
        await app_runner.cleanup()

    asyncio.run(scenario())
    statuses = Counter(o.status for o in outcomes(s))
    assert len(hits) == statuses["SENT"] and 1 <= len(hits) <= 3
    assert statuses["EXPIRED"] == 4 - len(hits)


def test_a_command_whose_header_key_is_not_utf8_is_dead_lettered_and_none_around_it_is_lost(
    namespace: Callable[..., Settings],
) -> None:
    """aiokafka fails every fetch of such a record's partition, and drops the records it drained before
    it in the same call: the gateway stopped at every start, and a restart could skip those records."""
    from tests.raw_headers import RAW_KEY, Raw, produce_raw

    s = namespace()
    received: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        await request.read()
        received.append(request.headers["webhook-id"])
        return web.Response(status=204)

    async def scenario() -> tuple[GatewayRunner, list[Output]]:
        app_runner, base = await serve(handler)
        topic = names(s).delivery("webhook")
        outputs = [Output.event(topic, c) for c in commands(f"{base}/hook", 30)]
        produce_raw(s, [Raw(out, RAW_KEY if i == 15 else None) for i, out in enumerate(outputs)])
        gateway = runner(s)
        await gateway.run(idle_exit_after=3)
        await app_runner.cleanup()
        return gateway, outputs

    gateway, outputs = asyncio.run(scenario())
    ids = [str(default_codec().decode(out.value or b"").delivery_id) for out in outputs]  # type: ignore[attr-defined]
    assert sorted(received) == sorted(ids[:15] + ids[16:])
    assert gateway.counts["dead_letters"] == 1
    [letter] = read_all(s, names(s).dlq)
    assert letter.value == outputs[15].value
    assert header_map(letter.headers)["tidings.error.type"] == "UnreadableHeaders"
