"""Runs a private PostgreSQL instance (Debian package) on a loopback port, database `tidings`.

PostgreSQL refuses to run as root, so as root it runs as the `postgres` user. Its data lives in
`.devstack/postgres`; where that user cannot reach it (a checkout under /root), `.devstack/postgres` is a
symlink to /var/tmp/tidings/<hash of the stack dir>. Durability settings are relaxed (fsync off): this is a
disposable dev and test instance.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import psycopg

from tidings.config import DEV_POSTGRES_PORT, Settings
from tidings.devstack.common import ServiceStatus, apt_install, is_root, run, short_hash, stack_dir, wait_for
from tidings.errors import DevStackError

DATABASE = "tidings"
OPTIONS = (
    "-c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off "
    "-c max_connections=200"
)


def bin_dir() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: int(p.parent.parent.name))
    if not found:
        apt_install(["postgresql"], why="running PostgreSQL")
        found = sorted(
            Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: int(p.parent.parent.name)
        )
    if not found:
        raise DevStackError("PostgreSQL binaries not found under /usr/lib/postgresql")
    return found[-1].parent


def home() -> Path:
    """`.devstack/postgres`, or (as root, when `postgres` cannot reach it) a symlink from there to
    /var/tmp/tidings/<hash>."""
    local = stack_dir() / "postgres"
    if local.is_symlink():
        return local.resolve()
    if not is_root() or _reachable_by_postgres(local):
        return local
    target = Path("/var/tmp/tidings") / short_hash(str(stack_dir()))
    target.mkdir(parents=True, exist_ok=True)
    if local.is_dir():
        local.rmdir()
    local.symlink_to(target, target_is_directory=True)
    return target


def _reachable_by_postgres(path: Path) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    shutil.chown(path, "postgres", "postgres")
    probe = subprocess.run(["runuser", "-u", "postgres", "--", "test", "-w", str(path)], check=False)
    return probe.returncode == 0


def _user() -> str | None:
    return "postgres" if is_root() else None


def _prepare(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    if is_root():
        if root.parent == Path("/var/tmp/tidings"):
            os.chmod(root.parent, 0o755)
        shutil.chown(root, "postgres", "postgres")
        os.chmod(root, 0o755)


def _connect(settings: Settings, dbname: str | None = None) -> psycopg.Connection[tuple[object, ...]]:
    dsn = settings.postgres_dsn
    kwargs = {"dbname": dbname} if dbname else {}
    return psycopg.connect(dsn, connect_timeout=3, autocommit=True, **kwargs)  # type: ignore[arg-type]


def _answers(settings: Settings, dbname: str | None = None) -> bool:
    try:
        with _connect(settings, dbname) as conn:
            conn.execute("SELECT 1")
        return True
    except psycopg.Error:
        return False


def up(settings: Settings, timeout: float = 60.0) -> str:
    if _answers(settings):
        return "already running"
    binaries, root = bin_dir(), home()
    data, log = root / "data", root / "postgres.log"
    _prepare(root)
    if not (data / "PG_VERSION").exists():
        run(
            [str(binaries / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "-E", "UTF8"],
            what="initdb",
            as_user=_user(),
        )
    run(
        [
            str(binaries / "pg_ctl"),
            "-D",
            str(data),
            "-l",
            str(log),
            "-w",
            "-t",
            str(int(timeout)),
            "-o",
            f"-p {DEV_POSTGRES_PORT} -k {root} {OPTIONS}",
            "start",
        ],
        what=f"starting PostgreSQL (log: {log})",
        as_user=_user(),
        timeout=timeout + 10,
    )
    wait_for(lambda: _answers(settings, "postgres"), timeout=timeout, what="PostgreSQL", log=log)
    with _connect(settings, "postgres") as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)).fetchone() is None:
            conn.execute(f"CREATE DATABASE {DATABASE}")
    return "started"


def down() -> bool:
    data = (stack_dir() / "postgres").resolve() / "data"
    if not (data / "postmaster.pid").exists():
        return False
    run(
        [str(bin_dir() / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
        what="stopping PostgreSQL",
        as_user=_user(),
    )
    return True


def status(settings: Settings) -> ServiceStatus:
    external = "TIDINGS_POSTGRES_DSN" in os.environ
    return ServiceStatus("postgres", _answers(settings), external, settings.postgres_dsn)
