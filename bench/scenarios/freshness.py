"""freshness: the pipeline (``tracker consume --inline-projection``) running
live while a separate process offers a steady load (``bench.loadgen``); the
latency from a probed frame's first record sent to its row visible in
``frame_metadata``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

import asyncpg

from bench import workers
from bench.infra import cpu_meter, percentile
from bench.scenarios.context import Bench
from bench.scenarios.registry import scenario
from bench.workers import Worker, python_argv, worker_env
from tracker.config import Settings


@scenario("freshness")
async def freshness(b: Bench) -> None:
    sc = b.scale
    async with b.stack.scratch("fresh") as s:
        await b.stack.create_topics([*s.topics.events, s.topics.dlq], s.topics.partitions)
        ws, groups = b.tracker_workers(s, "pipeline", until_idle=False)
        cpu = cpu_meter()
        for w in ws:
            w.start()
        try:
            deadline = time.monotonic() + 60
            while True:
                states = [await b.stack.group_state(g) for g in groups]
                if all(st == "Stable" for st in states):
                    break
                if any(w.reap() for w in ws) or time.monotonic() > deadline:
                    raise RuntimeError(f"workers not ready: groups {states}; {ws[0].log_tail(10)}")
                await asyncio.sleep(0.2)
            await asyncio.sleep(1.0)
            result = await _offer_load(b, s, ws, cpu)
        finally:
            for w in ws:
                w.end()
            machine = cpu.stop()
    lat = result.pop("latencies")
    b.figures["fresh_p50_ms"] = round(percentile(lat, 0.50), 1)
    b.figures["fresh_p99_ms"] = round(percentile(lat, 0.99), 1)
    b.figures["fresh_max_ms"] = round(max(lat), 1)
    b.figures["fresh_offered_eps"] = result["offered_eps"]
    b.detail("freshness").update(
        result,
        machine=machine,
        workers={w.name: w.summary() for w in ws},
        method=f"offered {sc.fresh_rate_eps} events/s for {sc.fresh_duration_s:g}s by a separate process "
        "(pre-encoded records, producer configured like FramePublisher's); one frame in "
        f"{sc.fresh_sample_every} probed: from just before its first record is sent to the first poll "
        "(every 20 ms) that finds its row in frame_metadata; the first "
        f"{sc.fresh_warmup_s:g}s are warm-up and not counted; one long run, percentiles over all probes",
    )


async def _offer_load(b: Bench, s: Settings, ws: list[Worker], cpu: Any) -> dict[str, Any]:
    sc = b.scale
    log_path = b.stack.workdir / f"{b.stack.name('loadgen')}.log"
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

    conn = await asyncpg.connect(s.database.url.get())
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
