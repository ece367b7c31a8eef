"""`tidings db migrate`, `tidings run projection`, `tidings projections rebuild`, `tidings status` and
`tidings stats`."""

from __future__ import annotations

import json
import logging
import signal
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import psycopg
import typer
from psycopg.rows import dict_row
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from tidings import stats as analytics
from tidings.cli.io import notification_id_arg
from tidings.cli.pipeline import expose, limit_memory
from tidings.config import settings
from tidings.topics import tier_seconds

db_app = typer.Typer(no_args_is_help=True, help="The PostgreSQL schema of the projections.")
projections_app = typer.Typer(no_args_is_help=True, help="Rebuild projections from the topics.")
console = Console(stderr=True)


PROJECTIONS = "delivery_status, suppressions, devices, recipients, inbox, audiences"


def _projection(name: str) -> Any:
    from projections import Projection

    if name not in Projection.registry:
        raise typer.BadParameter(
            f"unknown projection {name!r}; one of {', '.join(sorted(Projection.registry))}"
        )
    return Projection.registry[name]()


@db_app.command("migrate")
def migrate() -> None:
    """Apply the SQL migrations not applied yet (idempotent)."""
    from projections.db import migrate as apply

    applied = apply(settings().postgres_dsn)
    console.print("applied: " + (", ".join(applied) if applied else "nothing, up to date"))


@db_app.command("prune")
def prune(
    older_than: int | None = typer.Option(
        None, "--older-than", min=7, help="Days of history to keep (default: TIDINGS_HISTORY_DAYS)."
    ),
    batch: int = typer.Option(5_000, "--batch", min=1, help="Rows per transaction."),
) -> None:
    """Delete history older than the days kept (projections/retention.py); prints the rows per table."""
    from projections.retention import prune as delete_before

    days = older_than if older_than is not None else settings().history_days
    if days is None:
        raise typer.BadParameter(
            "set TIDINGS_HISTORY_DAYS or pass --older-than DAYS", param_hint="--older-than"
        )
    cutoff = datetime.now(UTC) - timedelta(days=days)
    counts = delete_before(settings().postgres_dsn, cutoff, batch=batch)
    typer.echo(json.dumps({"cutoff": cutoff.isoformat(), "deleted": counts}))


def run_projection(
    name: str = typer.Argument(..., help=PROJECTIONS),
    idle_exit: float | None = typer.Option(None, "--idle-exit"),
) -> None:
    """Fold topics into PostgreSQL, exactly once (offsets stored with the rows)."""
    from projections import Runner

    logging.getLogger().setLevel(logging.INFO)
    runner = Runner(settings(), _projection(name))
    limit_memory(settings().memory_limit_mb)
    expose(f"projection-{name}", None, runner.samples)
    signal.signal(signal.SIGTERM, lambda *_: runner.stop())
    signal.signal(signal.SIGINT, lambda *_: runner.stop())
    try:
        runner.run(idle_exit_after=idle_exit)
    finally:
        runner.close()


@projections_app.command("rebuild")
def rebuild(
    name: str = typer.Argument(..., help=PROJECTIONS),
    drop_lost: bool = typer.Option(
        False,
        "--drop-lost",
        help="Rebuild even though retention deleted some of the topics' records: the rows made from "
        "them are dropped for good.",
    ),
) -> None:
    """Truncate a projection's tables and replay its topics from offset 0 to their current end. Refused
    when the topics no longer hold their first records, unless --drop-lost."""
    from projections import Runner

    runner = Runner(settings(), _projection(name))
    columns = (TextColumn(f"rebuild {name}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as bar:
        task = bar.add_task(name, total=None)
        done, seconds = runner.rebuild(
            lambda n, total: bar.update(task, completed=n, total=total), drop_lost=drop_lost
        )
    runner.close()
    console.print(
        f"[green]rebuilt[/] {name}: {done} records in {seconds:.1f}s "
        f"({done / seconds if seconds else 0:,.0f} records/s)"
    )


NOTIFICATION_EVENTS = """SELECT status, reason, detail, occurred_at FROM delivery_events
WHERE tenant_id = %s AND notification_id = %s AND delivery_id IS NULL ORDER BY occurred_at"""
DELIVERIES = """SELECT * FROM deliveries WHERE tenant_id = %s AND notification_id = %s
ORDER BY channel, delivery_id"""


def status(
    notification_id: str = typer.Argument(..., callback=notification_id_arg),
    tenant: str | None = typer.Option(None, "--tenant", "-t", help="Needed when two tenants use the id."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """A notification and its deliveries, from the delivery_status projection, with the reasons of
    what happened to the notification as a whole (REJECTED and why, CANCELLED, DEFERRED)."""
    nid = UUID(notification_id)
    with psycopg.connect(settings().postgres_dsn, row_factory=dict_row) as conn:
        heads = conn.execute(
            "SELECT * FROM notifications WHERE notification_id = %s AND (%s::text IS NULL OR tenant_id = %s)",
            (nid, tenant, tenant),
        ).fetchall()
        if len(heads) > 1:
            tenants = ", ".join(sorted(h["tenant_id"] for h in heads))
            raise typer.BadParameter(
                f"tenants {tenants} each have a notification {nid}", param_hint="--tenant"
            )
        head = heads[0] if heads else None
        if head is not None:
            rows = conn.execute(DELIVERIES, (head["tenant_id"], nid)).fetchall()
            events = conn.execute(NOTIFICATION_EVENTS, (head["tenant_id"], nid)).fetchall()
    if head is None:
        console.print(f"[red]no notification {nid} in the projection[/]")
        raise typer.Exit(1)
    if as_json:
        print(json.dumps({"notification": head, "events": events, "deliveries": rows}, default=str))
        return
    out = Console()
    out.print(
        f"{head['notification_id']}  {head['tenant_id']}/{head['recipient_id']}  "
        f"{head['notification_type']}  [bold]{head['status']}[/]",
        markup=True,
    )
    for e in events:
        why = ": ".join(str(x) for x in (e["reason"], e["detail"]) if x)
        out.print(f"  {e['occurred_at']}  {e['status']}  {why}", markup=False, highlight=False)
    if not rows:
        return
    table = Table("channel", "status", "reason", "attempts", "provider", "last")
    for d in rows:
        table.add_row(
            d["channel"],
            d["status"],
            d["reason"] or "",
            str(d["attempts"]),
            d["provider"] or "",
            str(d["last_at"]),
        )
    out.print(table)


def _utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def stats(
    tenant: str = typer.Option(..., "--tenant", "-t"),
    since: str = typer.Option("24h", "--since", help="How far back: 30m, 24h, 7d (ignored with --from)."),
    start: datetime | None = typer.Option(None, "--from", help="Window start (ISO 8601, UTC if no offset)."),
    end: datetime | None = typer.Option(None, "--to", help="Window end (default: now)."),
    type_: str | None = typer.Option(None, "--type", help="Only this notification type."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Delivery analytics: notifications requested in a window, their deliveries per channel, reasons,
    success rate, time to send and engagement (the projections)."""
    until = _utc(end) if end else datetime.now(UTC)
    if start is not None:
        begin = _utc(start)
    else:
        try:
            begin = until - timedelta(seconds=tier_seconds(since))
        except (ValueError, OverflowError):
            raise typer.BadParameter(f"--since {since!r} is not like 30m, 24h or 7d") from None
    try:
        args = analytics.parameters(tenant, begin, until, type_)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    with psycopg.connect(settings().postgres_dsn, row_factory=dict_row) as conn:
        found = analytics.report(analytics.fetch_sync(conn, args))
    if as_json:
        print(json.dumps({"from": begin.isoformat(), "to": until.isoformat(), "types": found}))
        return
    console.print(f"{tenant}: notifications requested from {begin.isoformat()} to {until.isoformat()}")
    table = Table("type", "channel", "deliveries", "rate", "p50 ms", "p95 ms", "by status", "reasons")
    for key, entry in found.items():
        statuses = ", ".join(f"{s} {n}" for s, n in entry["status"].items())
        engaged = entry["engagement"]
        table.add_row(
            f"[bold]{key}[/]",
            "",
            str(entry["notifications"]),
            "",
            "",
            "",
            statuses,
            f"seen {engaged['seen']}, read {engaged['read']}",
        )
        for channel, figures in entry["channels"].items():
            latency = figures["time_to_send_ms"] or {}
            rate = figures["rate"]
            table.add_row(
                "",
                channel,
                str(figures["deliveries"]),
                "" if rate is None else f"{rate:.1%}",
                str(latency.get("p50", "")),
                str(latency.get("p95", "")),
                ", ".join(f"{s} {n}" for s, n in figures["status"].items()),
                ", ".join(f"{r} {n}" for r, n in figures["reasons"].items()),
            )
    Console().print(table)
