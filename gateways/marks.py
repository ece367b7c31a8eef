"""Per-delivery marks in Redis that make sends idempotent across restarts, rebalances and duplicates.

A mark is a small JSON value under `<prefix>tidings:delivery:<delivery_id>`:

* `{"state": "inflight", "owner": ...}` while one gateway sends it (short TTL: a crashed owner's mark
  expires and the command is sent again; only those in-flight sends can ever repeat);
* `{"state": "retry", "attempt": n}` once the command went to a retry tier: the retry record with
  attempt n claims it, an older copy of the command is a duplicate;
* `{"state": "done", "status": ..., "emitted": bool, ...}` once terminal. `emitted` turns true after
  the outcome records were acknowledged by Kafka, so a command re-read after a crash between the
  two re-emits its terminal outcome (same deterministic event id) instead of losing it or re-sending.

Claiming is one Lua script, so two gateways can never both claim the same delivery.
"""

from __future__ import annotations

import json
from typing import Any

import redis.asyncio as aioredis

CLAIM = """
local current = redis.call('GET', KEYS[1])
if current then
  local mark = cjson.decode(current)
  local retry_due = mark.state == 'retry' and tonumber(mark.attempt) == tonumber(ARGV[3])
  if not retry_due then return current end
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return false
"""
SWAP = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL') end
"""


class Marks:
    def __init__(
        self, client: aioredis.Redis, prefix: str, owner: str, inflight_ttl: int, done_ttl: int
    ) -> None:
        self.client, self.prefix, self.owner = client, prefix, owner
        self.inflight_ttl, self.done_ttl = inflight_ttl, done_ttl
        self.script = client.register_script(CLAIM)
        self.swap = client.register_script(SWAP)

    def key(self, delivery_id: object) -> str:
        return f"{self.prefix}tidings:delivery:{delivery_id}"

    async def claim(self, delivery_id: object, attempt: int) -> dict[str, Any] | None:
        """None when this gateway now owns the send; else the mark that stands in the way."""
        inflight = json.dumps({"state": "inflight", "owner": self.owner})
        current = await self.script(keys=[self.key(delivery_id)], args=[inflight, self.inflight_ttl, attempt])
        if current is None:
            return None
        mark: dict[str, Any] = json.loads(current)
        return mark

    async def put(self, delivery_id: object, mark: dict[str, Any]) -> None:
        await self.client.set(self.key(delivery_id), json.dumps(mark), ex=self.done_ttl)

    async def release(self, delivery_id: object, attempt: int) -> None:
        """Give back a claim without sending: the same command (same attempt) may claim it again."""
        await self.put(delivery_id, {"state": "retry", "attempt": attempt, "emitted": True})

    async def emitted(self, marks: dict[str, dict[str, Any]]) -> None:
        """Flag marks whose records Kafka acknowledged, unless a later claim replaced them meanwhile."""
        if not marks:
            return
        async with self.client.pipeline(transaction=False) as pipe:
            for delivery_id, mark in marks.items():
                new = json.dumps(mark | {"emitted": True})
                await self.swap(keys=[self.key(delivery_id)], args=[json.dumps(mark), new], client=pipe)
            await pipe.execute()
