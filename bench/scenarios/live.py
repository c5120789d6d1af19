"""The pipeline running live under a steady offered load: what the freshness
and soak scenarios share.

``live_workers`` starts the workers of a mode (not ``--until-idle``) on a fresh
database and waits until their groups are stable; ``LiveLoad`` runs the load
generator (``bench.loadgen``, a process of its own) and, while it sends, polls
``frame_metadata`` for the probed frames (one in ``sample_every``): a probe's
latency is from just before its first record is sent to the first poll (every
20 ms) that finds its row.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from bench import workers
from bench.infra import CpuMeter, cpu_meter
from bench.scenarios.context import Bench
from bench.workers import Worker, python_argv, worker_env
from tracker.config import Settings


@dataclass
class Live:
    """Running workers of one mode, their groups, and the machine's CPU since they started."""

    settings: Settings
    workers: list[Worker]
    groups: list[str]
    cpu: CpuMeter
    machine: dict[str, float] = field(default_factory=dict)


@contextlib.asynccontextmanager
async def live_workers(b: Bench, s: Settings, mode: str, *, ready_s: float = 60.0) -> AsyncIterator[Live]:
    """The workers of ``mode`` on ``s``'s (fresh) database, running until the block ends."""
    await b.stack.create_topics([*s.topics.events, s.topics.dlq], s.topics.partitions)
    ws, groups = b.tracker_workers(s, mode, until_idle=False)
    live = Live(s, ws, groups, cpu_meter())
    for w in ws:
        w.start()
    try:
        deadline = time.monotonic() + ready_s
        while True:
            states = [await b.stack.group_state(g) for g in groups]
            if all(st == "Stable" for st in states):
                break
            if any(w.reap() for w in ws) or time.monotonic() > deadline:
                raise RuntimeError(f"workers not ready: groups {states}; {ws[0].log_tail(10)}")
            await asyncio.sleep(0.2)
        await asyncio.sleep(1.0)
        yield live
    finally:
        for w in ws:
            w.end()
        live.machine = live.cpu.stop()


Tick = Callable[[float], Awaitable[None]]


@dataclass
class LiveLoad:
    """``rate`` events/s for ``duration_s`` from ``bench.loadgen``, with freshness probes."""

    live: Live
    rate: float
    duration_s: float
    sample_every: int
    stream: bool = False  # encode as it goes (long runs) instead of up front
    samples: list[tuple[float, float]] = field(default_factory=list)  # (sent at, ms to visible)
    pending: dict[str, float] = field(default_factory=dict)  # probes not visible yet
    summary: dict[str, Any] = field(default_factory=dict)  # the generator's final line

    async def run(self, b: Bench, *, every_s: float = 0.0, on_tick: Tick | None = None) -> None:
        """Offer the load until the generator ends and the last probes land (at most
        60 s more); ``on_tick(seconds since the load began)`` every ``every_s``."""
        log_path = b.stack.workdir / f"{b.stack.name('loadgen')}.log"
        argv = python_argv(
            "-m", "bench.loadgen", "--rate", str(self.rate), "--duration", str(self.duration_s),
            "--sample-every", str(self.sample_every), *(["--stream"] if self.stream else []),
        )  # fmt: skip
        with log_path.open("ab") as errf:
            proc = await asyncio.create_subprocess_exec(
                *argv, env=worker_env(self.live.settings), cwd=workers.CODE_ROOT,
                stdout=asyncio.subprocess.PIPE, stderr=errf,
            )  # fmt: skip
        done = asyncio.Event()
        started = asyncio.Event()

        async def reader() -> None:
            assert proc.stdout is not None
            async for raw in proc.stdout:
                line = raw.decode().strip()
                if line == "READY":
                    started.set()
                elif line.startswith("P "):
                    _, fid, t = line.split(" ")
                    self.pending[fid] = float(t)
                elif line.startswith("{"):
                    self.summary.update(json.loads(line))
            started.set()
            done.set()

        async def poller(conn: asyncpg.Connection) -> None:
            await started.wait()
            t0 = time.monotonic()
            next_tick = every_s
            while not (done.is_set() and not self.pending):
                if self.pending:
                    ids = list(self.pending)
                    rows = await conn.fetch(
                        "SELECT frame_id FROM frame_metadata WHERE frame_id = ANY($1::text[])", ids
                    )
                    now = time.time()
                    for r in rows:
                        t = self.pending.pop(r["frame_id"], None)
                        if t is not None:
                            self.samples.append((t, (now - t) * 1000.0))
                for w in self.live.workers:
                    w.sample()
                    if w.reap():
                        raise RuntimeError(f"{w.name} exited during the load: {w.log_tail(10)}")
                self.live.cpu.sample()
                if on_tick is not None and every_s and time.monotonic() - t0 >= next_tick:
                    next_tick += every_s
                    await on_tick(time.monotonic() - t0)
                await asyncio.sleep(0.02)

        conn = await asyncpg.connect(self.live.settings.database.url.get())
        try:
            rtask = asyncio.create_task(reader())
            ptask = asyncio.create_task(poller(conn))
            wtask = asyncio.create_task(proc.wait())
            await asyncio.wait({wtask, ptask}, return_when=asyncio.FIRST_COMPLETED)
            if ptask.done() and ptask.exception() is not None:  # a worker died: stop the load now
                proc.kill()
                await wtask
                await rtask
                raise ptask.exception()  # type: ignore[misc]
            await wtask
            await rtask
            if proc.returncode != 0:
                ptask.cancel()
                raise RuntimeError(f"load generator exited {proc.returncode}: {log_path.read_text()[-2000:]}")
            # Let the last probes land (bounded), then stop.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(ptask), timeout=60.0)
            if ptask.done() and ptask.exception() is not None:
                raise ptask.exception()  # type: ignore[misc]
        finally:
            ptask.cancel()
            await conn.close()
        if not self.samples:
            raise RuntimeError("no probe frame became visible")

    def after_warmup(self, warmup_s: float) -> list[float]:
        """The probes' latencies (ms), the first ``warmup_s`` left out."""
        t_first = min(t for t, _ in self.samples)
        return [ms for t, ms in self.samples if t >= t_first + warmup_s]

    def series(self, points: int = 400) -> list[tuple[float, float]]:
        """(seconds into the load, ms), thinned to about ``points``."""
        t_first = min(t for t, _ in self.samples)
        step = max(1, len(self.samples) // points)
        return [(round(t - t_first, 2), round(ms, 1)) for t, ms in self.samples][::step]
