"""Rate limits and circuit breakers of the provider chain.

`TokenBucket` is cluster-wide: every gateway process draws from one bucket per provider in Redis, so
`rate_per_second` is the provider's contract limit however many gateways run. A draw reserves a token
even when the bucket is empty and returns how long to wait for it (the bucket goes into debt), which
spreads a burst evenly instead of letting every waiter retry at once; the clock is Redis's own `TIME`,
so hosts with skewed clocks agree.

`Slots` bounds the sends in flight in one process, shared by its partitions; a slot freed goes to the
most urgent lane waiting for one (the urgent lane, then retries, then the standard lane).

`Circuits` is per process: a provider that throttles (429, Retry-After, SMTP 4.7.x) is skipped until
its Retry-After passes, and one that fails `failures` times in a row (5xx, timeouts, resets) is skipped
for `cooloff` seconds, then tried again (half-open: one more failure reopens it). When every provider
of a chain is open, the runner pauses consumption until the first reopens instead of spinning retries.
A circuit is named by the runner: a provider, or a webhook endpoint. At `MAX_CIRCUITS` names (webhook
endpoints that failed and never succeeded since) the closed ones are forgotten.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from dataclasses import dataclass, field

import redis.asyncio as aioredis

from gateways.base import ProviderError, ProviderThrottled

DRAW = """
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or burst
local at = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * rate / 1000) - 1
redis.call('HSET', KEYS[1], 'tokens', tokens, 'at', now)
redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) * 1000 / rate) + 1000)
if tokens >= 0 then return 0 end
return math.ceil(-tokens * 1000 / rate)
"""

TAKE = """
local rate, burst, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or burst
tokens = math.min(burst, tokens + math.max(0, now - (tonumber(state[2]) or now)) * rate / 1000)
local wait = 0
if tokens >= cost then tokens = tokens - cost else wait = math.ceil((cost - tokens) * 1000 / rate) end
redis.call('HSET', KEYS[1], 'tokens', tokens, 'at', now)
redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) * 1000 / rate) + 1000)
return wait
"""


class TokenBucket:
    def __init__(self, client: aioredis.Redis, key: str, rate_per_second: float, burst: int) -> None:
        self.client, self.key = client, key
        self.rate, self.burst = rate_per_second, max(1, burst)
        self.script = client.register_script(DRAW)

    async def wait(self) -> float:
        """Seconds the caller must wait before its send fits the rate (the token is already reserved)."""
        millis = await self.script(keys=[self.key], args=[self.rate, self.burst])
        return int(millis) / 1000

    async def take(self, cost: int = 1) -> float:
        """0 when `cost` tokens were taken; else the seconds until they would be, taking nothing (a
        refused caller, told to come back later, does not push everyone else's turn further out)."""
        cost = min(cost, self.burst)  # a batch larger than the burst takes the whole bucket
        millis = await self.client.eval(TAKE, 1, self.key, self.rate, self.burst, cost)
        return int(millis) / 1000


MAX_CIRCUITS = 10_000
PROBE_WINDOW = 5.0
"""Seconds a half-open circuit's one probe has before another send may probe instead."""


@dataclass
class Circuit:
    failures: int = 0
    open_until: float = 0.0
    probe_until: float = 0.0
    opened_at: float = 0.0

    @property
    def reopens(self) -> float:
        return max(self.open_until, self.probe_until)


@dataclass
class Circuits:
    """Per label: closed; open for the cool-off (or a throttle's Retry-After) after `failures` failures
    in a row; then half-open, when one send at a time probes (every send in flight at the reopening
    went to a provider that was likely still down, each spending an attempt) until one succeeds. Times
    are the monotonic clock's, so a step of the wall clock (NTP, a VM resumed) neither reopens every
    circuit at once nor holds them open for the size of the step; `reopens_at` answers in epoch
    seconds, which partition holds are kept in."""

    failures: int = 5
    cooloff: float = 30.0
    state: dict[str, Circuit] = field(default_factory=dict)

    def closed(self, label: str) -> bool:
        """Whether a send may go; in the half-open state, True for the one send that probes."""
        circuit = self.state.get(label)
        if circuit is None or circuit.open_until == 0.0:
            return True
        now = time.monotonic()
        if circuit.reopens > now:
            return False
        circuit.probe_until = now + PROBE_WINDOW
        return True

    def is_open(self, label: str) -> bool:
        """Whether no send may go now (open, or half-open with its probe out); takes no probe."""
        circuit = self.state.get(label)
        return circuit is not None and circuit.reopens > time.monotonic()

    def success(self, label: str, started: float | None = None) -> None:
        """An answer from the provider. `started`: when its send began (monotonic); a send begun before
        the circuit opened says nothing about what opened it. With 64 sends in flight, the first of them
        to succeed after a 429 closed the throttled circuit at once, and the next commands went straight
        back to the throttled provider, each spending an attempt."""
        circuit = self.state.get(label)
        if circuit is not None and started is not None and circuit.open_until and started < circuit.opened_at:
            return
        self.state.pop(label, None)

    def failure(self, label: str, error: ProviderError) -> None:
        """Past `MAX_CIRCUITS` labels, the closed ones go, and the half of the open ones that reopen
        first: only the closed went, and a push service throttling a broadcast (a circuit per Web Push
        subscription, open a day) grew the dict without bound, rebuilt at every failure (19 ms each
        at 100,000, which stalled the event loop for every tenant)."""
        if len(self.state) >= MAX_CIRCUITS:
            now = time.monotonic()
            kept = {k: c for k, c in self.state.items() if c.reopens > now}
            if len(kept) > MAX_CIRCUITS // 2:
                kept = dict(sorted(kept.items(), key=lambda kc: kc[1].reopens)[-(MAX_CIRCUITS // 2) :])
            self.state = kept
        circuit = self.state.setdefault(label, Circuit())
        circuit.failures += 1
        circuit.probe_until = 0.0
        now = time.monotonic()
        if isinstance(error, ProviderThrottled):
            wait = self.cooloff if error.retry_after is None else error.retry_after
        elif circuit.failures >= self.failures:
            wait = self.cooloff
        else:
            return
        if now + wait > circuit.open_until:
            circuit.open_until, circuit.opened_at = now + wait, now

    def reopens_at(self, labels: list[str]) -> float:
        """When the first of these circuits lets a send go, as an epoch time."""
        first = min(self.state.get(label, Circuit()).reopens for label in labels)
        return time.time() + max(0.0, first - time.monotonic())


class Slots:
    """A semaphore whose waiters are served by rank (lowest first), in arrival order within a rank:
    with every slot taken by standard-lane sends, an urgent command is the next to send, not the
    last of hundreds queued before it."""

    def __init__(self, size: int) -> None:
        self.free = size
        self.waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self.arrivals = itertools.count()

    async def acquire(self, rank: int) -> None:
        if self.free > 0:
            self.free -= 1
            return
        waiter = asyncio.get_running_loop().create_future()
        heapq.heappush(self.waiters, (rank, next(self.arrivals), waiter))
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()
            raise

    def release(self) -> None:
        """Hands the slot to the first waiter still waiting; free slots and waiters never coexist."""
        while self.waiters:
            _, _, waiter = heapq.heappop(self.waiters)
            if not waiter.done():
                waiter.set_result(None)
                return
        self.free += 1


class Pace:
    """Token buckets per key in this process, for callers no provider contract bounds: an end user's
    inbox token looping `POST /v1/inbox/{id}/read` produced an engagement event (and a webhook to each
    of the tenant's destinations) per call. `take` spends `cost` tokens, or answers the seconds until
    they are there; the least recently used of more than `max_keys` keys is forgotten (a full bucket)."""

    def __init__(self, rate: float, burst: float, max_keys: int = 100_000) -> None:
        self.rate, self.burst, self.max_keys = rate, burst, max_keys
        self._buckets: dict[object, tuple[float, float]] = {}

    def take(self, key: object, cost: float = 1.0) -> float | None:
        now = time.monotonic()
        tokens, at = self._buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        wait = None if tokens >= min(cost, self.burst) else (min(cost, self.burst) - tokens) / self.rate
        self._buckets[key] = (tokens - cost if wait is None else tokens, now)
        if len(self._buckets) > self.max_keys:
            del self._buckets[next(iter(self._buckets))]
        return wait
