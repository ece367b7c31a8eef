"""Consumes the inbox doorbells a Redis pattern subscription carries; produces a wake-up for each socket
listening on the recipient's channel.

A doorbell only says "look again" (`gateways.inapp._feed`): after a Redis reconnect every socket is
woken, so a lost doorbell costs latency, never an item.
"""

from __future__ import annotations

import asyncio
import logging

import redis.asyncio as aioredis

from gateways.inapp._feed import doorbell_pattern

log = logging.getLogger(__name__)
POLL_S = 1.0


class Doorbells:
    """One Redis pattern subscription, fanned out to the events of the sockets listening per channel."""

    def __init__(self, redis_url: str, prefix: str) -> None:
        self.redis_url, self.pattern = redis_url, doorbell_pattern(prefix)
        self.bells: dict[str, set[asyncio.Event]] = {}
        self.task: asyncio.Task[None] | None = None
        self.stopping = asyncio.Event()

    def register(self, channel: str) -> asyncio.Event:
        bell = asyncio.Event()
        self.bells.setdefault(channel, set()).add(bell)
        return bell

    def unregister(self, channel: str, bell: asyncio.Event) -> None:
        listeners = self.bells.get(channel, set())
        listeners.discard(bell)
        if not listeners:
            self.bells.pop(channel, None)

    def ring_all(self) -> None:
        for listeners in self.bells.values():
            for bell in listeners:
                bell.set()

    async def listen(self) -> None:
        """Until `stop()`. It polls for a message a second at a time rather than waiting in
        `pubsub.listen()`: a cancelled read there is not given up until a message arrives, so an edge
        stopping while no doorbell rang waited for ever."""
        while not self.stopping.is_set():
            client = aioredis.Redis.from_url(self.redis_url)
            try:
                async with client.pubsub() as pubsub:
                    await pubsub.psubscribe(self.pattern)
                    self.ring_all()
                    while not self.stopping.is_set():
                        message = await pubsub.get_message(timeout=POLL_S)
                        if message is not None and message.get("type") == "pmessage":
                            for bell in self.bells.get(message["channel"].decode(), ()):
                                bell.set()
            except (aioredis.RedisError, OSError) as exc:
                log.warning("inbox doorbells lost Redis, reconnecting: %s", exc)
                await asyncio.sleep(POLL_S)
            finally:
                await client.aclose()

    async def stop(self) -> None:
        self.stopping.set()
        if self.task is not None:
            await asyncio.wait({self.task}, timeout=5 * POLL_S)
            self.task.cancel()
