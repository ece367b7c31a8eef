"""`tidings db migrate`, `tidings run projection`, `tidings projections rebuild` and `tidings status`."""

from __future__ import annotations

import json
import logging
import signal
from typing import Any

import psycopg
import typer
from psycopg.rows import dict_row
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from tidings.cli.pipeline import expose
from tidings.config import settings

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


def run_projection(
    name: str = typer.Argument(..., help=PROJECTIONS),
    idle_exit: float | None = typer.Option(None, "--idle-exit"),
) -> None:
    """Fold topics into PostgreSQL, exactly once (offsets stored with the rows)."""
    from projections import Runner

    logging.getLogger().setLevel(logging.INFO)
    runner = Runner(settings(), _projection(name))
    expose(f"projection-{name}", None, runner.samples)
    signal.signal(signal.SIGTERM, lambda *_: runner.stop())
    signal.signal(signal.SIGINT, lambda *_: runner.stop())
    try:
        runner.run(idle_exit_after=idle_exit)
    finally:
        runner.close()


@projections_app.command("rebuild")
def rebuild(name: str = typer.Argument(..., help=PROJECTIONS)) -> None:
    """Truncate a projection's tables and replay its topics from offset 0 to their current end."""
    from projections import Runner

    runner = Runner(settings(), _projection(name))
    columns = (TextColumn(f"rebuild {name}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as bar:
        task = bar.add_task(name, total=None)
        done, seconds = runner.rebuild(lambda n, total: bar.update(task, completed=n, total=total))
    runner.close()
    console.print(
        f"[green]rebuilt[/] {name}: {done} records in {seconds:.1f}s "
        f"({done / seconds if seconds else 0:,.0f} records/s)"
    )


def status(notification_id: str = typer.Argument(...), as_json: bool = typer.Option(False, "--json")) -> None:
    """A notification and its deliveries, from the delivery_status projection."""
    with psycopg.connect(settings().postgres_dsn, row_factory=dict_row) as conn:
        head = conn.execute(
            "SELECT * FROM notifications WHERE notification_id = %s", (notification_id,)
        ).fetchone()
        rows = conn.execute(
            "SELECT * FROM deliveries WHERE notification_id = %s ORDER BY channel, delivery_id",
            (notification_id,),
        ).fetchall()
    if head is None:
        console.print(f"[red]no notification {notification_id} in the projection[/]")
        raise typer.Exit(1)
    if as_json:
        print(json.dumps({"notification": head, "deliveries": rows}, default=str))
        return
    console.print(
        f"{head['notification_id']}  {head['tenant_id']}/{head['recipient_id']}  "
        f"{head['notification_type']}  [bold]{head['status']}[/]"
    )
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
    Console().print(table)
