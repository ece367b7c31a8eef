"""2,000 email commands through `tidings run gateway email` with a two-server SMTP chain.

The primary relay answers 421 (a 4xx) and is then shut down; the backup relay (a second profile of the
same provider, `smtp@backup`) takes over. Every message must arrive exactly once at the backup, with
the documented headers, and the outcomes topic must hold one terminal outcome per command.
"""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import read_all
from tests.servers.smtp import SmtpServer
from tidings.codec import default_codec
from tidings.config import Settings
from tidings.events import DeliveryCommand, DeliveryOutcome, RenderedContent
from tidings.kafka import EventProducer, Output
from tidings.topics import names

TIDINGS = str(Path(sys.executable).with_name("tidings"))
COUNT = 2000
TERMINAL = {"SENT", "FAILED", "EXPIRED", "SUPPRESSED"}
pytestmark = pytest.mark.timeout(600)


def commands() -> list[DeliveryCommand]:
    out = []
    for i in range(COUNT):
        out.append(
            DeliveryCommand(
                tenant_id="acme",
                delivery_id=uuid.uuid4(),
                notification_id=uuid.uuid4(),
                recipient_id=f"user-{i % 300}",
                notification_type="password.reset" if i % 10 == 0 else "order.shipped",
                category="security" if i % 10 == 0 else "orders",
                channel="email",
                priority="critical" if i % 10 == 0 else "normal",
                address=f"user-{i % 300}@example.com",
                content=RenderedContent(subject=f"Message {i}", body=f"Text {i}", html=f"<p>HTML {i}</p>"),
            )
        )
    return out


def gateway_env(s: Settings, primary: int, backup: int) -> dict[str, str]:
    return os.environ | {
        "TIDINGS_TOPIC_PREFIX": s.topic_prefix,
        "TIDINGS_PARTITIONS": str(s.partitions),
        "TIDINGS_RETRY_TIERS": s.retry_tiers,
        "TIDINGS_SMTP_PORT": str(primary),
        "TIDINGS_SMTP_SECURITY": "none",
        "TIDINGS_SMTP_TIMEOUT": "2",
        "TIDINGS_SMTP_BACKUP_PORT": str(backup),
        "TIDINGS_SMTP_BACKUP_SECURITY": "none",
        "TIDINGS_GATEWAY_CIRCUIT_COOLOFF": "5",
    }


def test_two_thousand_emails_fail_over_to_the_backup_relay(topology: Settings) -> None:
    s, n = topology, names(topology)
    sent = commands()
    with EventProducer(s) as producer:
        for c in sent:
            producer.produce(Output.event(n.delivery("email", urgent=c.priority == "critical"), c))

    async def scenario() -> tuple[SmtpServer, SmtpServer, int]:
        async with SmtpServer() as primary, SmtpServer() as backup:
            primary.mode = "unavailable"
            proc = await asyncio.create_subprocess_exec(
                TIDINGS,
                "run",
                "gateway",
                "email",
                "--provider",
                "smtp",
                "--provider",
                "smtp@backup",
                "--idle-exit",
                "6",
                env=gateway_env(s, primary.port, backup.port),
            )
            while primary.attempts < 3 and proc.returncode is None:
                await asyncio.sleep(0.05)
            await primary.stop()
            code = await asyncio.wait_for(proc.wait(), timeout=400)
            return primary, backup, code

    primary, backup, code = asyncio.run(scenario())
    assert code == 0
    assert primary.attempts >= 3 and primary.accepted == []
    by_id = Counter(str(m["Message-ID"]) for m in backup.accepted)
    expected = {f"<{c.delivery_id}@tidings.localhost>": c for c in sent}
    assert set(by_id) == set(expected) and set(by_id.values()) == {1}
    for message in backup.accepted:
        command = expected[str(message["Message-ID"])]
        assert message["To"] == command.address and message["Subject"] == command.content.subject
        assert message.get_content_type() == "multipart/alternative"
        assert ("List-Unsubscribe" in message) == (command.priority != "critical")
    outcomes: list[Any] = [default_codec().decode(r.value or b"") for r in read_all(s, n.outcomes)]
    terminal = Counter(
        (o.delivery_id, o.status, o.provider)
        for o in outcomes
        if isinstance(o, DeliveryOutcome) and o.status in TERMINAL
    )
    assert set(terminal.values()) == {1} and len(terminal) == COUNT
    assert {(status, provider) for (_, status, provider) in terminal} == {("SENT", "smtp@backup")}
    assert read_all(s, n.dlq) == []


def test_a_circuit_one_tenants_chain_needs_does_not_pause_the_partition_others_share(
    namespace: Any,
) -> None:
    """acme sends through `smtp` alone, which throttles for a minute; globex fails over to the backup.
    acme's commands wait in a retry tier; they paused the partition, and globex's behind them, until
    acme's provider reopened."""
    from gateways.runner import GatewayRunner
    from gateways.settings import GatewaySettings

    s = namespace(partitions=1, retry_tiers="1m,10m")

    async def scenario() -> tuple[SmtpServer, Counter[tuple[str, str]]]:
        async with SmtpServer() as primary, SmtpServer() as backup:
            primary.mode, primary.retry_after = "throttle", 60
            batch = commands()[:10]
            for i, c in enumerate(batch):
                batch[i] = c.model_copy(update={"tenant_id": "acme" if i % 2 == 0 else "globex"})
            with EventProducer(s) as producer:
                for c in batch:
                    producer.produce(Output.event(names(s).delivery("email"), c))
            providers = [primary.provider(), backup.provider().named("smtp@backup")]
            settings = GatewaySettings(concurrency=1, chains="acme=smtp")
            await GatewayRunner(s, "email", providers, settings).run(idle_exit_after=3)
        decoded = [default_codec().decode(r.value or b"") for r in read_all(s, names(s).outcomes)]
        return backup, Counter((o.tenant_id, o.status) for o in decoded if isinstance(o, DeliveryOutcome))

    backup, outcomes = asyncio.run(scenario())
    assert len(backup.accepted) == 5
    assert outcomes == {("globex", "SENT"): 5, ("acme", "RETRYING"): 5}


def test_a_half_open_provider_is_probed_by_a_command_that_needs_it(namespace: Any) -> None:
    """The default chain is smtp, smtp@backup; beta's is smtp@backup alone. Once the backup's circuit
    has cooled off, the first beta command probes it: default-chain commands, served by the primary,
    took the probe while their chain was built and beta's commands were refused until they failed."""
    from gateways.runner import GatewayRunner
    from gateways.settings import GatewaySettings

    s = namespace(partitions=1, retry_tiers="1m,10m")

    async def scenario() -> Counter[tuple[str, str]]:
        async with SmtpServer() as primary, SmtpServer() as backup:
            backup.mode, backup.retry_after = "throttle", 1
            batch = commands()[:13]
            first, rest = batch[0].model_copy(update={"tenant_id": "beta"}), batch[1:]
            rest = [
                c.model_copy(update={"tenant_id": "beta"}) if i % 3 == 1 else c for i, c in enumerate(rest)
            ]
            providers = [primary.provider(), backup.provider().named("smtp@backup")]
            settings = GatewaySettings(concurrency=1, chains="beta=smtp@backup")
            gateway = GatewayRunner(s, "email", providers, settings)
            running = asyncio.create_task(gateway.run(idle_exit_after=4))
            with EventProducer(s) as producer:
                producer.produce(Output.event(names(s).delivery("email"), first))
            await asyncio.sleep(3)
            backup.mode = "ok"
            with EventProducer(s) as producer:
                for c in rest:
                    producer.produce(Output.event(names(s).delivery("email"), c))
            await running
        decoded = [default_codec().decode(r.value or b"") for r in read_all(s, names(s).outcomes)]
        return Counter((o.tenant_id, o.status) for o in decoded if isinstance(o, DeliveryOutcome))

    outcomes = asyncio.run(scenario())
    assert outcomes == {("beta", "RETRYING"): 1, ("beta", "SENT"): 4, ("acme", "SENT"): 8}
