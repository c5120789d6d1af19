"""The scenarios. Each pre-loads its input first, measures only what it names,
repeats it, and uses databases (and, where it publishes, topics) of its own.

Records: two source topic pairs are pre-loaded once per run (``bench.preload``)
and every consuming scenario reads those same records; a scenario's database
and consumer groups are fresh for every repetition.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import random
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg

from bench import querydata, workers
from bench.infra import cpu_meter, log, machine_cpu, percentile, read_json_line, summarize
from bench.scales import Scale
from bench.stack import Progress, Stack
from bench.workers import ROOT, Worker, python_argv, tracker_argv, worker_env
from tracker.config import Settings

EVENTS_PER_FRAME = 9.9  # the simulator's mix: 10 for a completed frame, fewer on failure, more on retry


@dataclass(frozen=True)
class Key:
    name: str
    unit: str
    scenario: str
    target: str = ""  # e.g. ">= 30000"
    note: str = ""


KEYS: tuple[Key, ...] = (
    Key("limit_consume_eps", "events/s", "limits", note="aiokafka reading the pre-loaded topics, discarding"),
    Key("limit_decode_eps", "events/s", "limits", note="FrameEventCodec.decode_record on the same records"),
    Key("limit_copy_rows_s", "rows/s", "limits", note="COPY of the same rows into frame_events"),
    Key("naive_eps", "events/s", "baseline", note="decode + INSERT + offset commit per record"),
    Key("peer_quix_eps", "events/s", "peers", note="Quix Streams + its PostgreSQL sink, defaults"),
    Key("peer_connect_eps", "events/s", "peers", note="Kafka Connect + Debezium JDBC sink"),
    Key("store_eps", "events/s", "ingest", note="tracker consume alone"),
    Key("project_eps", "events/s", "ingest", note="tracker project alone"),
    Key("pipeline_eps", "events/s", "ingest", ">= 30000", "both groups together"),
    Key("ratio_vs_naive", "x", "ingest", ">= 10", "pipeline_eps / naive_eps"),
    Key("ratio_vs_limit", "x", "ingest", ">= 0.5", "pipeline_eps / min(limits)"),
    Key("store_vs_quix", "x", "ingest", ">= 1.5", "store_eps / peer_quix_eps"),
    Key("store_vs_connect", "x", "ingest", ">= 1", "store_eps / peer_connect_eps"),
    Key("store_cpu_us_per_event", "us", "ingest", note="CPU of tracker consume per event (alone)"),
    Key("project_cpu_us_per_event", "us", "ingest", note="CPU of tracker project per event (alone)"),
    Key("fresh_p50_ms", "ms", "freshness", note="publish -> row in frame_metadata"),
    Key("fresh_p99_ms", "ms", "freshness", "<= 1000"),
    Key("fresh_max_ms", "ms", "freshness"),
    Key("fresh_offered_eps", "events/s", "freshness", note="load actually offered"),
    Key("replay_topics_eps", "events/s", "replay", ">= 30000"),
    Key("replay_store_eps", "events/s", "replay"),
    Key("journey_p50_ms", "ms", "queries"),
    Key("journey_p99_ms", "ms", "queries", "<= 20"),
    Key("slow_p99_ms", "ms", "queries", "<= 100", "1-hour window"),
    Key("failures_p99_ms", "ms", "queries", "<= 300", "24-hour window"),
    Key("stats_p99_ms", "ms", "queries", note="camera + stage stats, 24 hours"),
    Key("query_events", "events", "queries", note="events stored when queried"),
    Key("worker_rss_mb_max", "MB", "memory", "<= 300", "max RSS of either worker"),
    Key("worker_rss_growth_mb", "MB", "memory", note="max RSS at the large backlog minus at the small one"),
    Key("sdk_frames_per_s", "frames/s", "sdk", note="FrameRepository.save, 3 saves per frame, one process"),
    Key("sdk_events_per_s", "events/s", "sdk", note="sdk_frames_per_s x 10 events per frame"),
    Key("sdk_overhead_us_per_frame", "us", "sdk", note="instrumentation CPU per frame, no span export"),
    Key("sdk_overhead_batch_us_per_frame", "us", "sdk", note="the same, batch span processor, null exporter"),
    Key("sdk_bare_us_per_frame", "us", "sdk", note="CPU per frame of the domain calls alone (no publishing)"),
    Key("kafka_version", "", "environment"),
    Key("postgres_version", "", "environment"),
    Key("partitions", "per topic", "environment"),
    Key("batch_max_records", "records", "environment"),
    Key("batch_timeout_ms", "ms", "environment"),
    Key("batch_linger_ms", "ms", "environment"),
    Key("cpu_count", "", "environment"),
    Key("git_commit", "", "environment"),
)
SCENARIOS = (
    "environment",
    "limits",
    "baseline",
    "peers",
    "ingest",
    "freshness",
    "replay",
    "queries",
    "memory",
    "sdk",
)
# Keys that may be null, provided a "<key>_note" says why.
NULLABLE = (
    "peer_connect_eps",
    "peer_quix_eps",
    "ratio_vs_naive",
    "ratio_vs_limit",
    "store_vs_quix",
    "store_vs_connect",
)


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
        conn = await asyncpg.connect(settings.database_url.get())
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
        conn = await asyncpg.connect(settings.database_url.get())
        try:
            return await conn.fetchval(sql)
        finally:
            await conn.close()

    # ---- pre-loading ----------------------------------------------------------------
    async def preload(self, name: str, events: int) -> Source:
        """Produce at least ``events`` events of the simulator's mix into a topic pair."""
        prefix = self.stack.topic_prefix(name)
        s = Settings.from_env(environ={}, kafka_bootstrap=self.base.kafka_bootstrap, topic_prefix=prefix)
        await self.stack.create_topics(list(s.event_topics), self.base.topic_partitions)
        procs = max(1, min(2, os.cpu_count() or 1, self.scale.cameras // 5))
        cams = self.scale.cameras // procs
        duration = max(1.0, events / (cams * procs * self.scale.fps * EVENTS_PER_FRAME))
        start = time.time()
        t0 = time.monotonic()
        workers = [
            self.stack.worker(
                f"preload-{name}",
                python_argv(
                    "-m", "bench.preload", "--prefix", prefix, "--cameras", str(cams),
                    "--camera-prefix", f"cam{chr(97 + i)}", "--fps", str(self.scale.fps),
                    "--duration", f"{duration:.3f}", "--seed", str(101 + i), "--start", f"{start:.6f}",
                    "--partitions", str(self.base.topic_partitions),
                ),
                worker_env(s),
            )
            for i in range(procs)
        ]  # fmt: skip
        await self.stack.drive(workers, groups=[], total=0, timeout_s=self.scale.timeout_s)
        outs = [read_json_line(w.log_path.read_text()) for w in workers]
        n = await self.stack.end_offsets_total(s.event_topics)
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

    # ---- environment --------------------------------------------------------------
    async def environment(self) -> None:
        d = self.detail("environment")
        facts = await asyncio.to_thread(_host_facts)
        conn = await asyncpg.connect(self.base.database_url.get())
        try:
            pg = str(await conn.fetchval("SHOW server_version"))
            d["postgres_settings"] = {
                r["name"]: r["setting"]
                for r in await conn.fetch(
                    "SELECT name, setting FROM pg_settings WHERE name IN ('shared_buffers', "
                    "'synchronous_commit', 'fsync', 'max_wal_size', 'work_mem', "
                    "'max_parallel_workers_per_gather', 'wal_level')"
                )
            }
        finally:
            await conn.close()
        kafka, commit, model = facts["kafka"], facts["commit"], facts["cpu_model"]
        mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
        from importlib.metadata import PackageNotFoundError, version

        pkgs: dict[str, str | None] = {}
        for p in ("aiokafka", "asyncpg", "fastavro", "quixstreams", "confluent-kafka", "psycopg2-binary"):
            try:
                pkgs[p] = version(p)
            except PackageNotFoundError:
                pkgs[p] = None
        self.figures.update(
            kafka_version=kafka,
            postgres_version=pg,
            partitions=self.base.topic_partitions,
            batch_max_records=self.base.batch_max_records,
            batch_timeout_ms=self.base.batch_timeout_ms,
            batch_linger_ms=self.base.batch_linger_ms,
            cpu_count=os.cpu_count() or 1,
            git_commit=commit,
        )
        d.update(
            code=("this checkout" if workers.CODE_ROOT == ROOT else "another checkout (--code)"),
            cpu_model=model,
            memory_gb=round(mem_gb, 1),
            python=platform.python_version(),
            packages=pkgs,
            replay_batch_size=5000,
            load_average=list(os.getloadavg()),
            topics_per_source=2,
        )

    # ---- limits -----------------------------------------------------------------------
    async def limits(self) -> None:
        assert self.src is not None
        reps = self.scale.reps
        async with self.stack.scratch("limits", topic_prefix=self.src.prefix) as s:
            w = self.stack.worker(
                "limits", python_argv("-m", "bench.probes", "limits", "--reps", str(reps)), worker_env(s)
            )
            await self.stack.drive([w], groups=[], total=0, timeout_s=self.scale.timeout_s)
            out = read_json_line(w.log_path.read_text())
        for kind, key in (
            ("consume", "limit_consume_eps"),
            ("decode", "limit_decode_eps"),
            ("copy", "limit_copy_rows_s"),
        ):
            self.put(key, [r["records"] / r["seconds"] for r in out[kind]], 0)
        self.detail("limits").update(
            records=self.src.events,
            copy_chunk_rows=out.get("copy_chunk_rows"),
            probe=w.summary(),
            method="one process: consume passes (no group, fetch settings of the consumer), then decode "
            "passes over the values in memory, then COPY passes (TRUNCATE between) of the rows the "
            "consumer builds",
        )

    # ---- baseline -------------------------------------------------------------------
    async def baseline(self) -> None:
        assert self.src is not None
        n = min(self.scale.naive_records, self.src.events)
        vals, runs = [], []
        for _ in range(self.scale.reps):
            async with self.stack.scratch("naive", topic_prefix=self.src.prefix) as s:
                await self.ensure_event_partitions(s, self.src.days)
                w = self.stack.worker(
                    "naive", python_argv("-m", "bench.naive", "--limit", str(n)), worker_env(s)
                )
                p = await self.stack.drive(
                    [w], groups=[s.event_store_group], total=n, timeout_s=self.scale.timeout_s
                )
                rate, info = p.rate()
                vals.append(rate)
                runs.append({**info, "worker": w.summary(), "machine": self.stack.last_cpu})
        self.put("naive_eps", vals, 0)
        self.detail("baseline").update(records=n, runs=runs)

    # ---- peers ------------------------------------------------------------------------
    async def peers(self) -> None:
        assert self.src is not None
        n = self.scale.quix_records or self.src.events
        n = min(n, self.src.events)
        vals, runs = [], []
        import importlib.util

        if importlib.util.find_spec("quixstreams") is None:
            self.figures["peer_quix_eps"] = None
            self.notes["peer_quix_eps"] = "quixstreams is not installed (pip install '.[bench]')"
        else:
            for _ in range(self.scale.reps):
                async with self.stack.scratch("quix", topic_prefix=self.src.prefix) as s:
                    await self.ensure_event_partitions(s, self.src.days)
                    w = self.stack.worker(
                        "quix",
                        python_argv("-m", "bench.peer_quix", "--limit", str(n)),
                        worker_env(s, PYTHONWARNINGS="ignore"),
                    )
                    p = await self.stack.drive(
                        [w], groups=[s.event_store_group], total=n, timeout_s=self.scale.timeout_s
                    )
                    out = read_json_line(w.log_path.read_text())
                    stored = await self.fetchval(s, "SELECT count(*) FROM frame_events")
                    if stored != n:
                        raise RuntimeError(f"quix peer stored {stored} rows of {n}")
                    vals.append(out["records"] / out["seconds"])
                    runs.append(
                        {
                            **out,
                            "offsets_rate": p.rate()[0],
                            "worker": w.summary(),
                            "machine": self.stack.last_cpu,
                        }
                    )
            self.put("peer_quix_eps", vals, 0)
        connect_runs = await self._peer_connect()
        self.detail("peers").update(
            records=n,
            quix_runs=runs,
            method="in-process: first record deserialized to the end of app.run(count=N), i.e. after the "
            "final checkpoint has written and committed everything; the offsets-polled rate is alongside",
            connect_runs=connect_runs,
            connect_method="Kafka Connect standalone + Debezium JDBC sink (defaults but for the table, its "
            "key, upsert, no schema evolution) reading a JSON copy of the first N records (finished rows "
            "with their Connect schema: no decoding or validation on Connect's side); timed from the "
            "first row visible in the table to the N-th (count(*) polled every 0.25 s)",
        )

    async def _peer_connect(self) -> list[dict[str, Any]]:
        assert self.src is not None
        if self.scale.connect_records < 0:
            self.figures["peer_connect_eps"] = None
            self.notes["peer_connect_eps"] = f"not run at scale {self.scale.name} (a JVM and ~100 MB of jars)"
            return []
        n = min(self.scale.connect_records or self.src.events, self.src.events)
        json_prefix = f"{self.src.prefix}.connect-json"
        vals, runs = [], []
        for _ in range(self.scale.reps):
            async with self.stack.scratch("connect", topic_prefix=self.src.prefix) as s:
                await self.ensure_event_partitions(s, self.src.days)
                w = self.stack.worker(
                    "connect",
                    python_argv("-m", "bench.peer_connect", "--limit", str(n), "--json-prefix", json_prefix),
                    worker_env(s),
                )
                await self.stack.drive([w], groups=[], total=n, timeout_s=self.scale.timeout_s)
                if w.returncode != 0:
                    raise RuntimeError(f"connect peer exited {w.returncode}: {w.log_tail(20)}")
                out = read_json_line(w.log_path.read_text())
                stored = await self.fetchval(s, "SELECT count(*) FROM frame_events")
                if stored != n:
                    raise RuntimeError(f"connect peer stored {stored} rows of {n}")
                vals.append(out["rate"])
                runs.append({**out, "worker": w.summary(), "machine": self.stack.last_cpu})
        self.put("peer_connect_eps", vals, 0)
        self.notes["peer_connect_eps"] = (
            "Kafka Connect reads a JSON copy of the records (finished rows with their schema): it does no "
            "Avro decoding or validation, which our consumer and the Quix peer do"
        )
        return runs

    # ---- ingest ----------------------------------------------------------------------
    def _workers(self, s: Settings, mode: str, *, until_idle: bool = True) -> tuple[list[Worker], list[str]]:
        extra = ["--until-idle"] if until_idle else []
        ws, groups = [], []
        if mode in ("store", "pipeline"):
            ws.append(
                self.stack.worker(
                    "consume", tracker_argv("consume", *extra, "--metrics-port", "0"), worker_env(s)
                )
            )
            groups.append(s.event_store_group)
        if mode in ("project", "pipeline"):
            ws.append(
                self.stack.worker(
                    "project", tracker_argv("project", *extra, "--metrics-port", "0"), worker_env(s)
                )
            )
            groups.append(s.projections_group)
        return ws, groups

    async def _drain(self, src: Source, mode: str, what: str) -> dict[str, Any]:
        async with self.stack.scratch(what, topic_prefix=src.prefix) as s:
            ws, groups = self._workers(s, mode)
            p = await self.stack.drive(ws, groups=groups, total=src.events, timeout_s=self.scale.timeout_s)
            rate, info = p.rate()
            conn = await asyncpg.connect(s.database_url.get())
            try:
                if mode in ("store", "pipeline"):
                    info["stored_events"] = int(await conn.fetchval("SELECT count(*) FROM frame_events"))
                if mode in ("project", "pipeline"):
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
            return {
                "mode": mode,
                "rate": rate,
                **info,
                "workers": {
                    w.name: {**w.summary(), "cpu_us_per_event": round(1e6 * (w.cpu_s or 0) / src.events, 1)}
                    for w in ws
                },
                "machine": self.stack.last_cpu,
                "progress": _thin(p),
            }

    async def ingest(self) -> None:
        assert self.src is not None
        runs: list[dict[str, Any]] = []
        for rep in range(self.scale.reps):
            for mode in ("store", "project", "pipeline"):
                r = await self._drain(self.src, mode, f"ingest-{mode}")
                r["rep"] = rep
                runs.append(r)
                log(f"ingest {mode} rep {rep + 1}: {r['rate']:,.0f} events/s")
        for mode in ("store", "project", "pipeline"):
            self.put(f"{mode}_eps", [r["rate"] for r in runs if r["mode"] == mode], 0)
        for mode, worker in (("store", "consume"), ("project", "project")):
            cpu = [r["workers"][worker]["cpu_us_per_event"] for r in runs if r["mode"] == mode]
            self.put(f"{mode}_cpu_us_per_event", cpu, 1)
        self.detail("ingest").update(
            records=self.src.events,
            runs=runs,
            method="workers as processes (tracker consume/project --until-idle, production settings), fresh "
            "database and groups per run; rate = records committed between the first and the last offset "
            "commit seen (polled every 0.1 s) over that interval; process start-up and group join excluded",
        )

    # ---- freshness --------------------------------------------------------------------
    async def freshness(self) -> None:
        sc = self.scale
        async with self.stack.scratch("fresh") as s:
            await self.stack.create_topics([*s.event_topics, s.dlq_topic], s.topic_partitions)
            ws, groups = self._workers(s, "pipeline", until_idle=False)
            cpu = cpu_meter()
            for w in ws:
                w.start()
            try:
                deadline = time.monotonic() + 60
                while True:
                    states = [await self.stack.group_state(g) for g in groups]
                    if all(st == "Stable" for st in states):
                        break
                    if any(w.reap() for w in ws) or time.monotonic() > deadline:
                        raise RuntimeError(f"workers not ready: groups {states}; {ws[0].log_tail(10)}")
                    await asyncio.sleep(0.2)
                await asyncio.sleep(1.0)
                result = await self._offer_load(s, ws, cpu)
            finally:
                for w in ws:
                    w.end()
                machine = cpu.stop()
        lat = result.pop("latencies")
        self.figures["fresh_p50_ms"] = round(percentile(lat, 0.50), 1)
        self.figures["fresh_p99_ms"] = round(percentile(lat, 0.99), 1)
        self.figures["fresh_max_ms"] = round(max(lat), 1)
        self.figures["fresh_offered_eps"] = result["offered_eps"]
        self.detail("freshness").update(
            result,
            machine=machine,
            workers={w.name: w.summary() for w in ws},
            method=f"offered {sc.fresh_rate_eps} events/s for {sc.fresh_duration_s:g}s by a separate process "
            "(pre-encoded records, producer configured like FramePublisher's); one frame in "
            f"{sc.fresh_sample_every} probed: from just before its first record is sent to the first poll "
            "(every 20 ms) that finds its row in frame_metadata; the first "
            f"{sc.fresh_warmup_s:g}s are warm-up and not counted; one long run, percentiles over all probes",
        )

    async def _offer_load(self, s: Settings, ws: list[Worker], cpu: Any) -> dict[str, Any]:
        sc = self.scale
        log_path = self.stack.workdir / f"{self.stack.name('loadgen')}.log"
        errf = log_path.open("ab")
        try:
            proc = await asyncio.create_subprocess_exec(
                *python_argv(
                    "-m", "bench.loadgen", "--rate", str(sc.fresh_rate_eps),
                    "--duration", str(sc.fresh_duration_s), "--sample-every", str(sc.fresh_sample_every),
                ),
                env=worker_env(s), cwd=workers.CODE_ROOT, stdout=asyncio.subprocess.PIPE, stderr=errf,
            )  # fmt: skip
        finally:
            errf.close()
        pending: dict[str, float] = {}
        samples: list[tuple[float, float]] = []
        summary: dict[str, Any] = {}
        done = asyncio.Event()

        async def reader() -> None:
            assert proc.stdout is not None
            async for raw in proc.stdout:
                line = raw.decode().strip()
                if line.startswith("P "):
                    _, fid, t = line.split(" ")
                    pending[fid] = float(t)
                elif line.startswith("{"):
                    summary.update(json.loads(line))
            done.set()

        async def poller(conn: asyncpg.Connection) -> None:
            while not (done.is_set() and not pending):
                if pending:
                    ids = list(pending)
                    rows = await conn.fetch(
                        "SELECT frame_id FROM frame_metadata WHERE frame_id = ANY($1::text[])", ids
                    )
                    now = time.time()
                    for r in rows:
                        t = pending.pop(r["frame_id"], None)
                        if t is not None:
                            samples.append((t, (now - t) * 1000.0))
                for w in ws:
                    w.sample()
                    if w.reap():
                        raise RuntimeError(f"{w.name} exited during the load: {w.log_tail(10)}")
                cpu.sample()
                await asyncio.sleep(0.02)

        conn = await asyncpg.connect(s.database_url.get())
        try:
            rtask = asyncio.create_task(reader())
            ptask = asyncio.create_task(poller(conn))
            await proc.wait()
            await rtask
            if proc.returncode != 0:
                ptask.cancel()
                raise RuntimeError(f"load generator exited {proc.returncode}: {log_path.read_text()[-2000:]}")
            # Let the last probes land (bounded), then stop.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ptask, timeout=60.0)
        finally:
            await conn.close()
        if not samples:
            raise RuntimeError("no probe frame became visible")
        t_first = min(t for t, _ in samples)
        kept = [ms for t, ms in samples if t >= t_first + sc.fresh_warmup_s]
        return {
            "latencies": kept,
            "probes": len(kept),
            "probes_lost": len(pending),
            "offered_eps": summary.get("offered_eps"),
            "loadgen": summary,
            "series": [(round(t - t_first, 2), round(ms, 1)) for t, ms in samples][
                :: max(1, len(samples) // 400)
            ],
        }

    # ---- replay -----------------------------------------------------------------------
    async def replay(self) -> None:
        assert self.src is not None
        d = self.detail("replay")
        for source in ("topics", "store"):
            vals, runs = [], []
            async with self.stack.scratch(f"replay-{source}", topic_prefix=self.src.prefix) as s:
                if source == "store":
                    w = self.stack.worker(
                        "load-store", python_argv("-m", "bench.probes", "load-store"), worker_env(s)
                    )
                    await self.stack.drive([w], groups=[], total=0, timeout_s=self.scale.timeout_s)
                    d["store_preload"] = read_json_line(w.log_path.read_text())
                for _ in range(self.scale.replay_reps):
                    w = self.stack.worker(
                        f"replay-{source}",
                        tracker_argv("replay", "--source", source, "--json"),
                        worker_env(s),
                    )
                    await self.stack.drive([w], groups=[], total=0, timeout_s=self.scale.timeout_s)
                    conn = await asyncpg.connect(s.database_url.get())
                    try:
                        row = await conn.fetchrow(
                            "SELECT generation, status, events_applied, "
                            "extract(epoch FROM updated_at - started_at)::float8 AS secs "
                            "FROM projection_replays ORDER BY id DESC LIMIT 1"
                        )
                        frames = int(await conn.fetchval("SELECT count(*) FROM frame_metadata"))
                    finally:
                        await conn.close()
                    if row is None or row["status"] != "swapped" or frames != self.src.frames:
                        raise RuntimeError(f"replay from {source}: {dict(row or {})}, {frames} frames")
                    rate = row["events_applied"] / row["secs"]
                    vals.append(rate)
                    runs.append(
                        {
                            "rate": rate,
                            "events_applied": row["events_applied"],
                            "seconds": row["secs"],
                            "generation": row["generation"],
                            "worker": w.summary(),
                            "machine": self.stack.last_cpu,
                        }
                    )
                    log(f"replay from {source}: {rate:,.0f} events/s")
            self.put(f"replay_{source}_eps", vals, 0)
            d[f"{source}_runs"] = runs
        d["records"] = self.src.events
        d["method"] = (
            "tracker replay (ProjectionRebuild) as a process into a database of its own, no live worker; "
            "rate = events_applied / (updated_at - started_at) of its projection_replays row; the store "
            "source is pre-loaded by COPY of the same records' rows (not timed)"
        )

    # ---- queries ----------------------------------------------------------------------
    async def queries(self) -> None:
        from tracker.queries import FrameTrackingQueries

        sc = self.scale
        d = self.detail("queries")
        async with self.stack.scratch("queries") as s:
            info = await querydata.build(s, sc.query_events, log=log)
            fids = info.pop("frame_ids")
            d["data"] = info
            self.figures["query_events"] = info["stored_events"]
            rng = random.Random(3)
            q = await FrameTrackingQueries.connect(s)
            try:

                def journey() -> Any:
                    return q.get_frame_journey(
                        querydata.replica_frame_id(rng.choice(fids), rng.randrange(querydata.HOURS))
                    )

                async def stats() -> None:
                    await q.get_camera_stats(24.0)
                    await q.get_stage_performance(24.0)

                kinds = {
                    "journey": (journey, sc.query_calls),
                    "slow": (lambda: q.find_slow_frames(1000.0, 1.0, None, 20), sc.query_calls),
                    "failures": (lambda: q.get_failure_analysis(24.0), max(10, sc.query_calls // 5)),
                    "stats": (stats, sc.query_calls),
                }
                per: dict[str, dict[str, list[float]]] = {k: {"p50": [], "p99": []} for k in kinds}
                for fn, _ in kinds.values():  # warm-up
                    for _ in range(3):
                        await fn()
                for _ in range(sc.reps):
                    for k, (fn, calls) in kinds.items():
                        times = []
                        for _ in range(calls):
                            t0 = time.perf_counter()
                            await fn()
                            times.append((time.perf_counter() - t0) * 1000.0)
                        per[k]["p50"].append(percentile(times, 0.5))
                        per[k]["p99"].append(percentile(times, 0.99))
                d["calls_per_rep"] = {k: c for k, (_, c) in kinds.items()}
                d["plans"] = await self._plans(s)
            finally:
                await q.close()
        self.put("journey_p50_ms", per["journey"]["p50"], 2)
        self.put("journey_p99_ms", per["journey"]["p99"], 2)
        self.put("slow_p99_ms", per["slow"]["p99"], 2)
        self.put("failures_p99_ms", per["failures"]["p99"], 2)
        self.put("stats_p99_ms", per["stats"]["p99"], 2)
        d["p50_ms"] = {k: summarize(v["p50"])["median"] for k, v in per.items()}
        d["method"] = (
            "FrameTrackingQueries (the CLI/API read path, read-only pool) in the harness process, timed "
            "client-side per call; journey of random frames across all 24 hours; slow = "
            "find_slow_frames(1000 ms, 1 h, limit 20); failures = get_failure_analysis(24 h); stats = "
            "get_camera_stats(24 h) + get_stage_performance(24 h); p50/p99 per repetition, median of "
            "repetitions"
        )

    async def _plans(self, s: Settings) -> dict[str, Any]:
        """EXPLAIN ANALYZE of the windowed queries: where their time goes."""
        out: dict[str, Any] = {}
        try:
            from tracker import queries as tq

            now = datetime.now(UTC)
            conn = await asyncpg.connect(s.database_url.get())
            try:
                for name, sql, args in (
                    ("slow", tq._SLOW, (now - timedelta(hours=1), 1000.0, None, 20)),
                    ("failures", tq._FAILURES, (now - timedelta(hours=24),)),
                    ("stage_failures", tq._STAGE_FAILURES, (now - timedelta(hours=24),)),
                ):
                    rows = await conn.fetch(f"EXPLAIN (ANALYZE, BUFFERS) {sql}", *args)
                    out[name] = [r[0] for r in rows]
            finally:
                await conn.close()
        except Exception as e:  # informational only
            out["error"] = f"{type(e).__name__}: {e}"
        return out

    # ---- memory -------------------------------------------------------------------------
    async def memory(self) -> None:
        assert self.src is not None and self.srcq is not None
        d = self.detail("memory")
        per: dict[str, dict[str, float]] = {}
        runs = []
        # The large backlog is the ingest scenario's: its pipeline runs drain the
        # same 1M records with the same workers and already sample their RSS.
        reused = [r for r in self.details.get("ingest", {}).get("runs", []) if r["mode"] == "pipeline"]
        for label, src in (("small", self.srcq), ("large", self.src)):
            if label == "large" and reused:
                batch = [{**r, "from": "ingest"} for r in reused]
            else:
                batch = [
                    await self._drain(src, "pipeline", f"memory-{label}")
                    for _ in range(self.scale.memory_reps)
                ]
            for r in batch:
                r = {**r, "backlog": label, "backlog_events": src.events}
                runs.append(r)
                for name, w in r["workers"].items():
                    per.setdefault(label, {})[name] = max(per.get(label, {}).get(name, 0.0), w["rss_mb_max"])
            log(
                f"memory {label} backlog ({src.events:,}): "
                + ", ".join(f"{k} {v:.0f} MB" for k, v in per[label].items())
            )
        self.figures["worker_rss_mb_max"] = round(max(max(v.values()) for v in per.values()), 1)
        growth = max(per["large"][k] - per["small"].get(k, 0.0) for k in per["large"])
        self.figures["worker_rss_growth_mb"] = round(growth, 1)
        d.update(
            rss_mb_max=per,
            backlogs={"small": self.srcq.events, "large": self.src.events},
            runs=[{k: v for k, v in r.items() if k != "progress"} for r in runs],
            method="both workers draining a backlog (fresh database and groups), RSS sampled from /proc "
            "every 0.1 s, at two backlog sizes (flat = no growth with 4x the "
            "backlog); the large backlog's drains are the ingest scenario's pipeline runs when it ran in "
            "the same invocation",
        )

    # ---- sdk ------------------------------------------------------------------------------
    async def sdk(self) -> None:
        """The producer-side API services embed: frames through FrameRepository.save,
        and what the instrumentation costs per frame (bench/sdk.py)."""
        from bench import sdk

        await sdk.scenario(self)

    # ---- profile (not part of the default run) ----------------------------------------
    async def profile(self) -> None:
        from bench import profile as prof

        assert self.src is not None
        out_dir = self.out_dir
        out_dir.mkdir(parents=True, exist_ok=True)
        d = self.detail("profile")
        for name in ("consume", "project", "replay"):
            async with self.stack.scratch(f"profile-{name}", topic_prefix=self.src.prefix) as s:
                raw = out_dir / f"profile-{name}.collapsed"
                if name == "replay":
                    argv = tracker_argv("replay", "--source", "topics", "--json")
                    groups: list[str] = []
                else:
                    argv = tracker_argv(name, "--until-idle", "--metrics-port", "0")
                    groups = [s.event_store_group if name == "consume" else s.projections_group]
                w = self.stack.worker(f"profile-{name}", prof.wrap(argv, raw), worker_env(s))
                p = await self.stack.drive(
                    [w], groups=groups, total=self.src.events if groups else 0, timeout_s=self.scale.timeout_s
                )
                text, data = prof.summarize(raw)
                (out_dir / f"profile-{name}.txt").write_text(text + "\n")
                d[name] = {"rate_under_profiler": p.rate()[0] if groups else None, **data}
                log(f"profile of {name} ({self.src.events:,} events): {out_dir / f'profile-{name}.txt'}")
                print(f"\n== {name}\n" + "\n".join(text.splitlines()[:25]), file=sys.stderr)

    # ---- derived ------------------------------------------------------------------------
    def derive(self) -> None:
        for k in DERIVED:
            self.notes.pop(k, None)
        self.notes.update(derive(self.figures, self.details))


DERIVED = ("ratio_vs_naive", "ratio_vs_limit", "store_vs_quix", "store_vs_connect")


def derive(f: dict[str, Any], details: dict[str, Any]) -> dict[str, str]:
    """The ratios, from figures that may come from different scenarios.

    Returns a note for each ratio left null, naming the figure it lacks.
    """
    pipe = f.get("pipeline_eps")
    for k in DERIVED:
        f[k] = None
    if pipe and f.get("naive_eps"):
        f["ratio_vs_naive"] = round(pipe / f["naive_eps"], 2)
    lims = ("limit_consume_eps", "limit_decode_eps", "limit_copy_rows_s")
    if pipe and all(f.get(k) for k in lims):
        binding = min(lims, key=lambda k: f[k])
        f["ratio_vs_limit"] = round(pipe / f[binding], 3)
        details.setdefault("ingest", {})["binding_limit"] = binding
    if f.get("store_eps") and f.get("peer_quix_eps"):
        f["store_vs_quix"] = round(f["store_eps"] / f["peer_quix_eps"], 2)
    if f.get("store_eps") and f.get("peer_connect_eps"):
        f["store_vs_connect"] = round(f["store_eps"] / f["peer_connect_eps"], 2)
    inputs = {
        "ratio_vs_naive": ("pipeline_eps", "naive_eps"),
        "ratio_vs_limit": ("pipeline_eps", *lims),
        "store_vs_quix": ("store_eps", "peer_quix_eps"),
        "store_vs_connect": ("store_eps", "peer_connect_eps"),
    }
    return {
        k: "not computed: " + ", ".join(i for i in inputs[k] if not f.get(i)) + " not measured"
        for k in DERIVED
        if f[k] is None
    }


def _host_facts() -> dict[str, str]:
    """Kafka version (from the local stack), git commit of the workers' code, CPU model."""
    out = {"kafka": "unknown", "commit": "unknown", "cpu_model": ""}
    with contextlib.suppress(Exception):
        status = subprocess.run(
            [sys.executable, str(ROOT / "compose/local/stack.py"), "status"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout
        m = re.search(r"Kafka ([0-9][0-9.]*)", status)
        if m:
            out["kafka"] = m.group(1)
    with contextlib.suppress(Exception):
        git = ["git", "-C", str(workers.CODE_ROOT)]
        commit = subprocess.run(
            [*git, "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            [*git, "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True
        ).stdout.strip()
        out["commit"] = commit + ("-dirty" if dirty else "")
    # A run from an exported tree (git archive, no .git) says which commit it is.
    out["commit"] = os.environ.get("BENCH_GIT_COMMIT") or out["commit"]
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        m = re.search(r"model name\s*:\s*(.+)", f.read())
        out["cpu_model"] = m.group(1).strip() if m else ""
    return out


def _thin(p: Progress, n: int = 60) -> list[tuple[float, int]]:
    step = max(1, len(p.series) // n)
    return [(round(t, 2), c) for t, c in p.series[::step]]


def check_target(value: Any, target: str) -> bool | None:
    if not target or value is None:
        return None
    op, num = target.split()
    return value >= float(num) if op == ">=" else value <= float(num)
