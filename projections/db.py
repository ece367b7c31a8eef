"""Applies the SQL migrations in `projections/migrations/` in order, once each (`tidings db migrate`)."""

from __future__ import annotations

from pathlib import Path

import psycopg
from psycopg.abc import Buffer
from psycopg.types.string import StrBinaryDumper, StrDumperUnknown

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


def connect(dsn: str) -> psycopg.Connection[tuple[object, ...]]:
    conn = psycopg.connect(dsn, autocommit=False)
    conn.adapters.register_dumper(str, NulSafeText)
    conn.adapters.register_dumper(str, NulSafeBinary)
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
