"""scale: 1, 2 and 4 workers per group over topics of ``scale_partitions``
partitions (12 at every scale), draining a pre-loaded source of their own:
``tracker consume`` alone (the event store) and ``tracker consume
--inline-projection`` (stored and projected by one group). For each count: the
rate and the CPU per event of the workers and of PostgreSQL, so that a reader
can see whether a worker more costs more per event. On a machine with fewer
cores than workers the rates flatten: the figures of the CPU per event are the
ones that say how the pipeline scales out (``docs/scaling.md``)."""

from __future__ import annotations

from statistics import median
from typing import Any

from bench.infra import git_commit, log
from bench.scenarios.context import Bench
from bench.scenarios.registry import scenario

COUNTS = (1, 2, 4)
MODES = ("store", "pipeline")


@scenario("scale")
async def scale(b: Bench) -> None:
    sc = b.scale
    src = await b.preload("scale", sc.scale_events, sc.scale_partitions)
    runs: list[dict[str, Any]] = []
    try:
        for rep in range(sc.reps):  # interleaved: drift over the run touches every count alike
            for mode in MODES:
                for n in COUNTS:
                    r = await b.drain(src, mode, f"scale-{mode}-{n}", n=n)
                    # Between the first commit and the last, like the rate: the start-up of
                    # four processes would otherwise weigh on the four-worker figure.
                    workers_us = r["steady_workers_cpu_us_per_event"]
                    if workers_us is None:  # too short to see a steady state (tiny scale)
                        workers_us = sum(w["cpu_us_per_event"] for w in r["workers"].values())
                    pg_us = 1e6 * r["machine"]["postgres_cpu_s"] / src.events
                    broker_us = 1e6 * r["machine"]["kafka_cpu_s"] / src.events
                    runs.append(
                        {
                            "rep": rep,
                            "mode": mode,
                            "workers": n,
                            "rate": r["rate"],
                            "workers_cpu_us_per_event": round(workers_us, 1),
                            "postgres_cpu_us_per_event": round(pg_us, 1),
                            "broker_cpu_us_per_event": round(broker_us, 1),
                            "rss_mb_max": max(w["rss_mb_max"] for w in r["workers"].values()),
                            "machine": r["machine"],
                        }
                    )
                    log(
                        f"scale {mode} x{n} rep {rep + 1}: {r['rate']:,.0f} events/s, workers "
                        f"{workers_us:.1f} + PostgreSQL {pg_us:.1f} us/event"
                    )
    finally:
        await b.stack.delete_prefix(src.prefix)

    def of(mode: str, n: int, field: str) -> list[float]:
        return [r[field] for r in runs if r["mode"] == mode and r["workers"] == n]

    table = {}
    for n in COUNTS:
        b.put(f"scale_eps_{n}", of("pipeline", n, "rate"), 0)
        b.put(f"scale_store_eps_{n}", of("store", n, "rate"), 0)
        b.put(f"scale_cpu_us_{n}", of("pipeline", n, "workers_cpu_us_per_event"), 1)
        b.put(f"scale_pg_cpu_us_{n}", of("pipeline", n, "postgres_cpu_us_per_event"), 1)
        table[n] = {
            mode: {
                k: round(median(of(mode, n, k)), 1)
                for k in (
                    "rate",
                    "workers_cpu_us_per_event",
                    "postgres_cpu_us_per_event",
                    "broker_cpu_us_per_event",
                )
            }
            for mode in MODES
        }
    b.figures["scale_partitions"] = sc.scale_partitions
    b.detail("scale").update(
        git_commit=git_commit(),  # an --update run is at a commit of its own
        events=src.events,
        partitions=sc.scale_partitions,
        medians=table,
        runs=runs,
        method=f"a source of {src.events:,} events in topics of {sc.scale_partitions} partitions, drained "
        f"into a fresh database by 1, 2 and 4 workers in one group (tracker consume; tracker consume "
        f"--inline-projection), {sc.reps} repetitions interleaved; rate as in ingest; the workers' CPU "
        "per event: their CPU (from /proc, summed) between the first offset commit and the last, over "
        "the records committed in between (the rate's interval: start-up and group join left out); "
        "PostgreSQL's and the broker's: over the whole run, over the records",
    )
