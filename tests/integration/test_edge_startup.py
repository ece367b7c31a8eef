"""The HTTP edge on the real stack, started while Kafka does not answer: it serves liveness, reports
itself not ready and refuses writes with 503 until Kafka answers, then produces."""

import asyncio
import contextlib
import time
from typing import Any

import aiohttp

from tests.integration.test_api import SHIPPED, call, serving
from tests.integration.test_router import decoded
from tests.ports import free_port
from tidings.config import Settings
from tidings.events import NotificationRequested
from tidings.topics import names


async def forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.close()


def kafka_door(port: int, broker: str) -> Any:
    """A TCP relay on `port` to the real broker: the bootstrap address the edge was given, which
    answers only once the relay is listening (Kafka then tells the client the broker's own address)."""
    host, broker_port = broker.rsplit(":", 1)

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(host, int(broker_port))
        await asyncio.gather(forward(reader, upstream_writer), forward(upstream_reader, writer))

    return asyncio.start_server(relay, "127.0.0.1", port)


def test_the_edge_starts_without_kafka_and_produces_once_kafka_answers(topology: Settings) -> None:
    port = free_port()
    s = Settings(**(topology.model_dump() | {"kafka_bootstrap": f"127.0.0.1:{port}"}))

    async def scenario(base: str) -> dict[str, Any]:
        seen: dict[str, Any] = {}
        async with aiohttp.ClientSession() as http:
            seen["live"] = await call(http, "GET", f"{base}/healthz", key=None)
            seen["unready"] = await call(http, "GET", f"{base}/readyz", key=None)
            seen["refused"] = await call(http, "POST", f"{base}/v1/notifications", json=SHIPPED)
            door = await kafka_door(port, topology.kafka_bootstrap)
            try:
                deadline = time.monotonic() + 30
                while (ready := await call(http, "GET", f"{base}/readyz", key=None))[0] != 200:
                    assert time.monotonic() < deadline, f"never ready: {ready}"
                    await asyncio.sleep(0.2)
                seen["ready"] = ready
                seen["accepted"] = await call(http, "POST", f"{base}/v1/notifications", json=SHIPPED)
            finally:
                door.close()
        return seen

    seen = asyncio.run(serving(s, scenario))
    assert seen["live"][0] == 200
    code, body, _ = seen["unready"]
    assert code == 503
    assert body["checks"]["kafka"] == "unavailable (KafkaUnavailable)"
    code, problem, headers = seen["refused"]
    assert code == 503
    assert headers["Content-Type"].startswith("application/problem+json")
    assert problem["status"] == 503
    assert seen["ready"][1]["checks"]["kafka"] == "ok"
    code, accepted, _ = seen["accepted"]
    assert code == 202
    requested = decoded(topology, names(topology).requested)
    assert [str(e.notification_id) for e in requested if isinstance(e, NotificationRequested)] == [
        accepted["notification_id"]
    ]
