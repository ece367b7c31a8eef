"""Consumes the Debian archive; produces command-line tools the deployment tests need (promtool).

promtool ships in the Debian package `prometheus`, whose maintainer scripts start a Prometheus daemon,
so it is never installed: as root the package is downloaded (`apt-get download`) and only
`usr/bin/promtool` is unpacked (`dpkg-deb -x`) into `stack_dir()/tools/`, where later calls find it.
A `promtool` already on PATH wins.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from tidings.devstack import common
from tidings.devstack.common import is_root, run, stack_dir
from tidings.errors import DevStackError


def tools_dir() -> Path:
    path = stack_dir() / "tools"
    path.mkdir(parents=True, exist_ok=True)
    return path


def promtool() -> str:
    """The path of a working promtool: on PATH, cached, or unpacked from the `prometheus` package."""
    found = shutil.which("promtool")
    if found:
        return found
    cached = tools_dir() / "promtool"
    if cached.is_file() and os.access(cached, os.X_OK):
        return str(cached)
    if not is_root() or not shutil.which("apt-get") or not shutil.which("dpkg-deb"):
        raise DevStackError(
            "promtool is missing: install it (it ships in the Debian package `prometheus`, "
            "or in the Prometheus release tarball) and put it on PATH"
        )
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    if not common._apt_updated:
        run(["apt-get", "update", "-qq"], what="apt-get update", env=env)
        common._apt_updated = True
    with tempfile.TemporaryDirectory(prefix="tidings-promtool-") as tmp:
        work = Path(tmp)
        download = 'cd "$1" && exec apt-get download -qq prometheus'
        run(["sh", "-c", download, "sh", str(work)], what="apt-get download prometheus", env=env)
        debs = sorted(work.glob("prometheus_*.deb"))
        if not debs:
            raise DevStackError("apt-get download prometheus left no prometheus_*.deb")
        unpacked = work / "root"
        run(["dpkg-deb", "-x", str(debs[-1]), str(unpacked)], what="dpkg-deb -x prometheus")
        binary = unpacked / "usr" / "bin" / "promtool"
        if not binary.is_file():
            raise DevStackError("the prometheus package holds no usr/bin/promtool")
        partial = cached.with_suffix(".partial")
        shutil.copy2(binary, partial)
        partial.chmod(0o755)
        partial.replace(cached)
    return str(cached)
