"""`tidings send`, `tidings cancel` and `tidings tail`."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import typer
from rich.console import Console

from tidings.client import Client
from tidings.config import settings
from tidings.errors import InvalidEvent
from tidings.kafka import read_topic
from tidings.topics import tier_seconds
from tidings.views import record_view

console = Console(stderr=True)


def parse_data(data: str | None, pairs: list[str]) -> dict[str, Any]:
    """`--data` JSON object, then `key=value` (a string) and `key:=json` (any JSON value) pairs."""
    result: dict[str, Any] = {}
    if data:
        try:
            parsed = json.loads(data)
        except ValueError as exc:
            raise InvalidEvent(f"--data is not JSON: {exc}") from None
        if not isinstance(parsed, dict):
            raise InvalidEvent("--data must be a JSON object")
        result.update(parsed)
    for pair in pairs:
        if ":=" in pair and pair.index(":=") < pair.index("=") + 1:
            key, raw = pair.split(":=", 1)
            try:
                result[key] = json.loads(raw)
            except ValueError as exc:
                raise InvalidEvent(f"{pair}: value after := is not JSON: {exc}") from None
        elif "=" in pair:
            key, value = pair.split("=", 1)
            result[key] = value
        else:
            raise InvalidEvent(f"{pair!r} is not key=value or key:=json")
    return result


def send(
    tenant: str = typer.Option(..., "--tenant", "-t"),
    recipient: str = typer.Option(..., "--recipient", "-r"),
    type_: str = typer.Option(..., "--type", help="Notification type key from the catalog."),
    pairs: list[str] = typer.Argument(None, help="Template data: key=value or key:=json."),
    data: str | None = typer.Option(None, "--data", help="Template data as a JSON object."),
    priority: str | None = typer.Option(None, "--priority"),
    channel: list[str] = typer.Option(None, "--channel", help="Restrict to these channels."),
    notification_id: str | None = typer.Option(None, "--id", help="Notification id (default: new UUIDv7)."),
    idempotency_key: str | None = typer.Option(None, "--idempotency-key"),
    at: str | None = typer.Option(None, "--at", help="Deliver at this ISO 8601 time (with zone, e.g. Z)."),
    in_: str | None = typer.Option(None, "--in", help="Deliver after this long: 30s, 10m, 2h, 1d."),
    as_json: bool = typer.Option(False, "--json", help='Print {"notification_id": ...} only.'),
) -> None:
    """Request a notification (produces NotificationRequested to notifications.requested)."""
    scheduled_at = when(at, in_)
    with Client(source="cli") as client:
        nid = client.send(
            tenant=tenant,
            recipient=recipient,
            type=type_,
            data=parse_data(data, pairs or []),
            priority=priority,
            channels=channel or None,
            notification_id=notification_id,
            idempotency_key=idempotency_key,
            scheduled_at=scheduled_at,
        )
    if as_json:
        print(json.dumps({"notification_id": str(nid)}))
    else:
        console.print(f"[green]requested[/] {nid}")


def when(at: str | None, after: str | None) -> datetime | None:
    if at and after:
        raise InvalidEvent("give --at or --in, not both")
    if after:
        try:
            return datetime.now(UTC) + timedelta(seconds=tier_seconds(after))
        except ValueError:
            raise InvalidEvent(f"--in {after!r} is not like 30s, 10m, 2h or 1d") from None
    if not at:
        return None
    try:
        moment = datetime.fromisoformat(at)
    except ValueError:
        raise InvalidEvent(f"--at {at!r} is not an ISO 8601 time") from None
    if moment.tzinfo is None:
        raise InvalidEvent(f"--at {at!r} has no time zone; add one, e.g. {at}Z")
    return moment


def notification_id_arg(value: str) -> str:
    """A notification id argument, refused as a usage error (exit 2) unless it is a UUID; returned in
    canonical form (`tidings audit` compares it with the events' ids as text, and found nothing for an
    id in capitals or without hyphens)."""
    try:
        return str(UUID(value))
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not a notification id (a UUID)") from None


def cancel(
    notification_id: str = typer.Argument(
        ..., help="The notification to cancel.", callback=notification_id_arg
    ),
    tenant: str = typer.Option(..., "--tenant", "-t"),
    recipient: str = typer.Option(..., "--recipient", "-r"),
    reason: str | None = typer.Option(None, "--reason"),
) -> None:
    """Cancel a notification: before the router plans it, or while its deliveries wait (scheduled or
    quiet hours). Deliveries already handed to a gateway are not recalled."""
    with Client(source="cli") as client:
        client.cancel(tenant=tenant, recipient=recipient, notification_id=notification_id, reason=reason)
    console.print(f"[yellow]cancellation requested[/] {notification_id}")


def tail(
    topic: str = typer.Argument(..., help="Topic to read, e.g. notifications.requested."),
    from_beginning: bool = typer.Option(False, "--from-beginning"),
    max_records: int | None = typer.Option(None, "--max", min=1),
    timeout: float | None = typer.Option(None, "--timeout", help="Stop after this many idle seconds."),
) -> None:
    """Print a topic's records as decoded JSON lines (read_committed; nothing is committed)."""
    for record in read_topic(
        settings(), topic, from_beginning=from_beginning, max_records=max_records, idle_timeout=timeout
    ):
        print(json.dumps(record_view(record), ensure_ascii=False), flush=True)
