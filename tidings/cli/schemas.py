"""`tidings schemas check|release|list`: the Avro contract's evolution gate."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from tidings.compat import check as check_dir
from tidings.compat import mode
from tidings.compat import release as release_dir
from tidings.schemas import SchemaSet, default_schema_dir

app = typer.Typer(no_args_is_help=True, help="The Avro schemas in schemas/.")
DirOption = typer.Option(None, "--dir", help="Schema directory (default: the project's schemas/).")


@app.command()
def check(directory: Path | None = DirOption) -> None:
    """Fail when a newer version cannot read an older one (events: BACKWARD_TRANSITIVE; commands: FULL,
    checked transitively) or when a released version was edited or deleted."""
    directory = directory or default_schema_dir()
    problems = check_dir(directory)
    console = Console()
    if problems:
        for p in problems:
            console.print(f"[red]incompatible[/] {p}")
        raise typer.Exit(1)
    schemas = SchemaSet.load(directory)
    count = sum(len(v) for v in schemas.versions.values())
    console.print(f"[green]ok[/] {len(schemas.versions)} records, {count} versions compatible")


@app.command()
def release(directory: Path | None = DirOption) -> None:
    """Pin every new version (fingerprint and digest) in released.lock.json (after `check` passes)."""
    directory = directory or default_schema_dir()
    if problems := check_dir(directory):
        raise typer.BadParameter("; ".join(map(str, problems)))
    added = release_dir(SchemaSet.load(directory), directory)
    Console().print("released: " + (", ".join(added) if added else "nothing new"))


@app.command("list")
def list_(directory: Path | None = DirOption) -> None:
    """Every record, its versions and fingerprints."""
    for name, versions in sorted(SchemaSet.load(directory).versions.items()):
        fps = ", ".join(f"v{v.version}={v.fingerprint.hex()}" for v in versions)
        print(f"{name:<28} {mode(name):<20} {fps}")
