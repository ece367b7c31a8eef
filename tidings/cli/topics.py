"""`tidings topics apply|list`: create the registry's topics and report drift."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from tidings.config import settings
from tidings.kafka import apply_topics
from tidings.topics import registry

app = typer.Typer(no_args_is_help=True, help="Kafka topics from the registry in tidings/topics.py.")


ALTER_HELP = (
    "Set drifted configs (retention, compaction, segment.ms) to the registry's, removing a segment.ms it"
    " does not set; never partitions."
)


@app.command()
def apply(
    check: bool = typer.Option(False, "--check", help="Exit 1 when any topic drifts."),
    alter: bool = typer.Option(False, "--alter", help=ALTER_HELP),
) -> None:
    """Create missing topics; report existing ones whose partitions or config differ (idempotent)."""
    reports = apply_topics(settings(), registry(settings()), alter=alter)
    console = Console()
    for r in reports:
        colour = {"created": "green", "ok": "dim", "exists": "dim", "altered": "green", "drift": "yellow"}[
            r.action
        ]
        notes = [*r.drift, *(f"set {a}" for a in r.altered)]
        console.print(f"[{colour}]{r.action:<8}[/] {r.name}" + (f"  ({'; '.join(notes)})" if notes else ""))
    created = sum(r.action == "created" for r in reports)
    drifted = [r for r in reports if r.drift]
    altered = sum(bool(r.altered) for r in reports)
    console.print(f"{len(reports)} topics: {created} created, {altered} altered, {len(drifted)} drifted")
    if check and drifted:
        raise typer.Exit(1)


@app.command("list")
def list_() -> None:
    """Show the registry."""
    s = settings()
    table = Table("topic", "key", "records", "partitions", "policy")
    for spec in registry(s):
        policy = (
            spec.cleanup_policy
            if spec.cleanup_policy != "delete"
            else (
                "delete, forever" if spec.retention_ms < 0 else f"delete, {spec.retention_ms // 86_400_000}d"
            )
        )
        table.add_row(
            spec.name,
            spec.key,
            ", ".join(spec.records + spec.forwarded) or "raw bytes",
            str(spec.partition_count(s)),
            policy,
        )
    Console().print(table)
