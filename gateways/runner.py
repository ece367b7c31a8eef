"""Consumes notifications.delivery.<channel> (urgent lane first) and its retry tiers; produces outcomes,
retries, feedback and dead letters. The urgent lane also carries the router's `RecipientErased`, noted
in Redis for the claims. The one consume loop of every channel gateway; what happens to each command
(claims, the provider chain, retries) is `gateways.handling`.

Each partition is a lane (`gateways.lanes`): the loop keeps fetching while sends are in flight, so a
slow send holds back only its own partition's commit. A partition stops where a command cannot proceed
yet (a retry not yet due, every circuit open, a delivery in flight elsewhere) and is paused until then,
so a throttled provider pauses consumption instead of spinning retries. Offsets are committed only
after their outputs are acknowledged; `stop()` finishes the sends in flight, emits and commits before
returning.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Sequence

import aiohttp
import redis.asyncio as aioredis

from gateways.base import Provider
from gateways.handling import dead_key as dead_key
from gateways.handling import failing_key as failing_key
from gateways.lanes import Lanes
from gateways.limits import Circuits, Slots, TokenBucket
from gateways.marks import REDIS_DOWN, Marks
from gateways.settings import GatewaySettings as GatewaySettings
from tidings.config import Settings
from tidings.kafka.admin import topics_starting
from tidings.kafka.aio import STOP_TIMEOUT_S, TP, AsyncConsumer, AsyncProducer
from tidings.metrics import Sample, lag_samples
from tidings.topics import names, parse_tiers, tier_seconds

log = logging.getLogger(__name__)


async def _release(what: str, step: Awaitable[object]) -> Exception | None:
    """One step of the shutdown; a failure is logged and the steps after it still run. A provider's
    `close()` raising skipped the rest: the consumer stayed in its group until its session timed out,
    holding its partitions from the other gateways for that long. Handing on the last outputs waits
    at most `STOP_TIMEOUT_S`: with the broker away it waited for the producer's request timeout (39 s
    measured), past a 30 s grace period. What is left is not lost: its offsets are not committed and
    its commands not flagged emitted, so the next owner of the partition emits them (again, with the
    same event ids, for any acknowledged just before the cut). Returns the failure, if any."""
    try:
        await step
    except Exception as exc:
        log.exception("shutdown: %s failed; the other steps go on", what)
        return exc
    return None


class GatewayRunner(Lanes):
    def __init__(
        self,
        settings: Settings,
        channel: str,
        providers: Sequence[Provider],
        gateway: GatewaySettings | None = None,
        *,
        rates: dict[str, tuple[float, int]] | None = None,
    ) -> None:
        n = names(settings)
        self.channel, self.providers, self.names = channel, list(providers), n
        self.config = c = gateway or GatewaySettings()
        by_label = {p.label: p for p in self.providers}
        unknown = {lb for labels in c.tenant_chains().values() for lb in labels if lb not in by_label}
        if unknown:
            raise ValueError(f"tenant chains name providers not in the chain: {', '.join(sorted(unknown))}")
        self.chains = {t: [by_label[lb] for lb in labels] for t, labels in c.tenant_chains().items()}
        self.settings = settings
        self.tiers = parse_tiers(settings.retry_tiers)
        if self.tiers and c.erased_ttl < 2 * tier_seconds(self.tiers[-1]):
            raise ValueError("TIDINGS_GATEWAY_ERASED_TTL must be at least twice the longest retry tier")
        self.urgent, self.standard = n.delivery(channel, urgent=True), n.delivery(channel)
        self.retries = [n.retry(channel, t) for t in self.tiers]
        self.ranks = {self.urgent: 0, **{t: 1 for t in self.retries}, self.standard: 2}
        self.prefix = settings.topic_prefix
        self.group = f"{settings.topic_prefix}tidings.gateway.{channel}"
        self.consumer = AsyncConsumer(
            settings,
            group_id=self.group,
            topics=[self.urgent, self.standard, *self.retries],
            max_records=100,
            on_revoked=self._revoked,
        )
        self.producer = AsyncProducer(settings)
        self.redis = aioredis.Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=2)
        owner = f"{channel}/{uuid.uuid4()}"
        self.marks = Marks(self.redis, self.prefix, owner, c.inflight_ttl, c.done_ttl, channel=channel)
        self.circuits = Circuits(c.circuit_failures, c.circuit_cooloff)
        self.buckets = {
            label: TokenBucket(self.redis, f"{self.prefix}tidings:rate:{channel}:{label}", rate, burst)
            for label, (rate, burst) in (c.rate_limits() if rates is None else rates).items()
        }
        self.slots = Slots(c.concurrency)
        self.sending = set()
        self.active = Counter()
        self.stopping = asyncio.Event()
        self.counts: dict[str, int] = {}
        self._start_lanes()
        self.first_batch_at: float | None = None
        self.last_commit_at: float | None = None
        self.lag: dict[TP, int] = {}
        self._lag_at = 0.0

    async def _read_retired_tiers(self) -> None:
        """Also read the retry topics of tiers no longer configured: records in them would otherwise
        stay RETRYING for good after TIDINGS_RETRY_TIERS changed. Each is read as a retry tier; a
        command failing again whose attempt is past the new tiers fails as exhausted. With no tiers
        configured at all they are read too (until session 27 they were not)."""
        prefix = self.names.retry(self.channel, "")
        found = await asyncio.to_thread(topics_starting, self.settings, prefix)
        retired = [t for t in found if t not in self.retries]
        if retired:
            log.warning("reading retry topics of tiers no longer configured: %s", ", ".join(retired))
            self.ranks |= {t: 1 for t in retired}
            self.consumer.subscribe([self.urgent, self.standard, *self.retries, *retired])

    async def _keep_claims(self) -> None:
        """Every third of a claim's lifetime, extend the claims of the sends in progress. A chain walk
        can outlast a claim (a rate-limit wait, then an SMTP server taking its 30 s per step, then
        the backup's): the claim expired mid-send, and the partition's new owner after a rebalance
        sent the command a second time, with no process killed."""
        ttl = self.config.inflight_ttl
        while True:
            await asyncio.sleep(ttl / 3)
            held = [self.marks.hold(d, ttl) for d in list(self.sending)]
            for result in await asyncio.gather(*held, return_exceptions=True):
                if isinstance(result, Exception) and not isinstance(result, REDIS_DOWN):
                    log.warning("could not hold a claim: %r", result)

    async def run(self, *, idle_exit_after: float | None = None) -> None:
        await self._read_retired_tiers()
        await self.consumer.start()
        await self.producer.start()
        keeper = asyncio.create_task(self._keep_claims())
        hand_on = asyncio.create_task(self._hand_on())
        hand_on.add_done_callback(self._watch)
        last_input = time.monotonic()
        ended = False
        try:
            async with aiohttp.ClientSession() as session:
                self.session = session
                try:
                    while not self.stopping.is_set():
                        self._resume_due()
                        fetched = await self.consumer.batch()
                        for tp in sorted(fetched, key=lambda tp: self.ranks.get(tp[0], 3)):
                            self._queue(tp, fetched[tp])
                        if time.monotonic() - self._lag_at >= 1.0:
                            self.lag, self._lag_at = await self.consumer.lag(), time.monotonic()
                        if fetched or self._busy(idle_exit_after) or not self.consumer.assignment():
                            last_input = time.monotonic()
                        elif idle_exit_after is not None and time.monotonic() - last_input > idle_exit_after:
                            break
                finally:
                    await self._close()
            if self.failure is not None:
                raise self.failure
            ended = True
        finally:
            keeper.cancel()
            drain: Exception | None = None
            if not hand_on.done():
                self.drained = True
                self.wake.set()
                drain = await _release(
                    "handing on the last outputs", asyncio.wait_for(hand_on, STOP_TIMEOUT_S)
                )
            for provider in self.providers:
                await _release(f"closing provider {provider.label}", provider.close())
            await _release("stopping the producer", self.producer.stop())
            await _release("leaving the consumer group", self.consumer.stop())
            await _release("closing Redis", self.redis.aclose())
            if ended and drain is not None and not isinstance(drain, TimeoutError):
                raise drain

    def stop(self) -> None:
        self.stopping.set()

    def samples(self) -> list[Sample]:
        """Commands handled by result (sent, retries, exhausted, duplicates, ...), paused partitions, and
        commands fetched and waiting for a slot or started and not handed on (behind a slow send)."""
        events = [
            Sample("gateway_events", n, labels={"channel": self.channel, "event": what})
            for what, n in sorted(dict(self.counts).items())
        ]
        paused = Sample("paused_partitions", len(self.paused_until), "gauge", {"channel": self.channel})
        lanes = list(self.partitions.values())
        counted = {
            "waiting": sum(len(x.waiting) for x in lanes),
            "running": sum(len(x.running) for x in lanes),
        }
        held = [
            Sample("gateway_commands", n, "gauge", {"channel": self.channel, "state": state})
            for state, n in counted.items()
        ]
        return [*events, paused, *held, *lag_samples(self.lag)]
