"""ingest: ``tracker consume`` alone, ``tracker project`` alone and both
together drain the pre-loaded records, as processes, into a fresh database per
run (the ratios against the other scenarios' figures are derived at the end)."""

from __future__ import annotations

from typing import Any

from bench.infra import log
from bench.scenarios.context import Bench
from bench.scenarios.registry import scenario


@scenario("ingest", needs_source=True)
async def ingest(b: Bench) -> None:
    assert b.src is not None
    runs: list[dict[str, Any]] = []
    for rep in range(b.scale.reps):
        for mode in ("store", "project", "pipeline"):
            r = await b.drain(b.src, mode, f"ingest-{mode}")
            r["rep"] = rep
            runs.append(r)
            log(f"ingest {mode} rep {rep + 1}: {r['rate']:,.0f} events/s")
    for mode in ("store", "project", "pipeline"):
        b.put(f"{mode}_eps", [r["rate"] for r in runs if r["mode"] == mode], 0)
    for mode, worker in (("store", "consume"), ("project", "project")):
        cpu = [r["workers"][worker]["cpu_us_per_event"] for r in runs if r["mode"] == mode]
        b.put(f"{mode}_cpu_us_per_event", cpu, 1)
    b.detail("ingest").update(
        records=b.src.events,
        runs=runs,
        method="workers as processes (tracker consume/project --until-idle, production settings), fresh "
        "database and groups per run; rate = records committed between the first and the last offset "
        "commit seen (polled every 0.1 s) over that interval; process start-up and group join excluded",
    )
