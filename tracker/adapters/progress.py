"""Progress samples: how far a worker has got, recorded every few seconds.

``tracker status`` turns two samples a minute apart into events/s without
touching ``frame_events``. Sampling failures are logged and ignored: progress
is for operators, it must never hold up a batch.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import asyncpg

log = logging.getLogger(__name__)

_INSERT = (
    "WITH pruned AS (DELETE FROM tracker_progress_samples "
    "WHERE worker = $1 AND sampled_at < now() - interval '1 hour') "
    "INSERT INTO tracker_progress_samples (worker, position) VALUES ($1, $2) "
    "ON CONFLICT DO NOTHING"
)


class ProgressSampler:
    def __init__(self, worker: str, every_s: float = 5.0) -> None:
        self.worker = worker
        self.every_s = every_s
        self.position = 0
        self._last = 0.0

    def advance(self, n: int) -> None:
        self.position += n

    async def maybe_sample(self, pool: asyncpg.Pool | None, *, force: bool = False) -> None:
        now = time.monotonic()
        if pool is None or (not force and now - self._last < self.every_s):
            return
        self._last = now
        try:
            await pool.execute(_INSERT, self.worker, self.position)
        except (asyncpg.PostgresError, OSError, asyncpg.InterfaceError) as e:
            log.debug("progress sample failed: %s", e)


async def periodically(fn: Callable[[], Awaitable[None]], every_s: float) -> None:
    """Run ``fn`` every ``every_s`` seconds until cancelled; its errors are
    logged, never raised: monitoring must not kill a worker. The first failure
    after a success is a warning, repeats of it are debug lines (an outage
    would otherwise log one warning every ``every_s``)."""
    name = getattr(fn, "__qualname__", None) or repr(fn)
    failing = False
    while True:
        await asyncio.sleep(every_s)
        try:
            await fn()
        except Exception as e:
            log.log(logging.DEBUG if failing else logging.WARNING, "periodic %s failed: %s", name, e)
            failing = True
        else:
            if failing:
                log.info("periodic %s works again", name)
            failing = False
