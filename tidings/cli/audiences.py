"""`tidings audience add|remove|broadcast|cancel`: audiences and broadcasts on notifications.broadcasts."""

from __future__ import annotations

import json
from pathlib import Path
from uuid import UUID

import typer
from rich.console import Console

from tidings.cli.io import parse_data, when
from tidings.client import Client
from tidings.errors import InvalidEvent

app = typer.Typer(no_args_is_help=True, help="Audiences (named sets of recipients) and broadcasts to them.")
console = Console(stderr=True)


def _recipients(recipients: list[str] | None, from_file: Path | None) -> list[str]:
    found = list(recipients or [])
    if from_file is not None:
        found += [line.strip() for line in from_file.read_text().splitlines() if line.strip()]
    if not found:
        raise InvalidEvent("name recipients, or give --from-file with one recipient id per line")
    return found


@app.command("add")
def add(
    audience: str = typer.Argument(..., help="The audience's id."),
    recipients: list[str] = typer.Argument(None, help="Recipient ids."),
    tenant: str = typer.Option(..., "--tenant", "-t"),
    from_file: Path | None = typer.Option(
        None, "--from-file", exists=True, help="One recipient id per line."
    ),
) -> None:
    """Add recipients to an audience (members already in it stay as they are)."""
    found = _recipients(recipients, from_file)
    with Client(source="cli") as client:
        client.add_members(tenant=tenant, audience=audience, recipients=found)
    console.print(f"[green]added[/] {len(found)} recipients to {tenant}/{audience}")


@app.command("remove")
def remove(
    audience: str = typer.Argument(..., help="The audience's id."),
    recipients: list[str] = typer.Argument(None, help="Recipient ids."),
    tenant: str = typer.Option(..., "--tenant", "-t"),
    from_file: Path | None = typer.Option(
        None, "--from-file", exists=True, help="One recipient id per line."
    ),
) -> None:
    """Remove recipients from an audience; broadcasts still being expanded skip them."""
    found = _recipients(recipients, from_file)
    with Client(source="cli") as client:
        client.remove_members(tenant=tenant, audience=audience, recipients=found)
    console.print(f"[yellow]removed[/] {len(found)} recipients from {tenant}/{audience}")


@app.command("broadcast")
def broadcast(
    audience: str = typer.Argument(..., help="The audience's id."),
    tenant: str = typer.Option(..., "--tenant", "-t"),
    type_: str = typer.Option(..., "--type", help="Notification type key from the catalog."),
    pairs: list[str] = typer.Argument(None, help="Template data: key=value or key:=json."),
    data: str | None = typer.Option(None, "--data", help="Template data as a JSON object."),
    priority: str | None = typer.Option(None, "--priority"),
    channel: list[str] = typer.Option(None, "--channel", help="Restrict to these channels."),
    idempotency_key: str | None = typer.Option(None, "--idempotency-key"),
    at: str | None = typer.Option(None, "--at", help="Deliver at this ISO 8601 time (with zone, e.g. Z)."),
    in_: str | None = typer.Option(None, "--in", help="Deliver after this long: 30s, 10m, 2h, 1d."),
    as_json: bool = typer.Option(False, "--json", help='Print {"broadcast_id": ...} only.'),
) -> None:
    """One notification to every current member of the audience (produces BroadcastRequested)."""
    scheduled_at = when(at, in_)
    with Client(source="cli") as client:
        bid = client.broadcast(
            tenant=tenant,
            audience=audience,
            type=type_,
            data=parse_data(data, pairs or []),
            priority=priority,
            channels=channel or None,
            idempotency_key=idempotency_key,
            scheduled_at=scheduled_at,
        )
    if as_json:
        print(json.dumps({"broadcast_id": str(bid)}))
    else:
        console.print(f"[green]broadcast requested[/] {bid}")


@app.command("cancel")
def cancel(
    audience: str = typer.Argument(..., help="The audience the broadcast went to."),
    broadcast_id: str = typer.Argument(..., help="The broadcast to cancel."),
    tenant: str = typer.Option(..., "--tenant", "-t"),
    reason: str | None = typer.Option(None, "--reason"),
) -> None:
    """Cancel a broadcast: members not yet reached get nothing, the others' notifications are cancelled."""
    try:
        UUID(broadcast_id)
    except ValueError:
        raise InvalidEvent(f"{broadcast_id!r} is not a broadcast id (a UUID)") from None
    with Client(source="cli") as client:
        client.cancel_broadcast(tenant=tenant, audience=audience, broadcast_id=broadcast_id, reason=reason)
    console.print(f"[yellow]cancellation requested[/] {broadcast_id}")
