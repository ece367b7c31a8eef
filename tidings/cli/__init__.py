"""The `tidings` command line."""

from __future__ import annotations

import logging
import sys

import psycopg
import typer
from pydantic import ValidationError

from tidings.cli import (
    audiences,
    audit,
    catalog,
    data,
    demo,
    destinations,
    dev,
    io,
    pipeline,
    schemas,
    topics,
)
from tidings.errors import TidingsError, summary
from tidings.kafka import CLIENT_ERRORS

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="tidings: event-sourced, multi-channel notifications on Apache Kafka.",
)
app.add_typer(dev.app, name="dev")
app.add_typer(topics.app, name="topics")
app.add_typer(schemas.app, name="schemas")
app.add_typer(catalog.app, name="catalog")
app.add_typer(pipeline.recipients_app, name="recipients")
app.add_typer(audiences.app, name="audience")
app.add_typer(destinations.app, name="destination")
app.add_typer(pipeline.run_app, name="run")
app.add_typer(data.db_app, name="db")
app.add_typer(data.projections_app, name="projections")
pipeline.run_app.command("projection")(data.run_projection)
app.command("status")(data.status)
app.command("stats")(data.stats)
app.command("audit")(audit.audit)
app.command("replay")(audit.replay)
app.add_typer(audit.dlq_app, name="dlq")
app.command("send")(io.send)
app.command("cancel")(io.cancel)
app.command("tail")(io.tail)
app.command("demo")(demo.demo)
app.command("tenant-key")(pipeline.tenant_key_command)


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        app()
    except TidingsError as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        if exc.notification_id is not None:
            typer.secho(
                f"notification_id {exc.notification_id}: it may have been taken; retry with --id "
                f"{exc.notification_id} so that it is not requested twice",
                err=True,
            )
        if exc.broadcast_id is not None:
            typer.secho(
                f"broadcast_id {exc.broadcast_id}: it may have been taken; check it before retrying, and "
                "retry with the same --idempotency-key so that it is not sent twice",
                err=True,
            )
        sys.exit(1)
    except CLIENT_ERRORS as exc:
        typer.secho(f"error: Kafka: {exc} (is the broker at TIDINGS_KAFKA_BOOTSTRAP up?)", fg="red", err=True)
        sys.exit(1)
    except ValidationError as exc:
        typer.secho(f"error: {exc.title}: {summary(exc)}", fg="red", err=True)
        sys.exit(2)
    except psycopg.Error as exc:
        hint = " (tidings db migrate?)" if isinstance(exc, psycopg.errors.UndefinedTable) else ""
        typer.secho(f"error: PostgreSQL: {str(exc).strip()}{hint}", fg="red", err=True)
        sys.exit(1)
