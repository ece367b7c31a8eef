"""The slots sends take in a gateway process: by rank, in arrival order within one, none lost to a
cancelled waiter."""

from __future__ import annotations

import asyncio

from gateways.limits import Slots


def test_a_freed_slot_goes_to_the_lowest_rank_then_the_earliest() -> None:
    async def scenario() -> list[str]:
        slots, order = Slots(1), []
        await slots.acquire(2)

        async def take(name: str, rank: int) -> None:
            await slots.acquire(rank)
            order.append(name)
            slots.release()

        waiting = [asyncio.create_task(take(n, r)) for n, r in [("s1", 2), ("r1", 1), ("s2", 2), ("u1", 0)]]
        await asyncio.sleep(0)
        slots.release()
        await asyncio.gather(*waiting)
        return order

    assert asyncio.run(scenario()) == ["u1", "r1", "s1", "s2"]


def test_a_cancelled_waiter_leaves_its_slot_to_the_next() -> None:
    async def scenario() -> tuple[bool, int]:
        slots = Slots(1)
        await slots.acquire(0)
        gone = asyncio.create_task(slots.acquire(0))
        stays = asyncio.create_task(slots.acquire(1))
        await asyncio.sleep(0)
        gone.cancel()
        slots.release()
        await asyncio.wait_for(stays, 1)
        slots.release()
        await slots.acquire(2)
        return gone.cancelled(), slots.free

    assert asyncio.run(scenario()) == (True, 0)


def test_a_waiter_cancelled_after_it_was_given_the_slot_gives_it_back() -> None:
    async def scenario() -> int:
        slots = Slots(1)
        await slots.acquire(0)
        late = asyncio.create_task(slots.acquire(0))
        await asyncio.sleep(0)
        slots.release()
        late.cancel()
        await asyncio.gather(late, return_exceptions=True)
        return slots.free

    assert asyncio.run(scenario()) == 1
