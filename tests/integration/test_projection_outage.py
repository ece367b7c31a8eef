"""A projection whose PostgreSQL goes away: it waits and goes on where its stored offsets say, without
exiting, whether the outage meets it writing a batch or taking on partitions."""

from __future__ import annotations

import asyncio
import uuid

from psycopg.conninfo import conninfo_to_dict, make_conninfo

from projections.base import Projection, Runner
from projections.db import connect
from tests.integration.test_projections import rows
from tests.integration.test_sms_opt_outs import Freezer
from tidings.config import Settings
from tidings.events import NotificationRequested
from tidings.kafka import EventProducer, Output
from tidings.pg import DEFAULTS
from tidings.topics import names


def requests(s: Settings, n: int) -> set[str]:
    made = [
        NotificationRequested(
            tenant_id="acme", notification_id=uuid.uuid4(), recipient_id=f"r{i}", notification_type="t"
        )
        for i in range(n)
    ]
    with EventProducer(s) as producer:
        for request in made:
            producer.produce(Output.event(names(s).requested, request))
    return {str(r.notification_id) for r in made}


def test_a_projection_given_its_partitions_while_postgresql_is_down_waits_for_it(database: Settings) -> None:
    """The stored offsets are read when partitions are assigned: with PostgreSQL down then, the error
    left the consumer's callback and the projection exited, to crash-loop under a supervisor until the
    database came back."""
    s = database
    sent = requests(s, 50)
    dsn = conninfo_to_dict(s.postgres_dsn)
    freezer = Freezer(str(dsn.get("host") or "127.0.0.1"), int(str(dsn.get("port") or 5432)))

    async def scenario() -> None:
        async with freezer as port:
            relayed_dsn = make_conninfo(s.postgres_dsn, host="127.0.0.1", port=port)
            relayed = Settings(**(s.model_dump() | {"postgres_dsn": relayed_dsn}))
            runner = await asyncio.to_thread(Runner, relayed, Projection.registry["delivery_status"]())
            freezer.refusing.set()
            await freezer.cut()
            try:
                running = asyncio.create_task(asyncio.to_thread(runner.run, idle_exit_after=3.0))
                await asyncio.sleep(6)
                assert not running.done(), f"the projection exited while PostgreSQL was down: {running}"
                freezer.refusing.clear()
                await asyncio.wait_for(running, 60)
            finally:
                runner.stop()
                await asyncio.to_thread(runner.close)

    asyncio.run(scenario())
    assert {str(r[0]) for r in rows(s, "SELECT notification_id FROM notifications")} == sent


def test_a_projections_connection_has_keepalives_and_a_connect_timeout(database: Settings) -> None:
    """Without keepalives a connection to a host that vanished waited for ever for its answer."""
    with connect(database.postgres_dsn) as conn:
        got = conn.info.get_parameters()
    assert {k: got.get(k) for k in DEFAULTS} == DEFAULTS, got
