"""ingest: the pre-loaded records drained, as processes, into a fresh database
per run by ``tracker consume`` alone (store), ``tracker project`` alone
(project), both groups together (two_groups), ``tracker consume
--inline-projection`` (pipeline: stored and projected by one group), and two
of those in the group (pipeline_2w: a worker per core). The CPU of
each component (worker processes, PostgreSQL, the broker) per event is kept for
the two ways of running the whole pipeline; the ratios against the other
scenarios' figures are derived at the end."""

from __future__ import annotations

from statistics import median
from typing import Any

from bench.infra import log
from bench.scenarios.context import MODES, Bench
from bench.scenarios.registry import scenario


@scenario("ingest", needs_source=True)
async def ingest(b: Bench) -> None:
    assert b.src is not None
    runs: list[dict[str, Any]] = []
    modes = [m for m in b.scale.ingest_modes.split(",") if m]
    unknown = set(modes) - set(MODES)
    if unknown:
        raise ValueError(f"unknown ingest modes {sorted(unknown)}; known: {', '.join(MODES)}")
    for rep in range(b.scale.reps):
        for mode in modes:
            r = await b.drain(b.src, mode, f"ingest-{mode}")
            r["rep"] = rep
            runs.append(r)
            log(f"ingest {mode} rep {rep + 1}: {r['rate']:,.0f} events/s")
    for mode in modes:
        b.put(f"{mode}_eps", [r["rate"] for r in runs if r["mode"] == mode], 0)
    for mode, worker in (("store", "consume"), ("project", "project")):
        if mode not in modes:
            continue
        cpu = [r["workers"][worker]["cpu_us_per_event"] for r in runs if r["mode"] == mode]
        b.put(f"{mode}_cpu_us_per_event", cpu, 1)
    components = {}
    for mode in ("two_groups", "pipeline", "pipeline_2w"):
        mine = [r for r in runs if r["mode"] == mode]
        if not mine:
            continue
        parts: dict[str, list[float]] = {}
        for r in mine:
            for w, info in r["workers"].items():
                # consume-1 and consume-2 of pipeline_2w add up to the consume part
                key = f"{mode}_cpu_us_{w.split('-')[0]}"
                parts.setdefault(key, [0.0] * len(mine))[mine.index(r)] += info["cpu_us_per_event"]
        parts[f"{mode}_cpu_us_postgres"] = [1e6 * r["machine"]["postgres_cpu_s"] / b.src.events for r in mine]
        parts[f"{mode}_cpu_us_broker"] = [1e6 * r["machine"]["kafka_cpu_s"] / b.src.events for r in mine]
        for k, vals in parts.items():
            b.put(k, vals, 1)
        components[mode] = {k: round(median(v), 1) for k, v in parts.items()}
        log(f"ingest {mode} CPU per event: " + ", ".join(f"{k} {v} us" for k, v in components[mode].items()))
    b.detail("ingest").update(
        records=b.src.events,
        runs=runs,
        cpu_us_per_event=components,
        method="workers as processes (tracker consume/project --until-idle, production settings), fresh "
        "database and groups per run; rate = records committed between the first and the last offset "
        "commit seen (polled every 0.1 s) over that interval; process start-up and group join excluded; "
        "CPU per event = CPU seconds of each process (PostgreSQL: all its processes; broker: the Kafka "
        "JVM) over the run / records",
    )
