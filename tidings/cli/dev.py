"""`tidings dev up|down|status|env`: the local Kafka, PostgreSQL and Redis."""

from __future__ import annotations

import shlex

import typer
from rich.console import Console
from rich.table import Table

from tidings import devstack
from tidings.config import settings

app = typer.Typer(no_args_is_help=True, help="Run the local stack (Kafka, PostgreSQL, Redis) on loopback.")
console = Console(stderr=True)


def _report(service: str, message: str) -> None:
    console.print(f"[bold]{service:<9}[/] {message}")


@app.command()
def up() -> None:
    """Start every service that is not external; idempotent; waits until each answers."""
    devstack.up(settings(), _report)


@app.command()
def down() -> None:
    """Stop the services `up` started."""
    devstack.down(_report)


@app.command()
def status() -> None:
    """Say which services answer."""
    table = Table("service", "state", "address", "managed by")
    states = devstack.status(settings())
    for s in states:
        table.add_row(
            s.name,
            "[green]running[/]" if s.running else "[red]stopped[/]",
            s.address,
            "external (TIDINGS_*)" if s.external else "tidings dev",
        )
    Console().print(table)
    if not all(s.running for s in states):
        raise typer.Exit(3)


@app.command()
def env() -> None:
    """Print the TIDINGS_* variables as shell exports: eval "$(tidings dev env)". A shell that has
    them counts the services as external: `dev up`/`down` leave them alone, `demo` wants --external."""
    for name, value in devstack.env(settings()).items():
        print(f"export {name}={shlex.quote(value)}")
