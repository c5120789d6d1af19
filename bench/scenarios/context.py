"""The harness context every scenario runs with (``Bench``): the stack, the
scale, what the run has measured so far (figures, their spread, details,
notes), and the two pre-loaded sources.

Records: two source topic pairs are pre-loaded once per run (``bench.preload``)
and every consuming scenario reads those same records; a scenario's database
and consumer groups are fresh for every repetition.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg

from bench.infra import log, machine_cpu, read_json_line, summarize
from bench.scales import Scale
from bench.scenarios.keys import DERIVED, derive
from bench.stack import Progress, Stack
from bench.workers import ROOT, Worker, python_argv, tracker_argv, worker_env
from tracker.config import Settings

EVENTS_PER_FRAME = 9.9  # the simulator's mix: 10 for a completed frame, fewer on failure, more on retry


@dataclass
class Source:
    prefix: str
    events: int
    frames: int
    days: set[date]
    seconds: float


@dataclass
class Bench:
    stack: Stack
    scale: Scale
    figures: dict[str, Any] = field(default_factory=dict)
    spread: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)
    src: Source | None = None
    srcq: Source | None = None
    out_dir: Path = ROOT / "bench" / "results"

    # ---- helpers ------------------------------------------------------------------
    def put(self, key: str, values: Sequence[float | None], digits: int = 1) -> None:
        s = summarize(values)
        self.spread[key] = s
        self.figures[key] = None if s["median"] is None else round(s["median"], digits)

    @property
    def base(self) -> Settings:
        return self.stack.base

    def detail(self, scenario: str) -> dict[str, Any]:
        return self.details.setdefault(scenario, {})

    async def background_load(self, scenario: str) -> None:
        """How busy the machine is before a scenario starts (other users of it)."""
        b0, t0 = machine_cpu()
        await asyncio.sleep(self.scale.background_probe_s)
        b1, t1 = machine_cpu()
        self.detail(scenario)["background_busy_pct"] = round(100.0 * (b1 - b0) / max(1e-6, t1 - t0), 1)

    async def ensure_event_partitions(self, settings: Settings, days: set[date]) -> None:
        conn = await asyncpg.connect(settings.database.url.get())
        try:
            lo, hi = min(days) - timedelta(days=1), max(days) + timedelta(days=2)
            await conn.execute(
                "SELECT tracker_ensure_partitions('frame_events', $1, $2)",
                datetime(lo.year, lo.month, lo.day, tzinfo=UTC),
                datetime(hi.year, hi.month, hi.day, tzinfo=UTC),
            )
        finally:
            await conn.close()

    async def fetchval(self, settings: Settings, sql: str) -> Any:
        conn = await asyncpg.connect(settings.database.url.get())
        try:
            return await conn.fetchval(sql)
        finally:
            await conn.close()

    # ---- pre-loading ----------------------------------------------------------------
    async def preload(self, name: str, events: int, partitions: int | None = None) -> Source:
        """Produce at least ``events`` events of the simulator's mix into a topic pair
        (of ``partitions`` each; default: the stack's setting)."""
        prefix = self.stack.topic_prefix(name)
        partitions = partitions or self.base.topics.partitions
        s = Settings.from_env(environ={}, kafka_bootstrap=self.base.kafka.bootstrap, topic_prefix=prefix)
        await self.stack.create_topics(list(s.topics.events), partitions)
        procs = max(1, min(2, os.cpu_count() or 1, self.scale.cameras // 5))
        cams = self.scale.cameras // procs
        duration = max(1.0, events / (cams * procs * self.scale.fps * EVENTS_PER_FRAME))
        start = time.time()
        t0 = time.monotonic()
        preloaders = [
            self.stack.worker(
                f"preload-{name}",
                python_argv(
                    "-m", "bench.preload", "--prefix", prefix, "--cameras", str(cams),
                    "--camera-prefix", f"cam{chr(97 + i)}", "--fps", str(self.scale.fps),
                    "--duration", f"{duration:.3f}", "--seed", str(101 + i), "--start", f"{start:.6f}",
                    "--partitions", str(partitions),
                ),
                worker_env(s),
            )
            for i in range(procs)
        ]  # fmt: skip
        await self.stack.drive(preloaders, groups=[], total=0, timeout_s=self.scale.timeout_s)
        outs = [read_json_line(w.output()) for w in preloaders]
        n = await self.stack.end_offsets_total(s.topics.events)
        frames = sum(o["frames"] for o in outs)
        if n != sum(o["events"] for o in outs):
            raise RuntimeError(
                f"pre-load of {prefix}: {n} records in the topics, {sum(o['events'] for o in outs)} sent"
            )
        first = datetime.fromtimestamp(start, UTC)
        last = first + timedelta(seconds=duration + 5)
        src = Source(prefix, n, frames, {first.date(), last.date()}, time.monotonic() - t0)
        log(f"pre-loaded {n:,} events ({frames:,} frames) into {prefix}.* in {src.seconds:.0f}s")
        return src

    async def preload_all(self) -> None:
        self.src = await self.preload("src", self.scale.events)
        self.srcq = await self.preload("srcq", self.scale.memory_small_events)
        self.details["sources"] = {
            "events": self.src.events,
            "frames": self.src.frames,
            "small_backlog_events": self.srcq.events,
            "preload_s": round(self.src.seconds, 1),
            "mix": f"{self.scale.cameras} cameras x {self.scale.fps:g} fps, simulator defaults "
            "(5% failed frames, 2% stage retries, 1% slow frames)",
        }

    async def cleanup_sources(self) -> None:
        for src in (self.src, self.srcq):
            if src is not None:
                await self.stack.delete_prefix(src.prefix)

    # ---- the workers over a source ---------------------------------------------------
    def tracker_workers(
        self, s: Settings, mode: str, *, until_idle: bool = True, n: int | None = None
    ) -> tuple[list[Worker], list[str]]:
        """The workers of ``mode`` and the groups whose progress says how far they are:
        ``store`` (``tracker consume``), ``project`` (``tracker project``),
        ``two_groups`` (both), ``pipeline`` (``tracker consume --inline-projection``),
        ``pipeline_2w`` (two of those in one group: a worker per core). ``n``: that
        many workers in each group instead (the scale scenario)."""
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}")
        extra = ["--until-idle"] if until_idle else []
        ws, groups = [], []
        if mode in STORES:
            inline = ["--inline-projection"] if mode.startswith("pipeline") else []
            argv = tracker_argv("consume", *inline, *extra, "--metrics-port", "0")
            k = n or (2 if mode == "pipeline_2w" else 1)
            for i in range(k):
                name = f"consume-{i + 1}" if k > 1 else "consume"
                ws.append(self.stack.worker(name, argv, worker_env(s)))
            groups.append(s.groups.event_store)
        if mode in ("project", "two_groups"):
            argv = tracker_argv("project", *extra, "--metrics-port", "0")
            k = n or 1
            for i in range(k):
                name = f"project-{i + 1}" if k > 1 else "project"
                ws.append(self.stack.worker(name, argv, worker_env(s)))
            groups.append(s.groups.projections)
        return ws, groups

    async def drain(self, src: Source, mode: str, what: str, n: int | None = None) -> dict[str, Any]:
        """The workers of ``mode`` (``n`` per group) drain ``src`` into a fresh database:
        rate, counts, workers' CPU and RSS."""
        async with self.stack.scratch(what, topic_prefix=src.prefix) as s:
            ws, groups = self.tracker_workers(s, mode, n=n)
            p = await self.stack.drive(ws, groups=groups, total=src.events, timeout_s=self.scale.timeout_s)
            rate, info = p.rate()
            conn = await asyncpg.connect(s.database.url.get())
            try:
                if mode in STORES:
                    info["stored_events"] = int(await conn.fetchval("SELECT count(*) FROM frame_events"))
                if mode in PROJECTS:
                    info["projected_frames"] = int(await conn.fetchval("SELECT count(*) FROM frame_metadata"))
            finally:
                await conn.close()
            if (
                info.get("stored_events", src.events) != src.events
                or info.get("projected_frames", src.frames) != src.frames
            ):
                raise RuntimeError(
                    f"{mode}: incomplete result {info} for {src.events} events / {src.frames} frames"
                )
            steady = p.steady_cpu_us_per_event(ws, info)
            return {
                "mode": mode,
                "rate": rate,
                **info,
                "steady_workers_cpu_us_per_event": None if steady is None else round(steady, 1),
                "workers": {
                    w.name: {**w.summary(), "cpu_us_per_event": round(1e6 * (w.cpu_s or 0) / src.events, 1)}
                    for w in ws
                },
                "machine": self.stack.last_cpu,
                "progress": _thin(p),
            }

    # ---- derived ------------------------------------------------------------------------
    def derive(self) -> None:
        """The ratios (notes for those left null)."""
        for k in DERIVED:
            self.notes.pop(k, None)
        self.notes.update(derive(self.figures, self.details))


#: What the ingest modes run (see :meth:`Bench.tracker_workers`).
MODES = ("store", "project", "two_groups", "pipeline", "pipeline_2w")
STORES = ("store", "two_groups", "pipeline", "pipeline_2w")
PROJECTS = ("project", "two_groups", "pipeline", "pipeline_2w")


def _thin(p: Progress, n: int = 60) -> list[tuple[float, int]]:
    step = max(1, len(p.series) // n)
    return [(round(t, 2), c) for t, c in p.series[::step]]
