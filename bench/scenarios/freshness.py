"""freshness: the pipeline (``tracker consume --inline-projection``) running
live while a separate process offers a steady load (``bench.loadgen``); the
latency from a probed frame's first record sent to its row visible in
``frame_metadata`` (``bench.scenarios.live``)."""

from __future__ import annotations

from bench.infra import percentile
from bench.scenarios.context import Bench
from bench.scenarios.live import LiveLoad, live_workers
from bench.scenarios.registry import scenario


@scenario("freshness")
async def freshness(b: Bench) -> None:
    sc = b.scale
    async with b.stack.scratch("fresh") as s, live_workers(b, s, "pipeline") as live:
        load = LiveLoad(live, sc.fresh_rate_eps, sc.fresh_duration_s, sc.fresh_sample_every)
        await load.run(b)
    lat = load.after_warmup(sc.fresh_warmup_s)
    b.figures["fresh_p50_ms"] = round(percentile(lat, 0.50), 1)
    b.figures["fresh_p99_ms"] = round(percentile(lat, 0.99), 1)
    b.figures["fresh_max_ms"] = round(max(lat), 1)
    b.figures["fresh_offered_eps"] = load.summary.get("offered_eps")
    b.detail("freshness").update(
        probes=len(lat),
        probes_lost=len(load.pending),
        offered_eps=load.summary.get("offered_eps"),
        loadgen=load.summary,
        series=load.series(),
        machine=live.machine,
        workers={w.name: w.summary() for w in live.workers},
        method=f"offered {sc.fresh_rate_eps} events/s for {sc.fresh_duration_s:g}s by a separate process "
        "(pre-encoded records, producer configured like FramePublisher's); one frame in "
        f"{sc.fresh_sample_every} probed: from just before its first record is sent to the first poll "
        "(every 20 ms) that finds its row in frame_metadata; the first "
        f"{sc.fresh_warmup_s:g}s are warm-up and not counted; one long run, percentiles over all probes",
    )
