"""`tidings audience add|remove|broadcast|cancel|report`: audiences and broadcasts on
notifications.broadcasts, and a broadcast's delivery from the delivery-status projection."""

from __future__ import annotations

import json
from pathlib import Path
from uuid import UUID

import psycopg
import typer
from psycopg.rows import dict_row
from rich.console import Console
from rich.table import Table

from tidings.broadcasts import REPORT_CHANNELS, REPORT_STATUSES, delivery_report
from tidings.cli.io import parse_data, when
from tidings.client import Client
from tidings.config import settings
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


AUDIENCE = typer.Argument(..., help="The audience's id.")
RECIPIENTS = typer.Argument(None, help="Recipient ids.")
TENANT = typer.Option(..., "--tenant", "-t")
FROM_FILE = typer.Option(None, "--from-file", exists=True, help="One recipient id per line.")


@app.command("add")
def add(
    audience: str = AUDIENCE,
    recipients: list[str] = RECIPIENTS,
    tenant: str = TENANT,
    from_file: Path | None = FROM_FILE,
) -> None:
    """Add recipients to an audience (members already in it stay as they are)."""
    _change(tenant, audience, _recipients(recipients, from_file), remove=False)


@app.command("remove")
def remove(
    audience: str = AUDIENCE,
    recipients: list[str] = RECIPIENTS,
    tenant: str = TENANT,
    from_file: Path | None = FROM_FILE,
) -> None:
    """Remove recipients from an audience; broadcasts still being expanded skip them."""
    _change(tenant, audience, _recipients(recipients, from_file), remove=True)


def _change(tenant: str, audience: str, recipients: list[str], *, remove: bool) -> None:
    with Client(source="cli") as client:
        change = client.remove_members if remove else client.add_members
        change(tenant=tenant, audience=audience, recipients=recipients)
    done = "[yellow]removed[/] {} recipients from" if remove else "[green]added[/] {} recipients to"
    console.print(done.format(len(recipients)), f"{tenant}/{audience}")


@app.command("broadcast")
def broadcast(
    audience: str = AUDIENCE,
    tenant: str = TENANT,
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


@app.command("report")
def report(
    broadcast_id: str = typer.Argument(..., help="The broadcast to report on."),
    tenant: str = typer.Option(..., "--tenant", "-t"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """A broadcast's member notifications by status and their deliveries by channel (the projection)."""
    try:
        bid = UUID(broadcast_id)
    except ValueError:
        raise InvalidEvent(f"{broadcast_id!r} is not a broadcast id (a UUID)") from None
    with psycopg.connect(settings().postgres_dsn, row_factory=dict_row) as conn:
        found = delivery_report(
            conn.execute(REPORT_STATUSES, (tenant, bid)).fetchall(),
            conn.execute(REPORT_CHANNELS, (tenant, bid)).fetchall(),
        )
    if as_json:
        print(json.dumps({"broadcast_id": str(bid), **found}))
        return
    if not found["notifications"]:
        console.print(f"[red]no notification of broadcast {bid} in the projection[/]")
        raise typer.Exit(1)
    statuses = ", ".join(f"{status} {n}" for status, n in found["status"].items())
    console.print(f"{bid}  {found['notifications']} notifications: {statuses}")
    table = Table("channel", "status", "deliveries")
    for channel, counts in found["channels"].items():
        for status, n in counts.items():
            table.add_row(channel, status, str(n))
    Console().print(table)
