"""Runs a private Redis (Debian package `redis-server`) on a loopback port, without persistence."""

from __future__ import annotations

import os
from pathlib import Path

import redis

from tidings.config import DEV_REDIS_PORT, Settings
from tidings.devstack.common import ServiceStatus, pid_alive, require, run, stack_dir, stop_pid, wait_for


def home() -> Path:
    path = stack_dir() / "redis"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _answers(settings: Settings) -> bool:
    try:
        client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=1, socket_timeout=1)
        with client:
            return bool(client.ping())
    except redis.RedisError:
        return False


def up(settings: Settings, timeout: float = 30.0) -> str:
    if _answers(settings):
        return "already running"
    binary = require("redis-server", ["redis-server"], why="running Redis")
    root = home()
    log = root / "redis.log"
    run(
        [
            binary,
            "--port",
            str(DEV_REDIS_PORT),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "yes",
            "--dir",
            str(root),
            "--logfile",
            str(log),
            "--pidfile",
            str(root / "pid"),
        ],
        what="starting Redis",
    )
    wait_for(lambda: _answers(settings), timeout=timeout, what="Redis", log=log)
    return "started"


def down() -> bool:
    pid_file = home() / "pid"
    if pid_alive(pid_file) is None:
        return False
    return stop_pid(pid_file)


def status(settings: Settings) -> ServiceStatus:
    external = "TIDINGS_REDIS_URL" in os.environ
    return ServiceStatus("redis", _answers(settings), external, settings.redis_url)
