"""10,000 requests for 200 recipients; the router process is SIGKILLed three times mid-stream.

The oracle is the router's own pure `plan()` applied to the same events in order. Reading the command
topics read_committed afterwards must show exactly the planned commands: none missing, none doubled,
and preference changes made before a kill honoured after it (restored from the changelog).
"""

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from processors.plan import Catalog, gate, plan
from processors.recipients import RecipientState, fold
from processors.throttle import admit
from tests.integration.conftest import read_all
from tidings.catalog import load
from tidings.client import Client
from tidings.codec import default_codec
from tidings.config import Settings
from tidings.events import (
    DeliveryCommand,
    DeliveryOutcome,
    DeviceRegistered,
    Event,
    NotificationRequested,
    PreferencesUpdated,
    RecipientUpdated,
)
from tidings.ids import new_notification_id
from tidings.kafka import group_lag
from tidings.topics import names

ROOT = Path(__file__).resolve().parents[2]
TIDINGS = str(Path(sys.executable).with_name("tidings"))
TYPES = {
    "order.shipped": {"order": "A-1", "carrier": "DHL"},
    "password.reset": {"link": "https://example.com/r"},
    "comment.mention": {"by": "ada", "thread": "T-1"},
    "invoice.due": {"amount": 12.5, "currency": "EUR"},
    "weekly.digest": {"items": 3},
}
pytestmark = pytest.mark.timeout(900)


def varied(rng: random.Random, type_: str) -> dict[str, Any]:
    """Data that the example catalog's conditions decide on: empty weeks, invoices with and without SMS."""
    if type_ == "weekly.digest":
        return {"items": rng.choice([0, 3])}
    if type_ == "invoice.due":
        return {"amount": rng.choice([12.5, 2500])}
    return {}


def profiles(rng: random.Random, count: int) -> list[Event]:
    events: list[Event] = []
    for i in range(count):
        r = f"user-{i}"
        events.append(
            RecipientUpdated(
                tenant_id="acme",
                recipient_id=r,
                email=f"{r}@example.com" if rng.random() < 0.9 else None,
                phone=f"+49151{1000000 + i}" if rng.random() < 0.6 else None,
                locale=rng.choice(["de-AT", "en", None]),
                name=f"User {i}",
            )
        )
        if rng.random() < 0.5:
            events.append(
                DeviceRegistered(
                    tenant_id="acme",
                    recipient_id=r,
                    device_id="d1",
                    platform=rng.choice(["fcm", "apns"]),
                    token=f"token-{i}",
                )
            )
        rules = []
        if rng.random() < 0.2:
            rules.append({"scope": "category", "key": "orders", "channel": "email", "enabled": False})
        if rng.random() < 0.15:
            rules.append({"scope": "type", "key": "comment.mention", "channel": "push", "enabled": False})
        if rng.random() < 0.1:
            rules.append({"scope": "category", "key": "billing", "enabled": False})
        events.append(
            PreferencesUpdated(tenant_id="acme", recipient_id=r, muted=rng.random() < 0.1, rules=rules)
        )
    return events


def preference_changes(rng: random.Random, count: int) -> list[Event]:
    return [
        PreferencesUpdated(
            tenant_id="acme",
            recipient_id=f"user-{i}",
            muted=rng.random() < 0.3,
            rules=[
                {"scope": "category", "key": "orders", "enabled": False},
                {"scope": "type", "key": "weekly.digest", "channel": "email", "enabled": rng.random() < 0.5},
            ],
        )
        for i in rng.sample(range(count), 50)
    ]


def requests(rng: random.Random, count: int, recipients: int) -> list[NotificationRequested]:
    out = []
    for _ in range(count):
        type_ = rng.choice(list(TYPES))
        out.append(
            NotificationRequested(
                tenant_id="acme",
                notification_id=new_notification_id(),
                recipient_id=f"user-{rng.randrange(recipients)}",
                notification_type=type_,
                data_json=__import__("json").dumps(TYPES[type_] | varied(rng, type_)),
            )
        )
    return out


def produce(s: Settings, events: list[Event], client: Client) -> None:
    for e in events:
        client.publish(e, wait=False)
    client.flush()


def start_router(env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [TIDINGS, "run", "router", "--instance", "0"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def lag(s: Settings) -> int:
    n = names(s)
    return group_lag(s, s.topic_prefix + "tidings.router", [n.requested, n.recipients, n.feedback])


def wait_for_lag(s: Settings, below: int, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while lag(s) > below:
        assert time.monotonic() < deadline, f"router lag stayed above {below}"
        time.sleep(0.2)


def kill(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL


def key(c: DeliveryCommand) -> tuple[Any, ...]:
    return (c.delivery_id, c.channel, c.address, c.priority, c.template_version, c.content, c.locale)


def expected_commands(catalog: Catalog, phases: tuple[list[Any], ...]) -> list[DeliveryCommand]:
    """The oracle: the router's pure condition gate, throttle and plan() over the same events in order;
    commands sent now and those deferred to the scheduler (comment.mention's escalation email). The
    throttles (password.reset, weekly.digest) refuse most of their requests, so their counts must survive
    kills; conditions drop empty weekly digests and the SMS of small invoices."""
    states: dict[str, RecipientState] = {}
    throttled: dict[str, list[int]] = {}
    expected: list[DeliveryCommand] = []
    clock = datetime.now(UTC)
    for phase in phases:
        for event in phase:
            recipient = event.recipient_id
            if isinstance(event, NotificationRequested):
                if gate(event, states.get(recipient), catalog) is not None:
                    continue
                t = catalog.get(event.tenant_id, event.notification_type)
                rule = catalog.rules(t).throttle if t is not None else None
                if t is not None and rule is not None:
                    k = rule.key(event.tenant_id, recipient, t)
                    passed, throttled[k] = admit(rule, throttled.get(k, []), min(event.occurred_at, clock))
                    if not passed:
                        continue
                p = plan(event, states.get(recipient), catalog, clock)
                assert not p.digested
                expected += p.commands + p.deferred
            else:
                states[recipient] = fold(states.get(recipient), event)
    return expected


def committed_commands(s: Settings) -> list[DeliveryCommand]:
    """Every command the router committed: on the delivery lanes and deferred to the scheduler."""
    n, found = names(s), []
    for channel in ("email", "sms", "push", "in_app", "webhook"):
        for topic in (n.delivery(channel), n.delivery(channel, urgent=True)):
            found += [default_codec().decode(r.value or b"") for r in read_all(s, topic)]
    found += [default_codec().decode(r.value or b"") for r in read_all(s, n.scheduled)]
    return [c for c in found if isinstance(c, DeliveryCommand)]


def assert_exactly(expected: list[DeliveryCommand], found: list[DeliveryCommand], phase_a: set[Any]) -> None:
    counts = Counter(c.delivery_id for c in found)
    duplicated = [d for d, k in counts.items() if k > 1]
    missing = {c.delivery_id for c in expected} - set(counts)
    extra = set(counts) - {c.delivery_id for c in expected}
    diag = Counter((c.notification_id in phase_a, c.channel) for c in expected if c.delivery_id in missing)
    diag_extra = Counter((c.notification_id in phase_a, c.channel) for c in found if c.delivery_id in extra)
    assert (len(missing), len(duplicated), len(extra)) == (0, 0, 0), (diag, diag_extra)
    assert sorted(map(key, found), key=str) == sorted(map(key, expected), key=str)


def test_sigkill_three_times_yields_exactly_the_planned_commands(topology: Settings) -> None:
    s, n, rng = topology, names(topology), random.Random(7)
    env = os.environ | {"TIDINGS_TOPIC_PREFIX": s.topic_prefix, "TIDINGS_PARTITIONS": str(s.partitions)}
    catalog_types = load(ROOT / "catalog")
    catalog = Catalog()
    for t in catalog_types:
        catalog.apply(t)
    first, changes = profiles(rng, 200), preference_changes(rng, 200)
    batch_a, batch_c = requests(rng, 5000, 200), requests(rng, 5000, 200)

    router = None
    try:
        with Client(s) as client:
            produce(s, [*catalog_types, *first, *batch_a], client)
            router = start_router(env)
            wait_for_lag(s, below=4000)
            kill(router)  # 1: mid-stream
            router = start_router(env)
            wait_for_lag(s, below=0)
            produce(s, changes, client)
            wait_for_lag(s, below=0)
            kill(router)  # 2: the preference changes are committed only in the changelog
            router = start_router(env)
            produce(s, batch_c, client)
            wait_for_lag(s, below=3000)
            kill(router)  # 3: mid-stream again
    finally:
        if router is not None and router.poll() is None:
            router.kill()
            router.wait()
    final = subprocess.run(
        [TIDINGS, "run", "router", "--instance", "0", "--idle-exit", "5"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert final.returncode == 0, final.stderr[-3000:]

    expected = expected_commands(catalog, (first, batch_a, changes, batch_c))
    found = committed_commands(s)
    assert_exactly(expected, found, phase_a={r.notification_id for r in batch_a})
    assert len(expected) > 10_000

    outcomes = [
        o
        for o in (default_codec().decode(r.value or b"") for r in read_all(s, n.outcomes))
        if isinstance(o, DeliveryOutcome)
    ]
    assert len({o.event_id for o in outcomes}) == len(outcomes), "an outcome was written twice"
    assert sum(o.status in ("QUEUED", "DEFERRED") for o in outcomes) == len(expected)
    assert not any(o.reason == "duplicate" for o in outcomes)
