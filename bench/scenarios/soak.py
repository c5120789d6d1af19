"""soak: the pipeline running live for ``soak_minutes`` at a steady
``soak_rate_eps`` that it can hold, sampled every ``soak_sample_s``: the
consumer group's lag, the freshness probes of that interval (p99), each
worker's RSS and CPU. Afterwards the backlog must drain, every event sent must
be stored exactly once and every frame projected, and the workers' logs must
hold no error. ``bench/results/soak.png`` plots the samples."""

from __future__ import annotations

import asyncio
import json
import time
from statistics import median
from typing import Any

from bench.infra import git_commit, log, percentile
from bench.scenarios.context import Bench
from bench.scenarios.live import Live, LiveLoad, live_workers
from bench.scenarios.registry import scenario
from bench.workers import Worker


@scenario("soak")
async def soak(b: Bench) -> None:
    sc = b.scale
    samples: list[dict[str, Any]] = []
    async with b.stack.scratch("soak") as s, live_workers(b, s, sc.soak_mode) as live:
        load = LiveLoad(live, sc.soak_rate_eps, sc.soak_minutes * 60.0, sc.fresh_sample_every, stream=True)
        sampler = _Sampler(b, live, load, samples)
        await load.run(b, every_s=sc.soak_sample_s, on_tick=sampler.tick)
        drained_s = await sampler.drain(timeout_s=300.0)
        stored = int(await b.fetchval(s, "SELECT count(*) FROM frame_events"))
        frames = int(await b.fetchval(s, "SELECT count(*) FROM frame_metadata"))
    sent, sent_frames = int(load.summary["events"]), int(load.summary["frames"])
    errors = [line for w in live.workers for line in _error_lines(w)]
    warm = [x for x in samples if x["t"] >= sc.soak_warmup_s] or samples
    lat = load.after_warmup(sc.soak_warmup_s)
    rss_growth = {w.name: _growth([x["rss_mb"][w.name] for x in warm]) for w in live.workers}
    cpu_s = sum(w.cpu_s or 0.0 for w in live.workers)
    f = b.figures
    f["soak_minutes"] = round(float(load.summary["seconds"]) / 60.0, 1)
    f["soak_eps"] = load.summary.get("offered_eps")
    f["soak_lag_max"] = max(x["lag"] for x in warm)
    f["soak_lag_p99"] = round(percentile([float(x["lag"]) for x in warm], 0.99))
    f["soak_fresh_p99_ms"] = round(percentile(lat, 0.99), 1)
    minutes = [x["fresh_p99_ms"] for x in warm if x["fresh_p99_ms"] is not None]
    f["soak_fresh_p99_worst_ms"] = round(max(minutes), 1) if minutes else None
    f["soak_rss_mb_max"] = round(max(max(x["rss_mb"].values()) for x in samples), 1)
    f["soak_rss_growth_mb"] = round(max(rss_growth.values()), 1)
    f["soak_lost_events"] = sent - stored
    f["soak_log_errors"] = len(errors)
    f["soak_cpu_us_per_event"] = round(1e6 * cpu_s / max(1, sent), 1)
    log(
        f"soak: {f['soak_minutes']} min at {f['soak_eps']} events/s; lag max {f['soak_lag_max']}, "
        f"fresh p99 {f['soak_fresh_p99_ms']} ms, RSS growth {rss_growth}, {len(errors)} error lines, "
        f"{sent - stored} lost, drained in {drained_s:.1f}s"
    )
    if stored != sent or frames != sent_frames:
        raise RuntimeError(f"soak: sent {sent} events / {sent_frames} frames, stored {stored} / {frames}")
    b.detail("soak").update(
        git_commit=git_commit(),  # an --update run is at a commit of its own
        mode=sc.soak_mode,
        sent_events=sent,
        stored_events=stored,
        frames=frames,
        drained_s=round(drained_s, 1),
        probes=len(lat),
        probes_lost=len(load.pending),
        rss_growth_mb=rss_growth,
        error_lines=errors[:20],
        samples=samples,
        loadgen=load.summary,
        machine=live.machine,
        workers={w.name: w.summary() for w in live.workers},
        method=f"{sc.soak_mode} workers live on a fresh database; {sc.soak_rate_eps} events/s offered for "
        f"{sc.soak_minutes:g} min by a separate process (records encoded as they are sent); every "
        f"{sc.soak_sample_s:g}s: lag = the topics' end offsets minus the group's committed offsets, "
        f"the p99 of the freshness probes (one frame in {sc.fresh_sample_every}) sent in that interval, "
        "each worker's RSS and CPU; figures leave out the first "
        f"{sc.soak_warmup_s:g}s; RSS growth = median of the last tenth of the samples minus the median of "
        "the first tenth (after warm-up), per worker, the largest reported; error lines = log lines at "
        "level error/critical and tracebacks in the workers' output",
    )


class _Sampler:
    def __init__(self, b: Bench, live: Live, load: LiveLoad, out: list[dict[str, Any]]) -> None:
        self.b, self.live, self.load, self.out = b, live, load, out
        self.seen = 0  # probes already counted
        self.last = time.monotonic()  # the previous tick

    async def lag(self) -> int:
        end = await self.b.stack.end_offsets_total(self.live.settings.topics.events)
        return max(0, end - min([await self.b.stack.committed(g) for g in self.live.groups]))

    async def tick(self, t: float) -> None:
        probes = [ms for _, ms in self.load.samples[self.seen :]]
        self.seen = len(self.load.samples)
        # The workers' CPU comes from their own samples (LiveLoad samples them every poll).
        now = time.monotonic()
        cores = {
            w.name: round((w.cpu_at(now) - w.cpu_at(self.last)) / max(1e-6, now - self.last), 3)
            for w in self.live.workers
        }
        self.last = now
        self.out.append(
            {
                "t": round(t, 1),
                "lag": await self.lag(),
                "fresh_p99_ms": round(percentile(probes, 0.99), 1) if probes else None,
                "probes": len(probes),
                "rss_mb": {w.name: round(w.rss_mb(), 1) for w in self.live.workers},
                "cpu_cores": cores,
            }
        )

    async def drain(self, timeout_s: float) -> float:
        """Seconds until the group has committed everything sent."""
        t0 = time.monotonic()
        while await self.lag() > 0:
            if time.monotonic() - t0 > timeout_s:
                raise RuntimeError(f"soak: backlog not drained {timeout_s:.0f}s after the load ended")
            for w in self.live.workers:
                if w.reap():
                    raise RuntimeError(f"{w.name} exited after the load: {w.log_tail(10)}")
            await asyncio.sleep(0.5)
        return time.monotonic() - t0


def _growth(series: list[float]) -> float:
    """Median of the last tenth minus median of the first tenth."""
    if len(series) < 2:
        return 0.0
    k = max(1, len(series) // 10)
    return median(series[-k:]) - median(series[:k])


def _error_lines(w: Worker) -> list[str]:
    out: list[str] = []
    try:
        text = w.output()
    except (OSError, AssertionError):
        return out
    for line in text.splitlines():
        level = ""
        if line.startswith("{"):
            try:
                level = str(json.loads(line).get("level", "")).lower()
            except ValueError:
                pass
        if level in ("error", "critical") or line.startswith("Traceback"):
            out.append(f"{w.name}: {line[:300]}")
    return out
