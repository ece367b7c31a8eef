"""Folds the feedback about one address into its suppression. Pure; the router's recipient state and
the suppressions projection both fold with it, so they answer alike.

An address holds two registers. The owner's refusal (a spam complaint, SMS STOP, an address-wide
unsubscribe) is lifted by the owner only: START, or a resubscribe from the provider or our link. The
delivery failure (hard bounce, the soft-bounce limit, a dead push token, a disabled webhook endpoint) is
lifted by the owner or by an operator, a resubscribe from provider `api`. The address is suppressed by
its failure when it has one, for every message, else by its refusal (an unsubscribe spares critical
messages). Keeping them apart is what makes an operator's lift after a hard bounce uncover an earlier
unsubscribe instead of erasing it: one reason per address sent mail to people who had refused it.

Each register is last-writer-wins by provider time; at the same instant suppressing beats lifting, and
the graver reason beats the lesser (`SEVERITY`), so duplicated and reordered feedback converge to the
same state.
`since` is when the register's current state began: a duplicate older than the last opposite event (a
suppression retried after its lift) does not move it back across that event. An opposite event that
arrives late, inside the current run, moves `since` to the newest event taken, the earliest the register
still knows of; so does a suppression and a lift at one instant. Given in time order at distinct times,
`since` is exact.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from pydantic import BaseModel, ConfigDict

REFUSALS = frozenset({"complaint", "sms_stop", "unsubscribe"})
FAILURES = frozenset({"hard_bounce", "token_invalid", "endpoint_disabled", "soft_bounce_limit"})
LIFTS = frozenset({"sms_start", "resubscribe"})
OPERATOR = "api"
"""The provider name of an operator's lift (the suppressions API): it lifts delivery failures only."""


class Register(BaseModel):
    model_config = ConfigDict(frozen=True)
    reason: str | None
    """None: lifted."""
    since: datetime
    at: datetime
    """The newest event taken."""
    after: datetime | None = None
    """The newest opposite event known before `since`."""
    source: str | None = None
    """The provider of the event that set `reason` (None: unknown, or a state kept before)."""


class AddressSuppression(BaseModel):
    model_config = ConfigDict(frozen=True)
    refusal: Register | None = None
    failure: Register | None = None

    def effective(self) -> Register | None:
        """The register that suppresses the address now, if any."""
        if self.failure is not None and self.failure.reason is not None:
            return self.failure
        if self.refusal is not None and self.refusal.reason is not None:
            return self.refusal
        return None

    @property
    def last_event_at(self) -> datetime | None:
        times = [r.at for r in (self.refusal, self.failure) if r is not None]
        return max(times) if times else None


def all_messages(reason: str) -> bool:
    """Whether a suppression for `reason` holds back critical messages too."""
    return reason != "unsubscribe"


SEVERITY = {"complaint": 3, "sms_stop": 2, "unsubscribe": 1, "hard_bounce": 4, "token_invalid": 4}
"""At the same instant the graver reason wins (then the name): a complaint and an unsubscribe at once
leave the complaint, which holds back critical messages too; alphabetically the unsubscribe won."""


def _rank(reason: str | None) -> tuple[int, str]:
    return (-1, "") if reason is None else (SEVERITY.get(reason, 0), reason)


def _wins(reason: str | None, at: datetime, r: Register) -> bool:
    if at != r.at:
        return at > r.at
    return _rank(reason) > _rank(r.reason)


def take(r: Register | None, reason: str | None, at: datetime, source: str | None = None) -> Register:
    """One register after an event suppressing it for `reason` (None: lifting it) at provider time `at`,
    reported by `source`."""
    if r is None:
        return Register(reason=reason, since=at, at=at, source=source)
    same_state = (reason is None) == (r.reason is None)
    if _wins(reason, at, r):
        if same_state:
            kept = r.source if reason == r.reason else source
            return r.model_copy(update={"reason": reason, "at": at, "source": kept})
        return Register(reason=reason, since=at, at=at, after=r.at, source=source)
    if same_state:
        if at < r.since and (r.after is None or at > r.after):
            return r.model_copy(update={"since": at})
        return r
    if r.reason is not None and at in (r.since, r.at):
        return r
    if at >= r.since:
        return r.model_copy(update={"since": r.at, "after": at})
    if r.after is None or at > r.after:
        return r.model_copy(update={"after": at})
    return r


def folded(s: AddressSuppression, kind: str, at: datetime, provider: str | None) -> AddressSuppression:
    """The address after one piece of address-wide feedback (a category's unsubscribe and resubscribe
    are not the address's; callers keep them). Kinds that neither suppress nor lift change nothing."""
    if kind in REFUSALS:
        return s.model_copy(update={"refusal": take(s.refusal, kind, at, provider)})
    if kind in FAILURES:
        return s.model_copy(update={"failure": take(s.failure, kind, at, provider)})
    if kind in LIFTS and provider == OPERATOR:
        return s.model_copy(update={"failure": take(s.failure, None, at, provider)})
    if kind in LIFTS:
        return AddressSuppression(
            refusal=take(s.refusal, None, at, provider), failure=take(s.failure, None, at, provider)
        )
    return s


def cleared(s: AddressSuppression) -> AddressSuppression:
    """The address set again (a changed email or phone, a device registered with the token, an endpoint
    updated): nothing suppresses it, and feedback no newer than what it had taken still loses. The lift
    is a millisecond (provider times' precision) after the newest event taken: at that event's own time,
    the suppression won the tie, and a provider delivering the old bounce again suppressed the address
    the recipient had just set."""

    def lifted(r: Register | None) -> Register | None:
        if r is None:
            return None
        after = r.at + timedelta(milliseconds=1)
        return Register(reason=None, since=after, at=after, after=r.at)

    return AddressSuppression(refusal=lifted(s.refusal), failure=lifted(s.failure))


def restored(
    reason: str | None, since: datetime | None, last: datetime | None, source: str | None = None
) -> AddressSuppression:
    """The registers of an address kept before there were two: its one reason (None: lifted or never
    suppressed), that reason's `since`, the newest feedback taken and who reported it. A lifted address
    keeps the time of its lift in both registers, so a retried older suppression still loses to it."""
    if reason is not None and since is not None:
        r = Register(reason=reason, since=since, at=max(since, last or since), source=source)
        return AddressSuppression(refusal=r) if reason in REFUSALS else AddressSuppression(failure=r)
    if last is not None:
        lifted = Register(reason=None, since=last, at=last)
        return AddressSuppression(refusal=lifted, failure=lifted)
    return AddressSuppression()
