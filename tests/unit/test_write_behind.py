"""WriteBehind: one write in flight, in order, and no write left behind on any exit."""

from __future__ import annotations

import asyncio

import pytest

from tracker.runtime import WriteBehind


async def test_writes_run_one_at_a_time_in_order() -> None:
    log: list[str] = []
    running = 0

    async def write(n: int) -> int:
        nonlocal running
        running += 1
        assert running == 1, "two writes in flight"
        log.append(f"start {n}")
        await asyncio.sleep(0.001)
        log.append(f"end {n}")
        running -= 1
        return n

    results = []
    async with WriteBehind[int]() as behind:
        for n in range(4):
            results.append(await behind.wait())
            behind.start(write(n))
            log.append(f"fetched after {n}")  # the caller goes on while write n runs
    assert results == [None, 0, 1, 2]
    assert log.index("fetched after 1") < log.index("end 1")
    assert log[-1] == "end 3", "leaving normally waits for the last write"


async def test_starting_a_second_write_is_refused() -> None:
    async with WriteBehind[int]() as behind:
        behind.start(asyncio.sleep(0, result=1))
        with pytest.raises(RuntimeError, match="in flight"):
            behind.start(asyncio.sleep(0, result=2))
        assert await behind.wait() == 1


async def test_the_last_writes_error_propagates_on_a_normal_exit() -> None:
    async def failing() -> int:
        raise ValueError("disk on fire")

    with pytest.raises(ValueError, match="disk on fire"):
        async with WriteBehind[int]() as behind:
            behind.start(failing())


async def test_leaving_on_an_error_waits_for_the_write_and_keeps_the_error() -> None:
    finished = asyncio.Event()

    async def slow() -> int:
        await asyncio.sleep(0.01)
        finished.set()
        raise OSError("write failed too")

    with pytest.raises(KeyError):
        async with WriteBehind[int]() as behind:
            behind.start(slow())
            raise KeyError("fetch failed")
    assert finished.is_set(), "the write in flight ended before the error left"
