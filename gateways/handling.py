"""Consumes one delivery command (or a forwarded erasure); produces its outcome, retry, feedback and
dead-letter records, for `gateways.runner`, which owns the consume loop and sets the attributes below.

For each command: claim its `delivery_id` in Redis (`gateways.marks`: a delivery sent, failed or
expired is never sent again, one in flight elsewhere waits), cancel it (CANCELLED `erased`) when it was
requested before its recipient's erasure, refuse an address this gateway saw die, drop it as EXPIRED
past `expires_at`, else walk the provider chain, skipping providers whose circuit is open and waiting
for each provider's cluster-wide rate limit (`gateways.limits`). Success is SENT; a permanent refusal
is FAILED (with feedback when the address is dead); when every provider failed retriably the command
goes to the next retry tier that covers the provider's Retry-After, with a RETRYING outcome; after the
last tier it is FAILED and dead-lettered.

A webhook's circuit is its endpoint's; a webhook whose endpoint's circuit is open goes to a retry tier
instead of pausing the partition (`_circuit`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import redis.asyncio as aioredis

from gateways.base import DeliveryRejected, Provider, ProviderError, ProviderThrottled, ProviderUnavailable
from gateways.limits import Circuits, TokenBucket
from gateways.marks import REDIS_DOWN, Marks, mark_ref
from gateways.outputs import from_mark
from gateways.settings import GatewaySettings
from tidings.codec import default_codec
from tidings.errors import CodecError, InvalidEvent
from tidings.events import RELAY_RECIPIENT as DESTINATION_RECIPIENT
from tidings.events import DeliveryCommand, RecipientErased
from tidings.kafka import Incoming, Output
from tidings.kafka.records import dead_letter
from tidings.topics import Names, tier_seconds

log = logging.getLogger(__name__)
REPLAYED_FROM = "tidings.replayed.from"


@dataclass
class Handled:
    outputs: list[Output] = field(default_factory=list)
    mark: tuple[str, dict[str, Any]] | None = None
    replayed: bool = False


@dataclass
class Blocked:
    until: float


def dead_key(prefix: str, command: DeliveryCommand) -> str:
    """The key of an address on the dead list. Tenant ids cannot hold '/' and channels hold neither '/'
    nor ':', so the address, which may hold anything, is the rest of the key and two tenants' addresses
    never share one."""
    return f"{prefix}tidings:dead:{command.tenant_id}/{command.channel}:{command.address}"


def failing_key(prefix: str, command: DeliveryCommand) -> str:
    """The key counting a webhook endpoint's exhausted deliveries, separated like `dead_key`."""
    return f"{prefix}tidings:failing:{command.tenant_id}/{command.address}"


class CommandHandling:
    channel: str
    names: Names
    config: GatewaySettings
    providers: list[Provider]
    chains: dict[str, list[Provider]]
    tiers: list[str]
    urgent: str
    prefix: str
    group: str
    redis: aioredis.Redis
    marks: Marks
    circuits: Circuits
    buckets: dict[str, TokenBucket]
    session: aiohttp.ClientSession
    counts: dict[str, int]
    sending: set[str]
    """Deliveries (`mark_ref`) whose chain is being walked: their claims are held until it ends."""
    active: Counter[str]
    """Deliveries being handled, by copies: a second copy of one in flight here waits for the first."""
    stopping: asyncio.Event

    def _count(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1

    async def handle(self, record: Incoming) -> Handled | Blocked:
        try:
            record.check_headers()
            command = record.decode(default_codec())
            if isinstance(command, RecipientErased) and record.topic == self.urgent:
                return await self._erased(command)
            if not isinstance(command, DeliveryCommand):
                raise InvalidEvent(f"{type(command).__name__} is not a DeliveryCommand")
        except (CodecError, InvalidEvent) as exc:
            self._count("dead_letters")
            return Handled([dead_letter(record, exc, self.group, self.names.dlq)])
        ref = mark_ref(command)
        self.active[ref] += 1
        try:
            return await self._claimed(record, command)
        finally:
            self.active[ref] -= 1
            if not self.active[ref]:
                del self.active[ref]

    async def _claimed(self, record: Incoming, command: DeliveryCommand) -> Handled | Blocked:
        """Claims the command, then sends it or says why not. A mark of this gateway's own, in flight,
        while no other copy of the command is handled here, is a claim whose handling failed after
        it was made (Redis stopped answering): taken again at once, not waited out for a minute."""
        claim = functools.partial(
            self.marks.claim,
            mark_ref(command),
            command.attempt,
            dead_key(self.prefix, command),
            self.marks.erased_key(command.tenant_id, command.recipient_id),
            int(command.request_time.timestamp() * 1000),
            (record.header(REPLAYED_FROM) or b"").decode(errors="replace"),
        )
        mark = await claim()
        own = mark is not None and mark["state"] == "inflight" and mark.get("owner") == self.marks.owner
        if own and self.active[mark_ref(command)] == 1:
            mark = await claim(retake=True)
        if mark is not None and mark["state"] == "erased":
            return await self._finish(command, "CANCELLED", "erased")
        if mark is not None and mark["state"] == "suppressed":
            return await self._finish(command, "SUPPRESSED", "address_dead")
        if mark is not None:
            if mark["state"] == "inflight":
                self._count("busy")
                return Blocked(time.time() + self.config.busy_backoff)
            if mark.get("emitted"):
                self._count("duplicates")
                return Handled()
            outputs = from_mark(self.names, command, mark)
            if mark.get("dead_letter"):
                error = ProviderError(mark.get("detail") or mark.get("reason") or "failed")
                outputs.append(dead_letter(record, error, self.group, self.names.dlq, mark["dead_letter"]))
            return Handled(outputs, (mark_ref(command), mark), True)
        if command.expires_at is not None and command.expires_at.timestamp() <= time.time():
            return await self._finish(command, "EXPIRED", "expired")
        return await self._send(record, command)

    async def _erased(self, event: RecipientErased) -> Handled:
        """Note the erasure the router forwarded (stamped with its log time), so that every command
        requested before it and claimed from now on, from a lane or a retry tier, is CANCELLED `erased`
        instead of sent."""
        key = self.marks.erased_key(event.tenant_id, event.recipient_id)
        await self.marks.erased(key, int(event.occurred_at.timestamp() * 1000), self.config.erased_ttl)
        self._count("erasures")
        return Handled()

    async def _send(self, record: Incoming, command: DeliveryCommand) -> Handled | Blocked:
        providers = [p for p in self.chains.get(command.tenant_id, self.providers) if p.accepts(command)]
        if not providers:
            reason = f"no {self.channel} provider for this address" + (
                f" (platform {command.address_params['platform']})"
                if "platform" in command.address_params
                else ""
            )
            return await self._finish(command, "FAILED", reason)
        circuit = {p.label: self._circuit(p, command) for p in providers}
        chain = [p for p in providers if not self.circuits.is_open(circuit[p.label])]
        if not chain:
            return await self._circuits_open(record, command, providers, circuit)
        self.sending.add(mark_ref(command))
        try:
            handled = await self._walk(record, command, chain, circuit)
        finally:
            self.sending.discard(mark_ref(command))
        if handled is None:
            return await self._circuits_open(record, command, providers, circuit)
        return handled

    async def _circuits_open(
        self, record: Incoming, command: DeliveryCommand, providers: list[Provider], circuit: dict[str, str]
    ) -> Handled | Blocked:
        """Every provider's circuit is open: the partition waits for the first to reopen, or the
        command goes to the retry tier covering it (see `_others_open`)."""
        reopens = self.circuits.reopens_at([circuit[p.label] for p in providers])
        self._count("circuit_open")
        if all(p.per_endpoint for p in providers) or self._others_open(providers):
            reopening = ProviderThrottled("the circuit is open", max(0.0, reopens - time.time()))
            return await self._retry(record, command, reopening)
        await self.marks.release(mark_ref(command), command.attempt)
        return Blocked(reopens)

    async def _turn(self, wait: float) -> bool:
        """Waits `wait` seconds for a rate-limit token; False when the gateway is stopping first. A stop
        waited out every send's token, minutes at a low rate with many sends queued on one bucket,
        and ended in the supervisor's SIGKILL; the command, not sent, is read again by the next run."""
        if wait <= 0:
            return True
        try:
            await asyncio.wait_for(self.stopping.wait(), wait)
        except TimeoutError:
            return True
        return False

    async def _walk(
        self, record: Incoming, command: DeliveryCommand, chain: list[Provider], circuit: dict[str, str]
    ) -> Handled | Blocked | None:
        """Try the chain's providers in turn; the claim is held meanwhile (`sending`). A provider's
        half-open probe is taken just before its send: taken while the chain was built, it went to
        commands another provider then served, and the commands that needed this one were refused.
        A rejection of the message, permanent or not, is an answer: the provider is up. None when no
        provider was tried (each circuit opened, or its one probe was taken, during the token wait):
        that is no failure of this command's, and it spent an attempt, the last one FAILED."""
        failure: ProviderError | None = None
        for provider in chain:
            if bucket := self.buckets.get(provider.label):
                wait = await bucket.wait()
                if wait > self.config.inflight_ttl / 2:
                    await self.marks.hold(mark_ref(command), wait + self.config.inflight_ttl)
                if not await self._turn(wait):
                    await self.marks.release(mark_ref(command), command.attempt)
                    self._count("unsent_at_stop")
                    return Blocked(time.time())
                if command.expires_at is not None and command.expires_at.timestamp() <= time.time():
                    return await self._finish(command, "EXPIRED", "expired while waiting for its turn")
            if not self.circuits.closed(circuit[provider.label]):
                continue
            started = time.monotonic()
            try:
                sent = await provider.send(self.session, command)
            except DeliveryRejected as exc:
                self.circuits.success(circuit[provider.label], started)
                if not exc.permanent:
                    failure = exc
                    if exc.failover:
                        continue
                    break
                dead = exc.reason if exc.address_dead else None
                if dead:
                    await self._refuse_address(command, dead)
                about = {"feedback_at": int(exc.dead_since * 1000)} if dead and exc.dead_since else {}
                about |= {"refused": exc.refused} if dead else {}
                return await self._finish(
                    command, "FAILED", exc.reason, provider=provider.label, feedback=dead, **about
                )
            except ProviderError as exc:
                self.circuits.failure(circuit[provider.label], exc)
                failure = exc
                continue
            except Exception as exc:
                log.exception("%s raised on delivery %s", provider.label, command.delivery_id)
                self._count("provider_errors")
                return await self._dead_letter(
                    record, command, exc, "provider_error", provider=provider.label, detail=repr(exc)
                )
            self.circuits.success(circuit[provider.label], started)
            self._count("sent")
            if self.channel == "webhook":
                with contextlib.suppress(*REDIS_DOWN):
                    await self.marks.delete(failing_key(self.prefix, command))
            return await self._finish(
                command, "SENT", None, provider=provider.label, provider_message_id=sent.provider_message_id
            )
        if failure is None:
            return None
        return await self._retry(record, command, failure)

    def _others_open(self, providers: list[Provider]) -> bool:
        """Whether a provider this command cannot use is up: then other commands of its partition
        (another push platform, a tenant with another chain) can still be sent, and this one goes to
        the retry tier covering its providers' reopening instead of pausing the partition for all.
        Only when no provider of the channel can send does the partition wait; a provider whose
        circuits are per endpoint (Web Push) counts as up."""
        return any(
            p not in providers and (p.per_endpoint or not self.circuits.is_open(p.label))
            for p in self.providers
        )

    def _circuit(self, provider: Provider, command: DeliveryCommand) -> str:
        """The circuit of a provider whose addresses are endpoints others run (`per_endpoint`: a
        webhook, a Web Push subscription) is the tenant's endpoint's (its URL without query), not the
        provider's: one endpoint throttling or failing, maybe on purpose (a 429 with a day's
        Retry-After), must not hold up every other tenant's deliveries, nor another tenant's hooks on
        the same host (hooks.slack.com). Commands to an endpoint whose circuit is open go to a retry
        tier covering its reopening (an attempt each) rather than pausing their partition, which other
        endpoints share."""
        if not provider.per_endpoint:
            return provider.label
        try:
            parts = urlsplit(command.address)
        except ValueError:
            return f"{provider.label} {command.tenant_id} {command.address}"
        endpoint = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"
        return f"{provider.label} {command.tenant_id} {endpoint}"

    async def _retry(
        self, record: Incoming, command: DeliveryCommand, failure: ProviderError | None
    ) -> Handled:
        detail = str(failure) if failure else "no provider"
        if command.attempt >= len(self.tiers):
            self._count("exhausted")
            dead = await self._endpoint_failed(command)
            error = failure or ProviderUnavailable(detail)
            at = {"feedback_at": int(time.time() * 1000)} if dead else {}
            return await self._dead_letter(
                record, command, error, "retries_exhausted", detail=detail, feedback=dead, **at
            )
        tier, delay = self._tier(command, failure)
        self._count("retries")
        mark = {
            "state": "retry",
            "attempt": command.attempt + 1,
            "tier": tier,
            "due": int((time.time() + delay) * 1000),
            "detail": detail,
        }
        await self._record(mark_ref(command), mark)
        return Handled(from_mark(self.names, command, mark), (mark_ref(command), mark))

    def _tier(self, command: DeliveryCommand, failure: ProviderError | None) -> tuple[str, float]:
        """The retry tier and delay: the command's next tier, or a later one whose delay covers the
        provider's Retry-After. A tier's records come due in the order they were written only while
        each waits no longer than the tier's own delay; one waiting longer would hold up every retry
        behind it in its partition. A Retry-After beyond the longest tier gets the longest tier: for a
        throttled provider (429) its open circuit holds the command until the rest has passed, while
        other failures (a 503's Retry-After) are tried again then, sooner than asked."""
        wanted = 0.0
        if (
            isinstance(failure, ProviderThrottled | ProviderUnavailable | DeliveryRejected)
            and failure.retry_after
        ):
            wanted = failure.retry_after
        later = self.tiers[command.attempt :]
        tier = next((t for t in later if tier_seconds(t) >= wanted), later[-1])
        return tier, float(tier_seconds(tier))

    async def _dead_letter(
        self, record: Incoming, command: DeliveryCommand, error: Exception, reason: str, **fields: Any
    ) -> Handled:
        """FAILED, and the command in the DLQ for `tidings dlq replay` once the cause is fixed. An
        exception a provider did not turn into a ProviderError (its own defect, or input it could not
        take) ends here too, rather than crashing the gateway on every restart. The mark records the
        dead letter, so an outcome re-emitted after a crash brings its dead letter along."""
        if replay := record.header(REPLAYED_FROM):
            fields["replay"] = replay.decode(errors="replace")
        handled = await self._finish(command, "FAILED", reason, dead_letter=type(error).__name__, **fields)
        handled.outputs.append(dead_letter(record, error, self.group, self.names.dlq))
        return handled

    async def _record(self, ref: str, mark: dict[str, Any]) -> None:
        """Put the mark, trying for half a claim's lifetime while Redis is unreachable, then going on
        without it. Once a send happened, a Redis error must not turn it into `Blocked`: the command
        would be read again and, when its claim expired, sent again. The outputs carry deterministic
        ids, so emitting them without the mark loses nothing; only a later copy of the command could
        then repeat the send."""
        deadline, pause = time.monotonic() + self.config.inflight_ttl / 2, 0.1
        while True:
            try:
                await self.marks.put(ref, mark)
                return
            except REDIS_DOWN as exc:
                self._count("redis_unavailable")
                if time.monotonic() + pause > deadline:
                    self._count("marks_lost")
                    log.warning("redis unavailable, delivery %s goes on without its mark: %s", ref, exc)
                    return
                await asyncio.sleep(pause)
                pause = min(2 * pause, 2.0)

    async def _finish(
        self, command: DeliveryCommand, status: str, reason: str | None, **fields: Any
    ) -> Handled:
        mark = {"state": "done", "status": status, "reason": reason, "attempt": command.attempt, **fields}
        await self._record(mark_ref(command), mark)
        return Handled(from_mark(self.names, command, mark), (mark_ref(command), mark))

    async def _refuse_address(self, command: DeliveryCommand, reason: str) -> None:
        """Put the address on this gateway's dead list, which the claim script checks. Best effort: the
        provider has answered, and Redis down here blocked the partition, whose re-read sent the
        message again; the feedback suppresses the address all the same. A tenant's destination (the
        relay's outcome webhooks) is not listed: the relay disables it, and its owner re-enabling it
        within `suppress_ttl` had every outcome until then SUPPRESSED unsent."""
        if command.recipient_id.startswith(DESTINATION_RECIPIENT):
            return
        with contextlib.suppress(*REDIS_DOWN):
            await self.redis.set(dead_key(self.prefix, command), reason, ex=self.config.suppress_ttl)

    async def _endpoint_failed(self, command: DeliveryCommand) -> str | None:
        """Counts a webhook endpoint's exhausted deliveries; disables it after sustained failure, and
        forgets the count then: kept, the endpoint re-enabled by its owner was disabled again by the
        first delivery to exhaust its retries. Redis not answering leaves the count as it is: the sends
        were made, and raising here held the partition and sent the command again past its budget."""
        if self.channel != "webhook":
            return None
        key, now = failing_key(self.prefix, command), time.time()
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.hsetnx(key, "since", now)
                pipe.hincrby(key, "failures", 1)
                pipe.hget(key, "since")
                pipe.expire(key, self.config.done_ttl)
                _, failures, since, _ = await pipe.execute()
        except REDIS_DOWN as exc:
            log.warning("endpoint failure not counted, Redis unavailable (the send stands): %s", exc)
            return None
        c = self.config
        if failures < c.endpoint_disable_failures or now - float(since) < c.endpoint_disable_after:
            return None
        reason = f"endpoint failing since {int(float(since))}: {failures} deliveries exhausted retries"
        await self._refuse_address(command, reason)
        with contextlib.suppress(*REDIS_DOWN):
            await self.redis.delete(key)
        return reason
