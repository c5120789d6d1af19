"""queries: the read path (``FrameTrackingQueries``, as the CLI and the API use
it) over ``query_events`` stored events spread over the last 24 hours
(``bench.querydata``), timed client-side per call."""

from __future__ import annotations

import random
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from bench import querydata
from bench.infra import log, percentile, summarize
from bench.scenarios.context import Bench
from bench.scenarios.registry import scenario
from tracker.config import Settings


@scenario("queries")
async def queries(b: Bench) -> None:
    from tracker.queries import FrameTrackingQueries

    sc = b.scale
    d = b.detail("queries")
    async with b.stack.scratch("queries") as s:
        info = await querydata.build(s, sc.query_events, log=log)
        fids = info.pop("frame_ids")
        d["data"] = info
        b.figures["query_events"] = info["stored_events"]
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
            d["plans"] = await _plans(s)
        finally:
            await q.close()
    b.put("journey_p50_ms", per["journey"]["p50"], 2)
    b.put("journey_p99_ms", per["journey"]["p99"], 2)
    b.put("slow_p99_ms", per["slow"]["p99"], 2)
    b.put("failures_p99_ms", per["failures"]["p99"], 2)
    b.put("stats_p99_ms", per["stats"]["p99"], 2)
    d["p50_ms"] = {k: summarize(v["p50"])["median"] for k, v in per.items()}
    d["method"] = (
        "FrameTrackingQueries (the CLI/API read path, read-only pool) in the harness process, timed "
        "client-side per call; journey of random frames across all 24 hours; slow = "
        "find_slow_frames(1000 ms, 1 h, limit 20); failures = get_failure_analysis(24 h); stats = "
        "get_camera_stats(24 h) + get_stage_performance(24 h); p50/p99 per repetition, median of "
        "repetitions"
    )


async def _plans(s: Settings) -> dict[str, Any]:
    """EXPLAIN ANALYZE of the windowed queries: where their time goes."""
    out: dict[str, Any] = {}
    try:
        from tracker.queries import statements as tq

        now = datetime.now(UTC)
        conn = await asyncpg.connect(s.database.url.get())
        try:
            for name, sql, args in (
                ("slow", tq.SLOW, (now - timedelta(hours=1), 1000.0, None, 20)),
                ("failures", tq.FAILURES, (now - timedelta(hours=24),)),
                ("stage_failures", tq.STAGE_FAILURES, (now - timedelta(hours=24),)),
            ):
                rows = await conn.fetch(f"EXPLAIN (ANALYZE, BUFFERS) {sql}", *args)
                out[name] = [r[0] for r in rows]
        finally:
            await conn.close()
    except Exception as e:  # informational only
        out["error"] = f"{type(e).__name__}: {e}"
    return out
