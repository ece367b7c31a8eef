"""`tidings send`, `tidings tail` and `tidings demo`."""

from __future__ import annotations

import json
from typing import Any

import typer
from rich.console import Console

from tidings.client import Client
from tidings.config import settings
from tidings.errors import InvalidEvent
from tidings.kafka import read_topic
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
    as_json: bool = typer.Option(False, "--json", help='Print {"notification_id": ...} only.'),
) -> None:
    """Request a notification (produces NotificationRequested to notifications.requested)."""
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
        )
    if as_json:
        print(json.dumps({"notification_id": str(nid)}))
    else:
        console.print(f"[green]requested[/] {nid}")


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
