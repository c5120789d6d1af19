"""memory: the workers' RSS while they drain a small and a large backlog (the
large one's drains are the ingest scenario's, when it ran in the same run)."""

from __future__ import annotations

from bench.infra import log
from bench.scenarios.context import Bench
from bench.scenarios.registry import scenario


@scenario("memory", needs_source=True)
async def memory(b: Bench) -> None:
    assert b.src is not None and b.srcq is not None
    d = b.detail("memory")
    per: dict[str, dict[str, float]] = {}
    runs = []
    # The large backlog is the ingest scenario's: its two_groups and pipeline runs
    # drain the same 1M records with the same workers and already sample their RSS.
    modes = ("two_groups", "pipeline")
    reused = [r for r in b.details.get("ingest", {}).get("runs", []) if r["mode"] in modes]
    for label, src in (("small", b.srcq), ("large", b.src)):
        if label == "large" and reused:
            batch = [{**r, "from": "ingest"} for r in reused]
        else:
            batch = [
                await b.drain(src, mode, f"memory-{label}-{mode}")
                for mode in modes
                for _ in range(b.scale.memory_reps)
            ]
        for r in batch:
            r = {**r, "backlog": label, "backlog_events": src.events}
            runs.append(r)
            for name, w in r["workers"].items():
                name = f"{name} ({r['mode']})"
                per.setdefault(label, {})[name] = max(per.get(label, {}).get(name, 0.0), w["rss_mb_max"])
        log(
            f"memory {label} backlog ({src.events:,}): "
            + ", ".join(f"{k} {v:.0f} MB" for k, v in per[label].items())
        )
    b.figures["worker_rss_mb_max"] = round(max(max(v.values()) for v in per.values()), 1)
    growth = max(per["large"][k] - per["small"].get(k, 0.0) for k in per["large"])
    b.figures["worker_rss_growth_mb"] = round(growth, 1)
    d.update(
        rss_mb_max=per,
        backlogs={"small": b.srcq.events, "large": b.src.events},
        runs=[{k: v for k, v in r.items() if k != "progress"} for r in runs],
        method="both workers draining a backlog (fresh database and groups), RSS sampled from /proc "
        "every 0.1 s, at two backlog sizes (flat = no growth with 4x the "
        "backlog); the large backlog's drains are the ingest scenario's pipeline runs when it ran in "
        "the same invocation",
    )
