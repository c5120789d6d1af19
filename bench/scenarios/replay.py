"""replay: ``tracker replay`` rebuilds the projections into a database of its
own, from the pre-loaded topics and from the event store (pre-loaded by COPY of
the same records' rows, not timed)."""

from __future__ import annotations

import asyncpg

from bench.infra import log, read_json_line
from bench.scenarios.context import Bench
from bench.scenarios.registry import scenario
from bench.workers import python_argv, tracker_argv, worker_env


@scenario("replay", needs_source=True)
async def replay(b: Bench) -> None:
    assert b.src is not None
    d = b.detail("replay")
    for source in ("topics", "store"):
        vals, runs = [], []
        async with b.stack.scratch(f"replay-{source}", topic_prefix=b.src.prefix) as s:
            if source == "store":
                w = b.stack.worker(
                    "load-store", python_argv("-m", "bench.probes", "load-store"), worker_env(s)
                )
                await b.stack.drive([w], groups=[], total=0, timeout_s=b.scale.timeout_s)
                d["store_preload"] = read_json_line(w.output())
            for _ in range(b.scale.replay_reps):
                w = b.stack.worker(
                    f"replay-{source}",
                    tracker_argv("replay", "--source", source, "--json"),
                    worker_env(s),
                )
                await b.stack.drive([w], groups=[], total=0, timeout_s=b.scale.timeout_s)
                conn = await asyncpg.connect(s.database.url.get())
                try:
                    row = await conn.fetchrow(
                        "SELECT generation, status, events_applied, "
                        "extract(epoch FROM updated_at - started_at)::float8 AS secs "
                        "FROM projection_replays ORDER BY id DESC LIMIT 1"
                    )
                    frames = int(await conn.fetchval("SELECT count(*) FROM frame_metadata"))
                finally:
                    await conn.close()
                if row is None or row["status"] != "swapped" or frames != b.src.frames:
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
                        "machine": b.stack.last_cpu,
                    }
                )
                log(f"replay from {source}: {rate:,.0f} events/s")
        b.put(f"replay_{source}_eps", vals, 0)
        d[f"{source}_runs"] = runs
    d["records"] = b.src.events
    d["method"] = (
        "tracker replay (ProjectionRebuild) as a process into a database of its own, no live worker; "
        "rate = events_applied / (updated_at - started_at) of its projection_replays row; the store "
        "source is pre-loaded by COPY of the same records' rows (not timed)"
    )
