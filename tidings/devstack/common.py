"""Shared helpers of the local stack: paths, processes, Debian packages, readiness polling."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tidings.errors import DevStackError

PROJECT_ROOT = Path(__file__).resolve().parents[2]
_apt_updated = False


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    running: bool
    external: bool
    address: str
    detail: str = ""


def stack_dir() -> Path:
    override = os.environ.get("TIDINGS_DEVSTACK_DIR")
    base = Path(override) if override else PROJECT_ROOT / ".devstack"
    base.mkdir(parents=True, exist_ok=True)
    return base.resolve()


def cache_dir() -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "tidings"


def short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def is_root() -> bool:
    return os.geteuid() == 0


def run(
    cmd: Sequence[str],
    *,
    what: str,
    env: dict[str, str] | None = None,
    timeout: float = 600,
    as_user: str | None = None,
) -> str:
    full = ["runuser", "-u", as_user, "--", *cmd] if as_user else list(cmd)
    try:
        proc = subprocess.run(
            full, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
        )
    except FileNotFoundError as exc:
        raise DevStackError(f"{what}: {exc.filename} is not installed") from exc
    except subprocess.TimeoutExpired as exc:
        raise DevStackError(f"{what}: no result within {timeout:.0f}s") from exc
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-15:]
        raise DevStackError(f"{what} failed (exit {proc.returncode}):\n" + "\n".join(tail))
    return proc.stdout


def apt_install(packages: Sequence[str], *, why: str) -> None:
    """Install Debian packages (root only); a non-root user is told what to install."""
    global _apt_updated
    if not is_root() or not shutil.which("apt-get"):
        raise DevStackError(
            f"{why}: install the Debian packages {' '.join(packages)} "
            "(or point TIDINGS_* at running services)"
        )
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    if not _apt_updated:
        run(["apt-get", "update", "-qq"], what="apt-get update", env=env)
        _apt_updated = True
    run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages],
        what=f"apt-get install {' '.join(packages)}",
        env=env,
    )


def require(binary: str, packages: Sequence[str], *, why: str) -> str:
    path = shutil.which(binary)
    if path is None:
        apt_install(packages, why=why)
        path = shutil.which(binary)
    if path is None:
        raise DevStackError(f"{why}: {binary} still missing after installing {' '.join(packages)}")
    return path


def pid_alive(pid_file: Path) -> int | None:
    try:
        pid = int(pid_file.read_text().split()[0])
        os.kill(pid, 0)
    except (FileNotFoundError, ValueError, IndexError, ProcessLookupError):
        return None
    except PermissionError:
        return pid
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][:1]
    except FileNotFoundError:
        return None
    return None if state == "Z" else pid


def stop_pid(pid_file: Path, *, timeout: float = 30.0) -> bool:
    pid = pid_alive(pid_file)
    if pid is None:
        pid_file.unlink(missing_ok=True)
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and pid_alive(pid_file):
        time.sleep(0.2)
    if pid_alive(pid_file):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    pid_file.unlink(missing_ok=True)
    return True


def wait_for(
    check: Callable[[], bool],
    *,
    timeout: float,
    what: str,
    log: Path,
    alive: Callable[[], bool] = lambda: True,
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if not alive():
            raise DevStackError(f"{what} exited during start-up; see {log}")
        time.sleep(0.3)
    raise DevStackError(f"{what} did not answer within {timeout:.0f}s; see {log}")
