"""`tidings destination set|remove`: a tenant's outcome destinations on notifications.destinations."""

from __future__ import annotations

import typer
from rich.console import Console

from tidings.client import Client

app = typer.Typer(no_args_is_help=True, help="Outcome destinations: where a tenant's outcomes are POSTed.")
console = Console(stderr=True)
DESTINATION = typer.Argument(..., help="The destination's id.")
TENANT = typer.Option(..., "--tenant", "-t")


@app.command("set")
def set_destination(
    destination: str = DESTINATION,
    tenant: str = TENANT,
    url: str = typer.Option(..., "--url", help="http(s) URL the outcomes are POSTed to."),
    secret: str = typer.Option(..., "--secret", help="Standard Webhooks secret, whsec_..."),
    status: list[str] = typer.Option(None, "--status", help="Only outcomes of this status; repeatable."),
    engagement: list[str] = typer.Option(
        None,
        "--engagement",
        help="Also relay this engagement (seen, read, archived, opened, clicked); repeatable.",
    ),
    disabled: bool = typer.Option(False, "--disabled", help="Keep it, but send nothing for now."),
) -> None:
    """Create or change a destination (produces DestinationUpdated; `tidings run relay` acts on it)."""
    with Client(source="cli") as client:
        client.set_destination(
            tenant=tenant,
            destination_id=destination,
            url=url,
            secret=secret,
            statuses=status or [],
            engagements=engagement or [],
            enabled=not disabled,
        )
    console.print(
        f"[green]destination set[/] {tenant}/{destination}: {', '.join(status or ['every status'])}"
        + (f"; engagement: {', '.join(engagement)}" if engagement else "")
    )


@app.command("remove")
def remove_destination(destination: str = DESTINATION, tenant: str = TENANT) -> None:
    """Stop sending outcomes to a destination (produces DestinationRemoved)."""
    with Client(source="cli") as client:
        client.remove_destination(tenant=tenant, destination_id=destination)
    console.print(f"[yellow]destination removed[/] {tenant}/{destination}")
