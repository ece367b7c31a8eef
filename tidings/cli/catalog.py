"""`tidings catalog publish|shadow|preview`: notification types and their templates."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from tidings.audit import read_all
from tidings.catalog import GLOBAL_TENANT, load, next_versions
from tidings.client import Client
from tidings.config import settings
from tidings.events import NotificationTypePublished
from tidings.topics import names

app = typer.Typer(no_args_is_help=True, help="Notification types and their templates.")
console = Console(stderr=True)


def published_types() -> dict[str, NotificationTypePublished]:
    s = settings()
    current: dict[str, NotificationTypePublished] = {}
    for record in read_all(s, names(s).catalog):
        event = record.decode()
        if isinstance(event, NotificationTypePublished):
            current[event.key] = event
    return current


@app.command("publish")
def publish(
    directory: Path = typer.Argument(..., exists=True, help="A .toml file or a folder of them."),
    tenant: str = typer.Option(GLOBAL_TENANT, "--tenant", help="Tenant; '*' = every tenant."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Validate only."),
) -> None:
    """Validate every type (templates compile, channels known) and publish the changed ones, versioned."""
    types = load(directory, tenant)
    if dry_run:
        console.print(f"[green]valid[/] {len(types)} types")
        return
    changed = next_versions(types, published_types())
    with Client(source="catalog") as client:
        for t in changed:
            client.publish(t, wait=False)
    for t in changed:
        console.print(f"[green]published[/] {t.tenant_id}/{t.notification_type} v{t.version}")
    console.print(f"{len(types)} types, {len(changed)} published, {len(types) - len(changed)} unchanged")


@app.command("shadow")
def shadow(
    directory: Path = typer.Argument(..., exists=True, help="The candidate catalog: a .toml file or folder."),
    tenant: str = typer.Option(
        GLOBAL_TENANT, "--tenant", help="Tenant of the candidate; '*' = every tenant."
    ),
    start: datetime | None = typer.Option(
        None, "--from", help="Requests from this record time (UTC if naive)."
    ),
    end: datetime | None = typer.Option(None, "--to", help="Requests before this record time."),
    as_json: bool = typer.Option(False, "--json", help="One JSON line per changed request."),
) -> None:
    """Replay past requests through the router's plan with the candidate catalog and report what would
    change (per channel, before and after), without publishing or writing anything."""
    from tidings.shadow import Shadow, replay

    start, end = (t.replace(tzinfo=UTC) if t is not None and t.tzinfo is None else t for t in (start, end))
    candidate = next_versions(load(directory, tenant), published_types())
    evaluation = Shadow(candidate)
    only = None if tenant == GLOBAL_TENANT else tenant
    changed = 0
    for change in replay(settings(), evaluation, tenant=only, start=start, end=end):
        changed += 1
        if as_json:
            print(json.dumps(change.view(), ensure_ascii=False), flush=True)
    console.print(
        f"{len(candidate)} changed types; {evaluation.compared} requests replayed, {changed} would be "
        "planned differently"
    )
    if evaluation.summary and not as_json:
        table = Table("type", "channel", "before", "after", "requests")
        for (type_, channel, was, now), n in evaluation.summary.most_common():
            table.add_row(type_, channel, was, now, str(n))
        Console().print(table)
