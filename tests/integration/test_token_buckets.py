"""Token buckets on the real Redis: its clock stepping back charges nothing."""

from __future__ import annotations

import asyncio
import uuid

import redis.asyncio as aioredis

from gateways.limits import TokenBucket
from tidings.config import Settings


def test_a_redis_clock_stepping_back_does_not_put_the_bucket_in_debt(stack: Settings) -> None:
    """The elapsed time since the last draw was negative after a failover to a replica whose clock
    was behind (or an NTP step): 10 minutes back at 50/s made every send wait ten minutes."""

    async def scenario() -> tuple[float, float, float]:
        client = aioredis.Redis.from_url(stack.redis_url)
        try:
            seconds, _ = await client.time()
            ahead = (seconds + 600) * 1000
            draws, takes = f"test:bucket:{uuid.uuid4()}", f"test:bucket:{uuid.uuid4()}"
            for key in (draws, takes):
                await client.hset(key, mapping={"tokens": 100, "at": ahead})
            bucket = TokenBucket(client, draws, 50.0, 100)
            first, second = await bucket.wait(), await bucket.wait()
            taken = await TokenBucket(client, takes, 50.0, 100).take(10)
            await client.delete(draws, takes)
            return first, second, taken
        finally:
            await client.aclose()

    assert asyncio.run(scenario()) == (0.0, 0.0, 0.0)
