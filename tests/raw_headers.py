"""Produces records with a header key that is not UTF-8, as a producer writing byte keys (sarama,
franz-go) can, or with a timestamp of the caller's choosing. Neither Python client writes such a key:
this runs aiokafka's pure-Python record builder in a subprocess (the C builder is chosen at import),
with a key whose `encode` gives the raw bytes.

`python -m tests.raw_headers BOOTSTRAP` reads JSON lines {topic, key, value, partition, headers, raw_key,
timestamp_ms} (bytes as hex; `raw_key` null for readable headers only, `timestamp_ms` null for now) and
produces them in order.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from dataclasses import dataclass

from tidings.config import Settings
from tidings.kafka import Output

RAW_KEY = b"\xff\xfetrace"


@dataclass(frozen=True)
class Raw:
    output: Output
    raw_key: bytes | None = None
    timestamp_ms: int | None = None


def produce_raw(s: Settings, records: list[Raw]) -> None:
    lines = "".join(
        json.dumps(
            {
                "topic": r.output.topic,
                "key": (r.output.key or b"").hex(),
                "value": (r.output.value or b"").hex(),
                "partition": r.output.partition,
                "headers": [[k, v.hex()] for k, v in r.output.headers],
                "raw_key": None if r.raw_key is None else r.raw_key.hex(),
                "timestamp_ms": r.timestamp_ms,
            }
        )
        + "\n"
        for r in records
    )
    env = {**os.environ, "AIOKAFKA_NO_EXTENSIONS": "1"}
    subprocess.run(
        [sys.executable, "-m", "tests.raw_headers", s.kafka_bootstrap],
        input=lines.encode(),
        env=env,
        check=True,
        timeout=60,
    )


class _RawKey(str):
    raw = b""

    def encode(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        return self.raw


async def _produce(bootstrap: str, lines: list[dict[str, object]]) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for line in lines:
            headers: list[tuple[str, bytes]] = [(str(k), bytes.fromhex(str(v))) for k, v in line["headers"]]  # type: ignore[attr-defined]
            if line["raw_key"] is not None:
                key = _RawKey("raw")
                key.raw = bytes.fromhex(str(line["raw_key"]))
                headers.append((key, b"x"))
            await producer.send_and_wait(
                str(line["topic"]),
                bytes.fromhex(str(line["value"])),
                key=bytes.fromhex(str(line["key"])) or None,
                partition=line["partition"],  # type: ignore[arg-type]
                headers=headers,
                timestamp_ms=line.get("timestamp_ms"),  # type: ignore[arg-type]
            )
    finally:
        await producer.stop()


if __name__ == "__main__":
    assert os.environ.get("AIOKAFKA_NO_EXTENSIONS") == "1", "aiokafka's C record builder encodes keys itself"
    asyncio.run(_produce(sys.argv[1], [json.loads(line) for line in sys.stdin if line.strip()]))
