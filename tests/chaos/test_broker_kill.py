"""The broker itself is SIGKILLed twice while a component works, and restarted on the same data.

A private single-node broker (own ports, own data directory) is used, so the shared one the rest of the
suite runs on is never disturbed. The component keeps running through both outages; it is restarted only
if it exits (as a supervisor would), and the test reports how often that happened.
- router: reading the command topics read_committed afterwards shows exactly the planned commands;
- delivery-status projection: its tables equal those of an uninterrupted run over the same topics;
- webhook gateway: every command reaches the receiver, with one terminal outcome each; deliveries sent
  twice are counted and printed (a send whose outcome Kafka had not acknowledged at the kill).
"""

import asyncio
import os
import random
import signal
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
import pytest
from aiohttp import web
from standardwebhooks import Webhook

from benchmarks.projection import outcomes
from gateways.runner import GatewayRunner, GatewaySettings
from gateways.webhook.standard import StandardWebhook, WebhookSettings
from processors.plan import Catalog
from projections import Projection, Runner
from projections.db import migrate
from tests.chaos.test_projection_kill import progress
from tests.chaos.test_router_kill import (
    ROOT,
    TIDINGS,
    assert_exactly,
    committed_commands,
    expected_commands,
    lag,
    produce,
    profiles,
    requests,
)
from tests.integration.conftest import read_all, table_checksums
from tests.integration.test_api import SHIPPED, call, serving
from tests.integration.test_gateway_runner import commands, serve
from tests.integration.test_gateway_runner import produce as produce_commands
from tests.ports import free_port
from tests.servers.webhook import SECRET
from tidings import devstack
from tidings.catalog import load
from tidings.client import Client
from tidings.codec import default_codec
from tidings.config import Settings, settings
from tidings.devstack import kafka
from tidings.devstack.common import pid_alive
from tidings.errors import KafkaUnavailable
from tidings.events import DeliveryCommand, DeliveryOutcome, NotificationRequested
from tidings.kafka import EventProducer, Output, apply_topics
from tidings.topics import names, registry

pytestmark = pytest.mark.timeout(900)


class PrivateBroker:
    def __init__(self, root: Path) -> None:
        self.root, self.port, self.controller = root, free_port(), free_port()
        self.settings = Settings(
            kafka_bootstrap=f"127.0.0.1:{self.port}",
            topic_prefix=f"bk{uuid.uuid4().hex[:8]}.",
            partitions=3,
            retry_tiers="10s",
        )

    def start(self) -> None:
        kafka.up(self.settings, root=self.root, port=self.port, controller=self.controller)

    def kill(self) -> None:
        pid = pid_alive(self.root / "pid")
        assert pid is not None, "the private broker is not running"
        os.killpg(pid, signal.SIGKILL)
        while pid_alive(self.root / "pid"):
            time.sleep(0.1)

    def stop(self) -> None:
        kafka.down(self.root)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[PrivateBroker]:
    b = PrivateBroker(tmp_path / "kafka")
    b.start()
    try:
        yield b
    finally:
        b.stop()


class Supervised:
    """`tidings run ...`, started again whenever it exits, as a process supervisor would."""

    def __init__(self, env: dict[str, str], log: Path, *args: str) -> None:
        self.env, self.restarts, self.log, self.args = env, 0, log, args
        self.proc = self._start()

    def _start(self) -> subprocess.Popen[bytes]:
        with self.log.open("ab") as out:
            return subprocess.Popen(
                [TIDINGS, "run", *self.args],
                env=self.env,
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def recoveries(self) -> int:
        return self.log.read_text(errors="replace").count("Kafka client unusable")

    def check(self) -> None:
        if self.proc.poll() is not None:
            self.restarts += 1
            self.proc = self._start()

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def wait_for_lag(s: Settings, router: Supervised, below: int, timeout: float = 240) -> None:
    """Until the router's lag is below `below`. Right after a broker restart the lag can be unknown for
    a while (the coordinator loading, or a killed transaction's offsets unstable until it is aborted):
    the router has to get through that, so the probe keeps asking until the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        router.check()
        try:
            if lag(s) <= below:
                return
        except KafkaUnavailable as exc:
            assert time.monotonic() < deadline, f"router lag unknown: {exc}"
        assert time.monotonic() < deadline, f"router lag stayed above {below}"
        time.sleep(0.2)


def environment(s: Settings) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")} | {
        "TIDINGS_KAFKA_BOOTSTRAP": s.kafka_bootstrap,
        "TIDINGS_POSTGRES_DSN": s.postgres_dsn,
        "TIDINGS_REDIS_URL": s.redis_url,
        "TIDINGS_TOPIC_PREFIX": s.topic_prefix,
        "TIDINGS_PARTITIONS": str(s.partitions),
    }


@pytest.mark.flaky(reruns=1)  # Kafka lost a commit marker after a SIGKILL; docs/architecture.md
def test_broker_sigkill_twice_loses_and_duplicates_no_command(broker: PrivateBroker, tmp_path: Path) -> None:
    s, rng = broker.settings, random.Random(11)
    apply_topics(s, registry(s))
    env = environment(s)
    catalog_types = load(ROOT / "catalog")
    catalog = Catalog()
    for t in catalog_types:
        catalog.apply(t)
    first = profiles(rng, 100)
    batch_a, batch_b = requests(rng, 3000, 100), requests(rng, 3000, 100)

    with Client(s) as client:
        produce(s, [*catalog_types, *first, *batch_a], client)
    router = Supervised(env, tmp_path / "router.log", "router", "--instance", "0")
    try:
        wait_for_lag(s, router, below=2000)
        broker.kill()  # 1: mid-stream, transactions open
        time.sleep(2)
        broker.start()
        router.check()
        with Client(s) as client:
            produce(s, batch_b, client)
        wait_for_lag(s, router, below=2500)
        broker.kill()  # 2: mid-stream again
        time.sleep(2)
        broker.start()
        wait_for_lag(s, router, below=0)
        router.check()
    finally:
        router.stop()

    expected = expected_commands(catalog, (first, batch_a, batch_b))
    found = committed_commands(s)
    print(
        f"broker killed twice: {len(found)} commands, router restarts {router.restarts}, "
        f"in-process client replacements {router.recoveries()}"
    )
    missing = {c.delivery_id for c in expected} - {c.delivery_id for c in found}
    if missing:
        found = second_read(s, missing)
    try:
        assert_exactly(expected, found, phase_a={r.notification_id for r in batch_a})
    except AssertionError as failure:
        (tmp_path / "failure.txt").write_text(f"{failure}\n")  # kept beside the broker's data for a rerun
        raise
    assert len(expected) > 5000
    assert router.restarts == 0, "the router exited during a broker outage instead of riding it out"


def second_read(s: Settings, missing: set[Any]) -> list[DeliveryCommand]:
    """The commands read again, after saying where the missing ones are in a read_uncommitted read.

    Once in CI a read_committed reader started right after the second restart missed
    the first committed transaction of two partitions, the ones followed by a transaction the fencing
    aborted; the segment files showed those records with their COMMIT marker, written 0.2 s after them,
    and every later read returned them (docs/architecture.md, "A reader that skipped committed
    records"). The router is judged on a second, independent read; the first read's miss is printed.
    """
    time.sleep(5)
    again = committed_commands(s)
    found = {c.delivery_id for c in again}
    print(f"{len(missing)} missing; a second read_committed read finds {len(missing & found)} of them")
    n, places = names(s), Counter[tuple[str, int]]()
    for channel in ("email", "in_app", "push", "sms"):
        for topic in (n.delivery(channel), n.delivery(channel, urgent=True)):
            for r in read_all(s, topic, committed=False):
                c = default_codec().decode(r.value or b"")
                if isinstance(c, DeliveryCommand) and c.delivery_id in missing:
                    places[(topic, r.partition)] += 1
                    print(f"  uncommitted read: {topic}[{r.partition}]@{r.offset}")
    print(f"missing commands by partition in a read_uncommitted read: {dict(places)}")
    return again


@pytest.fixture
def databases(broker: PrivateBroker) -> Iterator[tuple[Settings, Settings]]:
    """Two fresh databases on the dev PostgreSQL: one for the run under test, one for the reference."""
    base, made = settings(), []
    devstack.up(base)
    for _ in range(2):
        name = "bk_" + uuid.uuid4().hex[:12]
        with psycopg.connect(base.postgres_dsn, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}".encode())
        made.append(
            Settings(
                **(
                    broker.settings.model_dump()
                    | {"postgres_dsn": f"{base.postgres_dsn.rsplit('/', 1)[0]}/{name}"}
                )
            )
        )
        migrate(made[-1].postgres_dsn)
    yield made[0], made[1]
    with psycopg.connect(base.postgres_dsn, autocommit=True) as conn:
        for s in made:
            conn.execute(f"DROP DATABASE IF EXISTS {s.postgres_dsn.rsplit('/', 1)[1]} WITH (FORCE)".encode())


def test_projection_rides_out_two_broker_kills(
    broker: PrivateBroker, databases: tuple[Settings, Settings], tmp_path: Path
) -> None:
    s, reference = databases
    apply_topics(s, registry(s))
    with EventProducer(s) as producer:
        for e in outcomes(20_000):
            producer.produce(Output.event(names(s).outcomes, e))

    projection = Supervised(environment(s), tmp_path / "projection.log", "projection", "delivery_status")
    try:
        for at in (5_000, 12_000):
            wait_for_progress(s, projection, at)
            broker.kill()
            time.sleep(2)
            broker.start()
        wait_for_progress(s, projection, 20_000)
    finally:
        projection.stop()
    runner = Runner(reference, Projection.registry["delivery_status"]())
    try:
        runner.run(idle_exit_after=3)
    finally:
        runner.close()
    tables = ["notifications", "deliveries", "delivery_events"]
    print(f"projection: restarts {projection.restarts} after broker kills")
    assert table_checksums(s, tables) == table_checksums(reference, tables)
    assert projection.restarts <= 2, "the projection crash-looped after the broker came back"


def wait_for_progress(s: Settings, component: Supervised, at_least: int, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while progress(s) < at_least:
        component.check()
        assert time.monotonic() < deadline, f"projection stayed below offset {at_least}"
        time.sleep(0.1)


def webhook_gateway_through(
    broker: PrivateBroker, tmp_path: Path, count: int, outages: list[tuple[int, float]]
) -> tuple[set[str], Counter[str], int]:
    """A supervised webhook gateway sending `count` commands to a local receiver; at each (received,
    seconds) the broker is SIGKILLed and started again that many seconds later. The ids sent, how often
    the receiver got each, and how often the gateway exited."""
    s = broker.settings
    apply_topics(s, registry(s))
    received: Counter[str] = Counter()

    async def receiver(request: web.Request) -> web.Response:
        body = await request.read()
        Webhook(SECRET).verify(body, dict(request.headers))
        received[request.headers["webhook-id"]] += 1
        return web.Response(status=204)

    async def scenario() -> tuple[set[str], int]:
        app = web.Application()
        app.router.add_post("/hook", receiver)
        runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.1)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
        sent = commands(url, count)
        produce_commands(s, sent)
        ids = {str(c.delivery_id) for c in sent}
        env = environment(s) | {"TIDINGS_WEBHOOK_ALLOW_CIDRS": "127.0.0.1/32", "TIDINGS_RETRY_TIERS": "10s"}
        gateway = Supervised(env, tmp_path / "gateway.log", "gateway", "webhook")
        try:
            for at, away in outages:
                stalled = time.monotonic() + 120
                while len(received) < at:
                    assert time.monotonic() < stalled, f"{len(received)} received, waiting for {at}"
                    gateway.check()
                    await asyncio.sleep(0.01)
                await asyncio.to_thread(broker.kill)
                until = time.monotonic() + away
                while time.monotonic() < until:
                    gateway.check()
                    await asyncio.sleep(0.1)
                await asyncio.to_thread(broker.start)
            deadline = time.monotonic() + 240
            while set(received) != ids and time.monotonic() < deadline:
                gateway.check()
                await asyncio.sleep(0.1)
            await asyncio.sleep(3)
            gateway.check()
        finally:
            await asyncio.to_thread(gateway.stop)
            await runner.cleanup()
        return ids, gateway.restarts

    ids, restarts = asyncio.run(scenario())
    return ids, received, restarts


def terminal_outcomes(s: Settings) -> dict[str, set[Any]]:
    terminal: dict[str, set[Any]] = {}
    for r in read_all(s, names(s).outcomes):
        o = default_codec().decode(r.value or b"")
        if isinstance(o, DeliveryOutcome) and o.status in {"SENT", "FAILED", "EXPIRED"}:
            terminal.setdefault(str(o.delivery_id), set()).add((o.event_id, o.status))
    return terminal


def test_webhook_gateway_rides_out_two_broker_kills(broker: PrivateBroker, tmp_path: Path) -> None:
    ids, received, restarts = webhook_gateway_through(broker, tmp_path, 3000, [(800, 2.0), (1800, 2.0)])
    assert set(received) == ids, f"lost: {len(ids - set(received))}"
    twice = sum(1 for count in received.values() if count > 1)
    terminal = terminal_outcomes(broker.settings)
    print(f"webhook gateway, broker killed twice: {len(ids)} sent, {twice} twice, restarts {restarts}")
    assert set(terminal) == ids
    assert {len(v) for v in terminal.values()} == {1}
    assert restarts <= 2, "the gateway crash-looped after the broker came back"


def test_webhook_gateway_waits_out_a_broker_away_longer_than_its_producer_timeout(
    broker: PrivateBroker, tmp_path: Path
) -> None:
    """The outcomes of the sends made just before the kill went unacknowledged past the producer's
    request timeout (40 s): the gateway exited, and a supervisor restarted it into the same outage."""
    ids, received, restarts = webhook_gateway_through(broker, tmp_path, 1500, [(600, 50.0)])
    assert set(received) == ids, f"lost: {len(ids - set(received))}"
    terminal = terminal_outcomes(broker.settings)
    print(f"webhook gateway, broker away 50 s: {len(ids)} sent, restarts {restarts}")
    assert set(terminal) == ids
    assert restarts == 0, "the gateway exited during the outage instead of waiting it out"


def test_the_edge_answers_503_in_time_while_the_broker_is_away_then_accepts_the_retry(
    broker: PrivateBroker, databases: tuple[Settings, Settings]
) -> None:
    """aiokafka retries a batch for as long as its broker is away: a POST waited out the whole outage,
    and its client gave up first, not knowing whether the request was accepted."""
    s, _ = databases
    apply_topics(s, registry(s))
    keyed = {"Idempotency-Key": "outage-1"}

    async def scenario(base: str) -> dict[str, Any]:
        seen: dict[str, Any] = {}
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
            seen["before"] = await call(http, "POST", f"{base}/v1/notifications", json=SHIPPED)
            await asyncio.to_thread(broker.kill)
            started = time.monotonic()
            seen["away"] = await call(http, "POST", f"{base}/v1/notifications", json=SHIPPED, headers=keyed)
            seen["took"] = time.monotonic() - started
            await asyncio.to_thread(broker.start)
            deadline = time.monotonic() + 60
            post = f"{base}/v1/notifications"
            while (retried := await call(http, "POST", post, json=SHIPPED, headers=keyed))[0] != 202:
                assert time.monotonic() < deadline, f"never accepted after the broker came back: {retried}"
                await asyncio.sleep(0.5)
            seen["retried"] = retried
        return seen

    seen = asyncio.run(serving(s, scenario))
    assert seen["before"][0] == 202, seen["before"]
    code, problem, _ = seen["away"]
    assert code == 503 and problem["title"] == "Not accepted", seen["away"]
    assert seen["took"] < 20, f"answered after {seen['took']:.1f} s (deadline 10 s)"
    accepted = seen["retried"][1]["notification_id"]
    events = [default_codec().decode(r.value or b"") for r in read_all(s, names(s).requested)]
    ids = [str(e.notification_id) for e in events if isinstance(e, NotificationRequested)]
    assert ids.count(accepted) >= 1 and len(set(ids)) == 2, ids


def test_the_edge_stops_in_time_while_the_broker_is_away(
    broker: PrivateBroker, databases: tuple[Settings, Settings]
) -> None:
    """The edge's producer waited for its records in flight without end when stopped with the broker
    away: a process asked to stop never did, until its supervisor killed it."""
    s, _ = databases
    apply_topics(s, registry(s))
    stopping: dict[str, float] = {}

    async def scenario(base: str) -> tuple[int, Any, dict[str, str]]:
        async with aiohttp.ClientSession() as http:
            assert (await call(http, "POST", f"{base}/v1/notifications", json=SHIPPED))[0] == 202
            await asyncio.to_thread(broker.kill)
            refused = await call(http, "POST", f"{base}/v1/notifications", json=SHIPPED)
        stopping["at"] = time.monotonic()
        return refused

    code, _, _ = asyncio.run(serving(s, scenario))
    took = time.monotonic() - stopping["at"]
    assert code == 503
    assert took < 20, f"the edge took {took:.1f} s to stop (at most 10 s for the records in flight)"


def test_a_webhook_gateway_stops_in_time_while_the_broker_is_away(broker: PrivateBroker) -> None:
    """Outcomes of sends made just before the kill wait for an acknowledgement the idempotent producer
    never gives up on: the gateway's last hand-on waited without end, and a gateway asked to stop never
    did. Whatever it had not handed on is emitted by the next run, once."""
    s = broker.settings
    apply_topics(s, registry(s))
    received: Counter[str] = Counter()

    async def receiver(request: web.Request) -> web.Response:
        await request.read()
        received[request.headers["webhook-id"]] += 1
        return web.Response(status=204)

    def gateway() -> GatewayRunner:
        provider = StandardWebhook(WebhookSettings(allow_cidrs="127.0.0.1/32", read_timeout=2))
        return GatewayRunner(s, "webhook", [provider], GatewaySettings())

    async def scenario() -> tuple[set[str], float]:
        runner, base = await serve(receiver)
        sent = commands(f"{base}/hook", 400)
        produce_commands(s, sent)
        first = gateway()
        running = asyncio.create_task(first.run())
        while len(received) < 50:
            assert not running.done(), running
            await asyncio.sleep(0.01)
        await asyncio.to_thread(broker.kill)
        await asyncio.sleep(1)
        first.stop()
        started = time.monotonic()
        await asyncio.wait_for(running, 120)
        took = time.monotonic() - started
        await asyncio.to_thread(broker.start)
        await gateway().run(idle_exit_after=5)
        await runner.cleanup()
        return {str(c.delivery_id) for c in sent}, took

    ids, took = asyncio.run(scenario())
    print(f"webhook gateway stopped in {took:.1f} s with the broker away")
    assert took < 25, f"the gateway took {took:.1f} s to stop, past a 30 s grace period with its clients"
    assert set(received) == ids
    terminal = terminal_outcomes(s)
    assert set(terminal) == ids and {len(v) for v in terminal.values()} == {1}


def test_the_router_rides_out_a_broker_kill_while_it_restores_its_stores(
    broker: PrivateBroker, tmp_path: Path
) -> None:
    """The stores are restored inside the consumer's assignment callback: a broker lost then raised from
    it, and the router exited, for its supervisor to restart into the same outage."""
    s, rng = broker.settings, random.Random(5)
    apply_topics(s, registry(s))
    env = environment(s)
    catalog_types, catalog = load(ROOT / "catalog"), Catalog()
    for t in catalog_types:
        catalog.apply(t)
    people = profiles(rng, 30000)
    with Client(s) as client:
        produce(s, [*catalog_types, *people], client)
    log = tmp_path / "router.log"
    first = Supervised(env, log, "router", "--instance", "0")
    try:
        wait_for_lag(s, first, below=0)
    finally:
        first.stop()
    size = log.stat().st_size
    router = Supervised(env, log, "router", "--instance", "0")
    try:
        deadline = time.monotonic() + 60
        while "restored" not in log.read_bytes()[size:].decode(errors="replace"):
            assert time.monotonic() < deadline, "the router never restored a store"
            time.sleep(0.005)
        broker.kill()
        time.sleep(2)
        broker.start()
        batch = requests(rng, 500, 30000)
        with Client(s) as client:
            produce(s, batch, client)
        wait_for_lag(s, router, below=0)
        router.check()
    finally:
        router.stop()
    print(f"broker killed while restoring: restarts {router.restarts}, in-process {router.recoveries()}")
    assert router.restarts == 0, "the router exited instead of recovering in-process"
    assert router.recoveries() >= 1, "the kill missed the restore: nothing was tested"
    expected = expected_commands(catalog, (people, batch))
    assert len(expected) > 300
    assert_exactly(expected, committed_commands(s), phase_a=set())
