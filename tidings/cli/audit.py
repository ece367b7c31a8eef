"""`tidings audit`, `tidings replay` and `tidings dlq list|show|replay`."""

from __future__ import annotations

import json
from datetime import datetime

import typer
from rich.console import Console
from rich.table import Table

from tidings.audit import (
    dead_letters,
    history,
    in_range,
    letter_id,
    matches,
    note_replayed,
    origin,
    read_all,
    replay_dead_letter,
    replayed_letters,
)
from tidings.cli.io import notification_id_arg
from tidings.config import settings
from tidings.kafka import EventProducer
from tidings.kafka.records import REPLAYABLE
from tidings.views import event_view, record_view

dlq_app = typer.Typer(no_args_is_help=True, help="Inspect and re-inject dead letters.")
console = Console(stderr=True)


def audit(
    notification_id: str = typer.Argument(..., callback=notification_id_arg),
    tenant: str | None = typer.Option(None, "--tenant", "-t", help="Needed when two tenants use the id."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """The full history of one notification, read from the topics (request, commands, retries,
    outcomes, feedback)."""
    events = history(settings(), notification_id, tenant)
    if not events:
        console.print(f"[red]nothing about {notification_id} in the topics[/]")
        raise typer.Exit(1)
    tenants = sorted({event.tenant_id for _, event in events})
    if len(tenants) > 1:
        raise typer.BadParameter(
            f"records of tenants {', '.join(tenants)} name {notification_id}", param_hint="--tenant"
        )
    if as_json:
        for record, event in events:
            print(json.dumps(event_view(record, event)))
        return
    table = Table("time", "topic", "record", "channel", "status / detail", "template")
    for record, event in events:
        fields = event.model_dump()
        status = " ".join(str(fields[k]) for k in ("status", "reason", "kind") if fields.get(k))
        if fields.get("detail"):
            status += f": {fields['detail']}"
        table.add_row(
            event.occurred_at.isoformat(timespec="milliseconds"),
            record.topic,
            type(event).__name__,
            str(fields.get("channel") or ""),
            status or str(fields.get("address") or ""),
            str(fields.get("template_version") or ""),
        )
    Console().print(table)


def replay(
    topic: str = typer.Argument(...),
    start: datetime | None = typer.Option(
        None, "--from", help="Record time, inclusive (ISO 8601, UTC if naive)."
    ),
    end: datetime | None = typer.Option(None, "--to", help="Record time, exclusive."),
    filters: list[str] = typer.Option(
        None, "--filter", help="field=value on the decoded record, repeatable."
    ),
) -> None:
    """Print a topic's records in a time range as JSON lines (read_committed), for auditors."""
    if bad := [f for f in filters or [] if "=" not in f]:
        raise typer.BadParameter(f"{bad[0]!r}: a filter is field=value", param_hint="--filter")
    wanted = dict(f.split("=", 1) for f in filters or [])
    start, end = (_utc(t) for t in (start, end))
    for record in read_all(settings(), topic):
        if not in_range(record, start, end):
            continue
        view = record_view(record)
        if wanted and not matches(view.get("value") or {}, wanted):
            continue
        print(json.dumps(view, ensure_ascii=False), flush=True)


def _utc(t: datetime | None) -> datetime | None:
    from datetime import UTC

    return t.replace(tzinfo=UTC) if t is not None and t.tzinfo is None else t


@dlq_app.command("list")
def dlq_list(
    source: str | None = typer.Option(None, "--source", help="Only letters from this topic."),
) -> None:
    """Every dead letter: where it came from and why."""
    table = Table("dlq p@offset", "source", "error", "message", "failed at")
    for record, h in dead_letters(settings()):
        if source and h.get("tidings.source.topic") != source:
            continue
        table.add_row(
            f"{record.partition}@{record.offset}",
            f"{h.get('tidings.source.topic')}[{h.get('tidings.source.partition')}]@"
            f"{h.get('tidings.source.offset')}",
            h.get("tidings.error.type", ""),
            h.get("tidings.error.message", "")[:80],
            h.get("tidings.failed.at", ""),
        )
    Console().print(table)


@dlq_app.command("show")
def dlq_show(
    letter: str = typer.Argument(..., help="P@OFFSET as `dlq list` shows it, or P with OFFSET after it."),
    offset: int | None = typer.Argument(None),
) -> None:
    """One dead letter in full: headers and the record decoded where possible."""
    text = letter if offset is None else f"{letter}@{offset}"
    try:
        partition, offset = (int(part) for part in text.split("@"))
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not P@OFFSET, e.g. 0@12") from None
    for record, _ in dead_letters(settings()):
        if (record.partition, record.offset) == (partition, offset):
            print(json.dumps(record_view(record), indent=2, ensure_ascii=False))
            return
    raise typer.BadParameter(f"no dead letter at {partition}@{offset}")


@dlq_app.command("replay")
def dlq_replay(
    source: str | None = typer.Option(None, "--source", help="Only letters from this topic."),
    error_type: str | None = typer.Option(None, "--error-type", help="Only letters with this error type."),
    dry_run: bool = typer.Option(False, "--dry-run"),
) -> None:
    """Re-inject dead letters into their source topics (after a fix); consumers dedupe as usual. Each
    letter is replayed once, ever (`notifications.dlq.replayed` remembers it); a copy that fails
    again is a new letter, replayed by a later run. A record several consumers dead-lettered (the
    router and a projection read the same topic) is re-injected once: every consumer of its topic
    reads that copy. A letter that holds no record of its topic (a broadcast's progress) is left."""
    s = settings()
    count, copies, before, unfit, done = 0, 0, 0, 0, set()
    replayed, origins = replayed_letters(s)
    with EventProducer(s) as producer:
        for record, h in dead_letters(s):
            if (source and h.get("tidings.source.topic") != source) or (
                error_type and h.get("tidings.error.type") != error_type
            ):
                continue
            if letter_id(record) in replayed:
                before += 1
                continue
            if h.get(REPLAYABLE) == "false" or "tidings.source.topic" not in h:
                unfit += 1
                continue
            source_record = origin(h)
            if source_record is not None and source_record in origins:
                before += 1
                if not dry_run:
                    note_replayed(producer, s, record, h["tidings.source.topic"])
                continue
            if source_record is not None and source_record in done:
                copies += 1
                if not dry_run:
                    note_replayed(producer, s, record, h["tidings.source.topic"])
                continue
            done.add(source_record)
            count += 1
            if not dry_run:
                target = replay_dead_letter(producer, record)
                producer.flush()
                note_replayed(producer, s, record, target)
    notes = [
        f"{copies} more letters of the same records" if copies else "",
        f"{before} replayed before" if before else "",
        f"{unfit} not replayable (see dlq show)" if unfit else "",
    ]
    more = f" ({'; '.join(n for n in notes if n)})" if any(notes) else ""
    console.print(f"{'would replay' if dry_run else 'replayed'} {count} dead letters{more}")
