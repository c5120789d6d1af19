"""Write one batch while the next is fetched: at most one write in flight.

The event-store consumer, the projection worker and both phases of a rebuild
overlap I/O the same way: batch N is written (a database round trip or a
transaction) while batch N+1 is fetched, decoded and folded. Writes still
happen one at a time and in order, so whatever a write commits (offsets,
checkpoints) never runs ahead of what an earlier write made durable.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class WriteBehind(Generic[T]):
    """At most one write in flight.

    ``await wait()`` ends the write in flight and returns its result (``None``
    when there was none); ``start(coro)`` begins the next one, after ``wait()``.
    As a context manager, leaving normally waits for the last write (its error
    propagates); leaving on an error lets the write in flight end first and
    keeps the original error.
    """

    def __init__(self) -> None:
        self._task: asyncio.Task[T] | None = None

    @property
    def in_flight(self) -> bool:
        return self._task is not None

    def start(self, write: Coroutine[Any, Any, T]) -> None:
        if self._task is not None:
            write.close()
            raise RuntimeError("a write is already in flight: wait() for it first")
        self._task = asyncio.create_task(write)

    async def wait(self) -> T | None:
        task, self._task = self._task, None
        return None if task is None else await task

    async def __aenter__(self) -> WriteBehind[T]:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            await self.wait()
            return
        if self._task is not None:
            with contextlib.suppress(BaseException):
                await self.wait()
