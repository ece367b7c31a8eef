"""Applies the SQL migrations in `projections/migrations/` in order, once each (`tidings db migrate`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg
from psycopg.abc import Buffer
from psycopg.types.json import set_json_dumps
from psycopg.types.string import StrBinaryDumper, StrDumperUnknown

from tidings.pg import sturdy

MIGRATIONS = Path(__file__).parent / "migrations"
LOCK_ID = 7_133_001


class NulSafeText(StrDumperUnknown):
    """Avro strings may hold NUL; PostgreSQL text cannot. A projection stores U+FFFD in its place:
    refusing the value would stop the projection on one record forever (every retry fails the same)."""

    def dump(self, obj: str) -> Buffer | None:
        return super().dump(obj.replace("\x00", "\ufffd") if "\x00" in obj else obj)


class NulSafeBinary(StrBinaryDumper):
    def dump(self, obj: str) -> Buffer | None:
        return super().dump(obj.replace("\x00", "\ufffd") if "\x00" in obj else obj)


def _without_nul(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, dict):
        return {_without_nul(k): _without_nul(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_nul(v) for v in value]
    return value


def nul_safe_dumps(value: Any) -> str:
    """JSON for jsonb, which refuses \\u0000 as text refuses NUL: U+FFFD in its place, like NulSafeText."""
    text = json.dumps(value)
    return json.dumps(_without_nul(value)) if "\\u0000" in text else text


def connect(dsn: str) -> psycopg.Connection[tuple[object, ...]]:
    """A projection's connection: NUL-safe text and jsonb, and UTC, so a timestamp read back does not
    depend on the server's zone (a year-1 time a provider reported cannot be shown in New York's); with
    keepalives and timeouts (`tidings.pg`), so a vanished host is noticed."""
    conn = psycopg.connect(sturdy(dsn), autocommit=False)
    conn.adapters.register_dumper(str, NulSafeText)
    conn.adapters.register_dumper(str, NulSafeBinary)
    set_json_dumps(nul_safe_dumps, conn)
    conn.execute("SET TIME ZONE 'UTC'")
    conn.commit()
    return conn


def migrate(dsn: str) -> list[str]:
    """Apply every migration not applied yet, each in its own transaction; returns the versions applied."""
    applied: list[str] = []
    with connect(dsn) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (LOCK_ID,))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations "
            "(version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        conn.commit()
        done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
        for path in sorted(MIGRATIONS.glob("*.sql")):
            if path.stem in done:
                continue
            with conn.transaction():
                conn.execute(path.read_text().encode())
                conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (path.stem,))
            applied.append(path.stem)
        conn.execute("SELECT pg_advisory_unlock(%s)", (LOCK_ID,))
        conn.commit()
    return applied
