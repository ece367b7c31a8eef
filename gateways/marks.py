"""Per-delivery marks in Redis that make sends idempotent across restarts, rebalances and duplicates.

A mark is a small JSON value under `<prefix>tidings:delivery:<tenant>/<delivery_id>` (its `ref`):

* `{"state": "inflight", "owner": ...}` while one gateway sends it (short TTL: a crashed owner's mark
  expires and the command is sent again; only those in-flight sends can ever repeat);
* `{"state": "retry", "attempt": n}` once the command went to a retry tier: the retry record with
  attempt n claims it, an older copy of the command is a duplicate;
* `{"state": "done", "status": ..., "emitted": bool, ...}` once terminal. `emitted` turns true after
  the outcome records were acknowledged by Kafka, so a command re-read after a crash between the
  two re-emits its terminal outcome (same deterministic event id) instead of losing it or re-sending.
  A delivery that went to the DLQ (`dead_letter`) is claimed again by a `tidings dlq replay` of it
  (the record's `tidings.replayed.from`), once per replay: `replay` holds the one that last tried.

Claiming is one Lua script, so two gateways can never both claim the same delivery; it also reports whether
the address is on the gateway's dead-address list, and whether the command was requested before its
recipient's erasure (`<prefix>tidings:erased:<tenant>/<recipient>`, the erasure's log time in ms, noted by
whichever gateway reads the erasure from its urgent lane and kept `erased_ttl`). Claims and marks
issued in the same event-loop tick travel as one pipeline (`Pipelined`): with dozens of sends in flight that
turns three round trips per command into a few per batch.

Marks are per tenant: a delivery id is derived from the notification id, which a producer may choose,
so two tenants' deliveries can share one. Marks written before the tenant was part of the key
(`<prefix>tidings:delivery:<delivery_id>`) are still read by a claim that finds no mark of its own,
so a command in flight across the upgrade is not sent twice; only for a command requested before the
channel's first claim made with per-tenant keys (`<prefix>tidings:marks:<channel>:per-tenant-since`,
set by that claim, `SINCE_MARGIN_MS` late for clocks apart), since for a later one the old key can only
be another tenant's mark. They expire within `done_ttl`.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError, ReadOnlyError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from tidings.events import DeliveryCommand

REDIS_DOWN = (RedisConnectionError, RedisTimeoutError, ReadOnlyError, OutOfMemoryError, ResponseError)
"""Redis not answering, or refusing writes for a state of its own (a failover's demoted primary, memory
full, `MISCONF` after a failed snapshot, `NOREPLICAS`, `MASTERDOWN`): not the command's fault. Its
partition waits and tries again rather than the process crashing, and crash-looping for as long as the
state lasts; a send already made is recorded as sent without its mark. redis-py raises the last three
as plain `ResponseError` (`MasterDownError` is one), which is also what a script error is: paused on
rather than a crash loop that re-sends every claim in flight when its mark outlives the process."""

SINCE_MARGIN_MS = 5 * 60 * 1000
"""How much later than a channel's first per-tenant claim its old keys are still read: a command's
request time is another machine's clock (the API's, the router's), and one requested just before the
old gateways stopped is the one most likely to be read again."""
CLAIM = """
local current = redis.call('GET', KEYS[1])
if not current then
  redis.call('SET', KEYS[5], ARGV[7], 'NX')
  local since = tonumber(redis.call('GET', KEYS[5])) or 0
  if tonumber(ARGV[4]) < since then current = redis.call('GET', KEYS[4]) end
end
if current then
  local mark = cjson.decode(current)
  local retry_due = mark.state == 'retry' and tonumber(mark.attempt) == tonumber(ARGV[3])
  local replay_due = mark.state == 'done' and mark.dead_letter and ARGV[5] ~= '' and mark.replay ~= ARGV[5]
  local own_stale = ARGV[6] == '1' and current == ARGV[1]
  if not retry_due and not replay_due and not own_stale then return current end
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
local erased = tonumber(redis.call('GET', KEYS[3]) or '')
if erased and tonumber(ARGV[4]) < erased then return '{"state": "erased"}' end
if redis.call('EXISTS', KEYS[2]) == 1 then return '{"state": "suppressed"}' end
return false
"""
ERASED = """
local current = tonumber(redis.call('GET', KEYS[1]) or '')
if not current or current < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
elseif redis.call('TTL', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('EXPIRE', KEYS[1], ARGV[2])
end
"""
HOLD = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
"""
SWAP = """
for i, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[2 * i - 1] then redis.call('SET', key, ARGV[2 * i], 'KEEPTTL') end
end
"""


class Pipelined:
    """Sends the Redis commands issued during one event-loop tick as a single pipeline."""

    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client
        self.pending: list[tuple[Callable[[Pipeline], Any], asyncio.Future[Any]]] = []
        self.flushing: set[asyncio.Task[None]] = set()

    async def call(self, queue: Callable[[Pipeline], Any]) -> Any:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self.pending.append((queue, future))
        if len(self.pending) == 1:
            loop.call_soon(self._start)
        return await future

    def _start(self) -> None:
        task = asyncio.ensure_future(self._flush())
        self.flushing.add(task)
        task.add_done_callback(self.flushing.discard)

    async def _flush(self) -> None:
        batch, self.pending = self.pending, []
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                for queue, _ in batch:
                    queue(pipe)
                results = await pipe.execute(raise_on_error=False)
        except Exception as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), result in zip(batch, results, strict=True):
            if future.done():
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)


def mark_ref(command: DeliveryCommand) -> str:
    """A delivery's name among the marks. Tenant ids cannot hold `/`."""
    return f"{command.tenant_id}/{command.delivery_id}"


class Marks:
    def __init__(
        self,
        client: aioredis.Redis,
        prefix: str,
        owner: str,
        inflight_ttl: int,
        done_ttl: int,
        *,
        channel: str = "",
    ) -> None:
        self.client, self.prefix, self.owner = client, prefix, owner
        self.inflight_ttl, self.done_ttl = inflight_ttl, done_ttl
        self.pipelined = Pipelined(client)
        self.swap = client.register_script(SWAP)
        self.per_tenant_since = f"{prefix}tidings:marks:{channel}:per-tenant-since"

    def key(self, ref: str) -> str:
        return f"{self.prefix}tidings:delivery:{ref}"

    def legacy_key(self, ref: str) -> str:
        """Where the mark of `ref` was kept before marks were per tenant (see the module's docstring)."""
        return self.key(ref.partition("/")[2])

    def erased_key(self, tenant_id: str, recipient_id: str) -> str:
        """Tenant ids cannot hold `/`, so no two (tenant, recipient) pairs share a key."""
        return f"{self.prefix}tidings:erased:{tenant_id}/{recipient_id}"

    async def claim(
        self,
        ref: str,
        attempt: int,
        dead_key: str,
        erased_key: str,
        requested_ms: int,
        replay: str = "",
        *,
        retake: bool = False,
    ) -> dict[str, Any] | None:
        """None when this gateway now owns the send; else the mark that stands in the way, or, when it
        owns the send but must not make it, `{"state": "erased"}` (requested before its recipient's
        erasure) or `{"state": "suppressed"}` (the address is on the dead list). `retake` claims a
        delivery whose in-flight mark is this gateway's own: one it claimed and then stopped handling
        (Redis failed after the claim), which it would otherwise wait a claim's lifetime for."""
        inflight = json.dumps({"state": "inflight", "owner": self.owner})
        keys = [self.key(ref), dead_key, erased_key, self.legacy_key(ref), self.per_tenant_since]
        now_ms = int(time.time() * 1000)
        args: list[str | int] = [inflight, self.inflight_ttl, attempt, requested_ms, replay, int(retake)]
        args.append(now_ms + SINCE_MARGIN_MS)
        current = await self.pipelined.call(lambda pipe: pipe.eval(CLAIM, 5, *keys, *args))
        if current is None:
            return None
        mark: dict[str, Any] = json.loads(current)
        return mark

    async def hold(self, ref: str, seconds: float) -> None:
        """Keep this gateway's claim for `seconds` more (a send waiting its turn under a rate limit),
        unless it is no longer this gateway's."""
        inflight = json.dumps({"state": "inflight", "owner": self.owner})
        ttl = max(self.inflight_ttl, int(seconds) + 1)
        await self.pipelined.call(lambda pipe: pipe.eval(HOLD, 1, self.key(ref), inflight, ttl))

    async def erased(self, key: str, erased_ms: int, ttl: int) -> None:
        """Note an erasure's log time under `key` for at least `ttl` seconds, keeping the later of two."""
        await self.pipelined.call(lambda pipe: pipe.eval(ERASED, 1, key, erased_ms, ttl))

    async def put(self, ref: str, mark: dict[str, Any]) -> None:
        value = json.dumps(mark)
        await self.pipelined.call(lambda pipe: pipe.set(self.key(ref), value, ex=self.done_ttl))

    async def delete(self, key: str) -> None:
        await self.pipelined.call(lambda pipe: pipe.delete(key))

    async def release(self, ref: str, attempt: int) -> None:
        """Give back a claim without sending: the same command (same attempt) may claim it again."""
        await self.put(ref, {"state": "retry", "attempt": attempt, "emitted": True})

    async def emitted(self, marks: dict[str, dict[str, Any]]) -> None:
        """Flag marks whose records Kafka acknowledged, unless a later claim replaced them meanwhile."""
        if not marks:
            return
        keys = [self.key(ref) for ref in marks]
        args = [
            v for mark in marks.values() for v in (json.dumps(mark), json.dumps(mark | {"emitted": True}))
        ]
        await self.swap(keys=keys, args=args)
