"""Produces the records a gateway emits for one command: outcomes, feedback, retries and dead letters;
and the outcome a provider's later report implies for a delivery.

Everything here is a pure function of the command and its Redis mark (or of the report), so
re-emitting after a crash, or a provider retrying its webhook, yields the same records with the same
deterministic event ids.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from gateways.base import printable
from tidings.events import DeliveryCommand, DeliveryOutcome, FeedbackKind, OutcomeStatus, ProviderFeedback
from tidings.ids import outcome_id
from tidings.kafka import Output
from tidings.topics import Names
from tidings.vocabulary import INT32_MAX

DUE = "tidings.due"
REPORTED: dict[FeedbackKind, tuple[OutcomeStatus, str]] = {
    "delivered": ("DELIVERED", "delivered"),
    "hard_bounce": ("FAILED", "bounced"),
    "undelivered": ("FAILED", "undelivered"),
}
DEAD_ADDRESS: dict[str, FeedbackKind] = {
    "webhook": "endpoint_disabled",
    "push": "token_invalid",
    "email": "hard_bounce",
    "sms": "hard_bounce",
}
"""The feedback for an address the provider says is dead: the channel's delivery failure, which an
operator or the address's owner lifts (an SMS number that does not exist, or is no longer a mobile's,
may be given again to someone who wants the texts)."""
REFUSED_ADDRESS: dict[str, FeedbackKind] = {"sms": "sms_stop"}
"""The feedback for an address whose owner refused the channel, as the provider reports it."""


def outcome(
    names: Names,
    command: DeliveryCommand,
    status: OutcomeStatus,
    reason: str | None,
    *,
    attempt: int | None = None,
    **fields: Any,
) -> Output:
    """Provider text (a reason, a detail, a message id) is made `printable`: a mark written before it
    was, or text from a provider's JSON `\\ud800` escape, would otherwise fail this outcome forever. The
    outcome counts attempts from 1, at most INT32_MAX: a command of attempt INT32_MAX (produced to a
    lane directly) was sent, and then its outcome failed validation at every start of the gateway."""
    attempt = command.attempt if attempt is None else attempt
    reason = None if reason is None else printable(reason)
    fields = {k: printable(v) if isinstance(v, str) else v for k, v in fields.items()}
    event = DeliveryOutcome.of_command(
        command,
        status,
        reason,
        id_reason=f"{reason}/{attempt}",
        attempt=min(attempt + 1, INT32_MAX),
        **fields,
    )
    return Output.event(names.outcomes, event)


def feedback(
    names: Names,
    command: DeliveryCommand,
    provider: str | None,
    detail: str,
    at_ms: int | None = None,
    *,
    refused: bool = False,
) -> Output:
    """`at_ms`: when the provider last knew the address dead (its provider time), if it said;
    `refused`: the owner refused it (`REFUSED_ADDRESS`), where the channel has a refusal. A mark
    written before marks said (session 20) counts as refused, as every dead number then was: replayed,
    a STOP must not come out as a failure an operator may lift."""
    detail, dead = printable(detail), DEAD_ADDRESS[command.channel]
    event = ProviderFeedback(
        event_id=outcome_id(
            command.notification_id, "FEEDBACK", command.channel, command.delivery_id, detail[:100]
        ),
        tenant_id=command.tenant_id,
        kind=REFUSED_ADDRESS.get(command.channel, dead) if refused else dead,
        channel=command.channel,
        address=command.address,
        recipient_id=command.recipient_id,
        notification_id=command.notification_id,
        delivery_id=command.delivery_id,
        provider=provider,
        category=command.category,
        detail=detail,
        provider_timestamp=None if at_ms is None else datetime.fromtimestamp(at_ms / 1000, UTC),
    )
    return Output.event(names.feedback, event)


def from_mark(names: Names, command: DeliveryCommand, mark: dict[str, Any]) -> list[Output]:
    """The records a mark stands for: a terminal outcome (and feedback), or a retry and RETRYING."""
    if mark["state"] == "retry":
        retry = command.model_copy(update={"attempt": mark["attempt"]})
        out = Output.event(names.retry(command.channel, mark["tier"]), retry)
        return [
            Output(out.topic, out.key, out.value, [*out.headers, (DUE, str(mark["due"]).encode())]),
            outcome(
                names, command, "RETRYING", mark["tier"], attempt=mark["attempt"] - 1, detail=mark["detail"]
            ),
        ]
    outputs = [
        outcome(
            names,
            command,
            mark["status"],
            mark.get("reason"),
            attempt=mark["attempt"],
            provider=mark.get("provider"),
            provider_message_id=mark.get("provider_message_id"),
            detail=mark.get("detail"),
        )
    ]
    if mark.get("feedback"):
        outputs.append(
            feedback(
                names,
                command,
                mark.get("provider"),
                mark["feedback"],
                mark.get("feedback_at"),
                refused=bool(mark.get("refused", True)),
            )
        )
    return outputs


def reported_outcome(report: ProviderFeedback) -> DeliveryOutcome | None:
    """The delivery's outcome a provider callback implies: DELIVERED when the mailbox or handset accepted
    it, FAILED (`bounced`) on a hard bounce after the send was accepted, FAILED (`undelivered`) when an
    SMS delivery receipt says the carrier could not deliver it. None when the report names no delivery
    (the provider did not echo our ids) or implies no status: a soft bounce is retried by the provider,
    and a complaint or unsubscribe comes after delivery and is feedback, not a status. An SMS receipt
    saying the number is dead (`hard_bounce`) comes with its `undelivered`, which is the outcome."""
    dead_number = report.kind == "hard_bounce" and report.channel != "email"
    implied = None if dead_number else REPORTED.get(report.kind)
    if implied is None or report.delivery_id is None or report.notification_id is None:
        return None
    status, reason = implied
    return DeliveryOutcome.decided(
        report.notification_id,
        status,
        reason,
        channel=report.channel,
        delivery_id=report.delivery_id,
        occurred_at=report.at,
        tenant_id=report.tenant_id,
        recipient_id=report.recipient_id,
        provider=report.provider,
        detail=report.detail,
    )
