"""The gateways' asyncio consumer on the real broker: records it cannot decode do not stop it, and no
record around them is lost or handed out twice."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from tests.raw_headers import RAW_KEY, Raw, produce_raw
from tidings.config import Settings
from tidings.kafka import Incoming, Output, aio
from tidings.kafka.aio import AsyncConsumer


def test_a_header_key_that_is_not_utf8_is_handed_out_unreadable_in_its_place(
    stack: Settings, topic_factory: Callable[..., str], group_id: str
) -> None:
    """aiokafka raises on such a record in every fetch of its partition, after moving on the positions
    of the partitions it drained in the same call (which of them it drains first varies from run to
    run): those records were never handed out."""
    topic = topic_factory(partitions=4)
    good = {p: [f"{p}-{i}".encode() for i in range(20)] for p in range(3)}
    records = [Raw(Output(topic, b"k", v, partition=p)) for p, values in good.items() for v in values]
    records += [
        Raw(
            Output(topic, b"k", f"3-{i}".encode(), [("trace", b"t")], partition=3),
            RAW_KEY if i == 5 else None,
        )
        for i in range(10)
    ]
    produce_raw(stack, records)

    async def read(consumer: AsyncConsumer, got: list[Incoming], until: int) -> None:
        for _ in range(100):
            for batch in (await consumer.batch(timeout_ms=200)).values():
                got += batch
            if len(got) >= until:
                return

    async def scenario() -> list[Incoming]:
        consumer = AsyncConsumer(stack, group_id=group_id, topics=[topic])
        await consumer.start()
        got: list[Incoming] = []
        try:
            while not consumer.assignment():
                await asyncio.sleep(0.1)
            await asyncio.sleep(2)
            await read(consumer, got, 70)
            produce_raw(stack, [Raw(Output(topic, b"k", b"3-10", partition=3))])
            await read(consumer, got, 71)
        finally:
            await consumer.stop()
        return got

    got = asyncio.run(scenario())
    for p, values in good.items():
        assert [r.value for r in got if r.partition == p] == values, f"partition {p}"
    assert [r.value for r in got if r.partition == 3] == [f"3-{i}".encode() for i in range(11)]
    [unreadable] = [r for r in got if r.unreadable is not None]
    assert (unreadable.value, unreadable.headers) == (b"3-5", [])
    assert "not UTF-8" in (unreadable.unreadable or "")
    assert all(
        r.headers == [("trace", b"t")] for r in got if r.partition == 3 and r.value not in (b"3-5", b"3-10")
    )


def test_a_hold_made_while_the_salvage_reads_stands(
    stack: Settings,
    topic_factory: Callable[..., str],
    group_id: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The lanes pause a partition and seek back to a command to retry while the event loop waits for
    the salvage's read: the salvage then sought the caught-up partition to where it had been, and the
    command and those after it were never read again."""
    topic = topic_factory(partitions=2)
    produce_raw(stack, [Raw(Output(topic, b"k", f"0-{i}".encode(), partition=0)) for i in range(10)])
    read = aio.read_to_unreadable

    async def scenario() -> list[Incoming]:
        consumer = AsyncConsumer(stack, group_id=group_id, topics=[topic])
        loop = asyncio.get_running_loop()
        await consumer.start()
        got: list[Incoming] = []

        async def hold() -> None:
            consumer.pause([(topic, 0)])
            consumer.seek((topic, 0), 4)

        def holding_meanwhile(*args: Any) -> Any:
            asyncio.run_coroutine_threadsafe(hold(), loop).result(timeout=10)
            return read(*args)

        try:
            for _ in range(100):
                got += [r for batch in (await consumer.batch(timeout_ms=200)).values() for r in batch]
                if len(got) == 10:
                    break
            monkeypatch.setattr(aio, "read_to_unreadable", holding_meanwhile)
            produce_raw(stack, [Raw(Output(topic, b"k", b"1-0", partition=1), RAW_KEY)])
            for _ in range(100):
                got += [r for batch in (await consumer.batch(timeout_ms=200)).values() for r in batch]
                if len(got) == 11:
                    break
            consumer.resume([(topic, 0)])
            for _ in range(100):
                got += [r for batch in (await consumer.batch(timeout_ms=200)).values() for r in batch]
                if len(got) >= 17:
                    break
        finally:
            await consumer.stop()
        return got

    got = asyncio.run(scenario())
    assert [r.value for r in got if r.partition == 1] == [b"1-0"]
    assert [r.value for r in got if r.partition == 0] == [
        f"0-{i}".encode() for i in [*range(10), *range(4, 10)]
    ]
