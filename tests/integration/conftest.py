"""Session fixtures on the real local stack: `tidings dev up` once, then a fresh topic and group per test."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tidings import devstack
from tidings.config import Settings, settings
from tidings.kafka import TopicFollower, apply_topics, delete_topics, read_topic
from tidings.kafka.records import Incoming
from tidings.topics import TopicSpec, registry

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Marks this directory's tests `integration` (`pytestmark` in a conftest marks nothing, so
    `-m "not integration"` still started the stack)."""
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def stack() -> Settings:
    s = settings()
    devstack.up(s)
    apply_topics(s, registry(s))
    return s


@pytest.fixture
def topic_factory(stack: Settings) -> Iterator[Callable[..., str]]:
    namespace = f"tf{uuid.uuid4().hex[:8]}-"

    def make(prefix: str = "test", partitions: int = 3, **kwargs: object) -> str:
        name = f"{namespace}{prefix}.{uuid.uuid4().hex[:10]}"
        spec = TopicSpec(name, "test", (), partitions=partitions, **kwargs)  # type: ignore[arg-type]
        assert apply_topics(stack, [spec])[0].action == "created"
        return name

    yield make
    delete_topics(stack, namespace)


@pytest.fixture
def group_id() -> str:
    return f"test-group-{uuid.uuid4().hex[:10]}"


def read_all(s: Settings, topic: str, *, idle: float = 3.0, committed: bool = True) -> list[Incoming]:
    """Everything in a topic now: read_committed up to its end, or read_uncommitted until idle."""
    if not committed:
        return list(read_topic(s, topic, from_beginning=True, idle_timeout=idle, read_committed=False))
    follower = TopicFollower(s, topic)
    try:
        return follower.catch_up()
    finally:
        follower.close()


@pytest.fixture
def namespace(stack: Settings) -> Iterator[Callable[..., Settings]]:
    """Fresh topologies (every registry topic and the router's changelogs) under unique prefixes,
    deleted after the test so the broker does not accumulate thousands of partitions."""
    prefixes: list[str] = []

    def make(**changes: object) -> Settings:
        prefix = f"t{uuid.uuid4().hex[:8]}."
        prefixes.append(prefix)
        fields = {"topic_prefix": prefix, "partitions": 3, "retry_tiers": "10s"} | changes
        s = Settings(**(stack.model_dump() | fields))
        apply_topics(s, registry(s))
        return s

    yield make
    for prefix in prefixes:
        delete_topics(stack, prefix)


@pytest.fixture
def topology(namespace: Callable[..., Settings]) -> Settings:
    return namespace()


@pytest.fixture
def database(topology: Settings) -> Iterator[Settings]:
    """A fresh, migrated PostgreSQL database for the topology, so projections never share tables."""
    import psycopg

    from projections.db import migrate

    name = "t_" + uuid.uuid4().hex[:12]
    with psycopg.connect(topology.postgres_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}".encode())
    dsn = topology.postgres_dsn.rsplit("/", 1)[0] + "/" + name
    s = Settings(**(topology.model_dump() | {"postgres_dsn": dsn}))
    migrate(dsn)
    yield s
    with psycopg.connect(topology.postgres_dsn, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)".encode())


def table_checksums(s: Settings, tables: list[str]) -> dict[str, tuple[int, str]]:
    import psycopg

    with psycopg.connect(s.postgres_dsn) as conn:
        return {
            t: conn.execute(
                f"SELECT count(*), coalesce(md5(string_agg(x::text, '|' ORDER BY x::text)), '') "
                f"FROM {t} x".encode()
            ).fetchone()
            for t in tables
        }  # type: ignore[misc]
