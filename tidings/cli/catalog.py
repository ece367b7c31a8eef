"""`tidings catalog publish|shadow|preview`: notification types and their templates."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from tidings.audit import read_all
from tidings.catalog import GLOBAL_TENANT, load, next_versions
from tidings.cli.io import parse_data
from tidings.client import Client
from tidings.config import settings
from tidings.errors import InvalidEvent
from tidings.events import NotificationTypePublished
from tidings.preview import Example, condition, examples, load_checked, preview
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
    """Validate every type (templates compile, channels known, examples render) and publish the changed
    ones, versioned."""
    types, rendered, unchecked = load_checked(directory, tenant)
    note = f"; {rendered} templates rendered with the types' examples"
    if unchecked:
        note += f" ({len(unchecked)} without an example: {', '.join(unchecked)})"
    if dry_run:
        console.print(f"[green]valid[/] {len(types)} types{note}")
        return
    changed = next_versions(types, published_types())
    with Client(source="catalog") as client:
        for t in changed:
            client.publish(t, wait=False)
    for t in changed:
        console.print(f"[green]published[/] {t.tenant_id}/{t.notification_type} v{t.version}")
    console.print(
        f"{len(types)} types, {len(changed)} published, {len(types) - len(changed)} unchanged{note}"
    )


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


@app.command("preview")
def preview_command(
    directory: Path = typer.Argument(..., exists=True, help="A .toml file or a folder of them."),
    type_: str = typer.Argument(..., metavar="TYPE", help="The notification type's key."),
    pairs: list[str] = typer.Argument(None, help="Template data: key=value or key:=json."),
    data: str | None = typer.Option(None, "--data", help="Template data as a JSON object."),
    locale: str | None = typer.Option(None, "--locale", help="The request's locale (falls back to default)."),
    channel: list[str] = typer.Option(None, "--channel", help="Only these channels (repeatable)."),
    name: str | None = typer.Option(None, "--name", help="The recipient's name."),
    digest: bool = typer.Option(False, "--digest", help="The digest templates, with the data as 2 items."),
    as_json: bool = typer.Option(False, "--json", help="One JSON line per channel."),
) -> None:
    """Render a type's templates as the router would, without Kafka: with its example data (the type's
    `example` table), the data given overriding it key by key. Fails, naming the channel, where the
    router would reject the request."""
    types = {t.notification_type: t for t in load(directory, GLOBAL_TENANT)}
    if type_ not in types:
        raise InvalidEvent(f"no type {type_!r} in {directory} (types: {', '.join(sorted(types))})")
    base = examples(directory).get(type_, Example({}, {}))
    given = parse_data(data, pairs or [])
    recipient = base.recipient | ({"name": name} if name is not None else {})
    ex = Example(base.data | given, recipient)
    blocked = None if digest else condition(types[type_], ex)
    renderings = preview(types[type_], ex, locale=locale, channels=channel or None, digest=digest)
    if as_json:
        for r in renderings:
            print(json.dumps({"type": type_, "condition_not_met": blocked} | r.view(), ensure_ascii=False))
        return
    out = Console()
    if blocked:
        out.print(f"[yellow]the type's condition stops this request[/]: {blocked}")
    for r in renderings:
        title = f"[bold]{r.channel}[/]{' digest' if r.digest else ''} (template locale {r.locale})"
        out.rule(title + (f" [yellow]not sent: {r.unmet}[/]" if r.unmet else ""))
        for field, value in r.fields.items():
            if value is not None:
                out.print(f"[cyan]{field}[/]: {escape(value)}")
