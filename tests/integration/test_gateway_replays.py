"""A command read twice while its first copy's outputs are being produced: the second copy's claim
reads the mark before the first's emitted flag is set, and its result arrives after."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import redis.asyncio

from gateways.marks import mark_ref
from gateways.runner import GatewayRunner
from tests.integration.test_gateway_runner import accepting, commands, outcomes, produce, runner, serve
from tidings.config import Settings


def test_a_copy_whose_claim_read_the_mark_before_its_emitted_flag_is_a_duplicate(
    namespace: Callable[..., Settings],
) -> None:
    """The CI run of session 19 lost this race once: the copy's replay was emitted again (a second
    SENT outcome) because the first copy's key had left the unemitted set by the time it ended."""
    s = namespace()
    received: list[bytes] = []

    async def scenario() -> GatewayRunner:
        app_runner, base = await serve(accepting(received))
        command = commands(f"{base}/hook", 1)[0]
        produce(s, [command, command])
        gateway = runner(s, busy_backoff=0.2)
        claim, flag = gateway.marks.claim, gateway.marks.emitted
        key = mark_ref(command)
        read_unflagged = asyncio.Event()

        async def late_claim(*args: Any, **kwargs: Any) -> dict[str, Any] | None:
            mark = await claim(*args, **kwargs)
            if mark is not None and mark["state"] == "done" and not mark.get("emitted"):
                read_unflagged.set()
                deadline = time.monotonic() + 10
                while key not in gateway.emitted_at and time.monotonic() < deadline:
                    await asyncio.sleep(0.01)
            return mark

        async def late_flag(marks: dict[str, dict[str, Any]]) -> None:
            if key in marks:
                await asyncio.wait_for(read_unflagged.wait(), 10)
            await flag(marks)

        gateway.marks.claim = late_claim  # type: ignore[method-assign]
        gateway.marks.emitted = late_flag  # type: ignore[method-assign]
        await gateway.run(idle_exit_after=3)
        await app_runner.cleanup()
        return gateway

    gateway = asyncio.run(scenario())
    assert len(received) == 1
    assert gateway.counts["duplicates"] == 1 and "re_emitted" not in gateway.counts
    assert [o.status for o in outcomes(s)] == ["SENT"]


def test_two_tenants_deliveries_with_one_id_are_each_sent(namespace: Callable[..., Settings]) -> None:
    """A delivery id derives from the notification id, which a producer may choose: another tenant's
    delivery with the same id is not a duplicate of this one."""
    s = namespace()
    received: list[bytes] = []

    async def scenario() -> GatewayRunner:
        app_runner, base = await serve(accepting(received))
        command = commands(f"{base}/hook", 1)[0]
        produce(s, [command, command.model_copy(update={"tenant_id": "globex"})])
        gateway = runner(s)
        await gateway.run(idle_exit_after=3)
        await app_runner.cleanup()
        return gateway

    gateway = asyncio.run(scenario())
    assert len(received) == 2
    assert "duplicates" not in gateway.counts
    assert sorted(o.tenant_id for o in outcomes(s)) == ["acme", "globex"]


def test_a_mark_written_before_marks_were_per_tenant_dedupes_only_what_was_requested_before(
    namespace: Callable[..., Settings],
) -> None:
    """A command sent by a gateway of the version before, read again by this one, is not sent twice;
    a command requested since this version's first claim is not deduped by the old key, which can
    then only be another tenant's mark."""
    s = namespace()
    received: list[bytes] = []

    async def scenario() -> GatewayRunner:
        app_runner, base = await serve(accepting(received))
        since = datetime.now(UTC) - timedelta(minutes=1)
        old, new = commands(f"{base}/hook", 2)
        old = old.model_copy(update={"requested_at": since - timedelta(minutes=1)})
        gateway = runner(s)
        sent = {"state": "done", "status": "SENT", "reason": None, "attempt": 0, "emitted": True}
        client = redis.asyncio.Redis.from_url(s.redis_url)
        await client.set(gateway.marks.per_tenant_since, int(since.timestamp() * 1000))
        for c in (old, new):
            await client.set(gateway.marks.legacy_key(mark_ref(c)), json.dumps(sent), ex=60)
        await client.aclose()
        produce(s, [old, new])
        await gateway.run(idle_exit_after=3)
        await app_runner.cleanup()
        return gateway

    gateway = asyncio.run(scenario())
    assert len(received) == 1 and b'"i": 1' in received[0]
    assert gateway.counts["duplicates"] == 1
