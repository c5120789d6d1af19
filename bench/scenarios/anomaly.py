"""anomaly: the learned detector against injected, labelled anomalies, the
static-threshold baseline and river beside it, and what detection costs the pipeline.

- Traffic: the simulator's mix (``bench.preload``, one process, cameras
  ``cam-001``...) with injections (``tracker.simulator.Injection``) after a
  learning period: slowdowns of one stage on one camera, error bursts, silent
  cameras, and gradual drifts that must not alarm; and a second topic pair of
  the same mix with nothing injected. Event time runs ahead of the wall clock:
  minutes of traffic are produced and drained in seconds.
- The pipeline (``tracker consume --inline-projection``, a process, a fresh
  database each run) drains the injected traffic with detection on and off,
  alternately, ``anomaly_reps`` times each: the rates and CPU per event compared
  (detector CPU = the worker's and PostgreSQL's CPU per event, on minus off);
  then the clean traffic with detection on.
- Precision, recall and delay are the pipeline's, from its ``anomalies`` table
  against the ground truth (``bench.anomaly_eval.score``: an episode matches an
  injection of its kind on its camera and stage that it overlaps; delay = the
  event time it was known, its first window's end plus the lateness, minus the
  injection's start). False alarms per hour: episodes on clean traffic, over
  the pipeline's clean run and ``anomaly_planned_hours`` more hours of the same
  mix whose windows are computed in process from the simulator's plan (the same
  detector code; the pipeline's windows and the in-process ones are checked
  equal on the clean run).
- The static baseline and river's ``GaussianScorer`` judge the very windows the
  pipeline's detector judged (read back from its database) and the planned ones.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from statistics import median
from typing import Any

import asyncpg

from bench.anomaly_eval import (
    Episode,
    detectors,
    episodes,
    planned_runs,
    run_detector,
    score,
)
from bench.infra import log, read_json_line
from bench.scenarios.context import Bench, Source
from bench.scenarios.registry import scenario
from bench.workers import python_argv, tracker_argv, worker_env
from projections.anomalies import AnomalyDetection
from projections.detector import DetectorConfig, Window, summarize
from tracker.config import Settings
from tracker.simulator import Injection, Injections, SimulationConfig

# One injection per slot after the learning period, cycling through these
# (kind, stage, factor), each on the next camera; drifts run over the whole
# traffic on two more cameras.
PLAN = (
    ("slow", "detect", 3.0),
    ("errors", "analyze", 0.4),
    ("silent", "", 1.0),
    ("slow", "analyze", 2.0),
    ("errors", "notify", 0.3),
    ("slow", "notify", 3.0),
    ("silent", "", 1.0),
    ("slow", "detect", 2.5),
)


def injections(cameras: int, seconds: float, learn_s: float, slot_s: float, length_s: float) -> list[str]:
    specs = []
    t, i = learn_s, 0
    while t + length_s <= seconds - 30:
        kind, stage, factor = PLAN[i % len(PLAN)]
        cam = f"cam-{i % cameras + 1:03d}"
        where = f"{cam}/{stage}" if stage else cam
        specs.append(f"{kind}@{where}:{t:g}+{length_s:g}x{factor:g}")
        t, i = t + slot_s, i + 1
    specs.append(f"drift@cam-{cameras:03d}/analyze:0+{seconds:g}x1.5")
    specs.append(f"drift@cam-{max(1, cameras - 1):03d}/detect:0+{seconds:g}x2")
    return specs


async def _preload(
    b: Bench, name: str, seconds: float, specs: list[str], seed: int
) -> tuple[Source, datetime]:
    sc = b.scale
    prefix = b.stack.topic_prefix(name)
    s = Settings.from_env(environ={}, kafka_bootstrap=b.base.kafka.bootstrap, topic_prefix=prefix)
    await b.stack.create_topics(list(s.topics.events), b.base.topics.partitions)
    start = datetime.fromtimestamp(int(time.time()), UTC)
    argv = python_argv(
        "-m", "bench.preload", "--prefix", prefix, "--cameras", str(sc.anomaly_cameras),
        "--camera-prefix", "cam", "--fps", str(sc.anomaly_fps), "--duration", f"{seconds:g}",
        "--seed", str(seed), "--start", f"{start.timestamp():.6f}",
        "--partitions", str(b.base.topics.partitions),
        *[arg for spec in specs for arg in ("--inject", spec)],
    )  # fmt: skip
    w = b.stack.worker(f"preload-{name}", argv, worker_env(s))
    t0 = time.monotonic()
    await b.stack.drive([w], groups=[], total=0, timeout_s=sc.timeout_s)
    out = read_json_line(w.output())
    n = await b.stack.end_offsets_total(s.topics.events)
    if n != out["events"]:
        raise RuntimeError(f"pre-load of {prefix}: {n} records in the topics, {out['events']} sent")
    src = Source(prefix, n, out["frames"], {start.date()}, time.monotonic() - t0)
    log(
        f"anomaly: pre-loaded {n:,} events ({seconds / 60:g} min of {sc.anomaly_cameras} cameras) "
        f"into {prefix}.*"
    )
    return src, start


async def _drain(b: Bench, src: Source, what: str, *, detect: bool, read: bool) -> dict[str, Any]:
    """``tracker consume --inline-projection`` over ``src`` into a fresh database,
    with detection on or off; with ``read``, the episodes it found and the
    windows it judged."""
    async with b.stack.scratch(what, topic_prefix=src.prefix) as s:
        env = worker_env(s, TRACKER_ANOMALY_DETECTION="1" if detect else "0")
        argv = tracker_argv("consume", "--inline-projection", "--until-idle", "--metrics-port", "0")
        w = b.stack.worker("consume", argv, env)
        p = await b.stack.drive(
            [w], groups=[s.groups.event_store], total=src.events, timeout_s=b.scale.timeout_s
        )
        rate, info = p.rate()
        out: dict[str, Any] = {
            "detect": detect,
            "rate": rate,
            **info,
            "worker_cpu_us": 1e6 * (w.cpu_s or 0) / src.events,
            "postgres_cpu_us": 1e6 * b.stack.last_cpu["postgres_cpu_s"] / src.events,
        }
        if read:
            conn = await asyncpg.connect(s.database.url.get())
            try:
                out.update(await _read(conn, s))
            finally:
                await conn.close()
        return out


async def _read(conn: asyncpg.Connection, s: Settings) -> dict[str, Any]:
    gen = int(await conn.fetchval("SELECT generation FROM projection_state WHERE projection = 'frames'"))
    row = await conn.fetchrow(
        "SELECT window_s, lateness_s, next_window FROM anomaly_detector WHERE generation = $1", gen
    )
    first = await conn.fetchval("SELECT min(frame_timestamp) FROM processing_stages")
    eps = [
        Episode(
            r["kind"], r["camera_id"], r["stage"], int(r["started_at"].timestamp()),
            r["detected_at"].timestamp(), int(r["ended_at"].timestamp()),
        )
        for r in await conn.fetch("SELECT * FROM anomalies WHERE frame_id = '' ORDER BY started_at")
    ]  # fmt: skip
    frames = int(await conn.fetchval("SELECT count(*) FROM anomalies WHERE frame_id <> ''"))
    if row is None or row["next_window"] is None or first is None:
        return {"episodes": eps, "slow_frames": frames, "windows": [], "p95s": {}, "hours": 0.0, "sql_s": 0.0}
    w = int(row["window_s"])
    lo = int(first.timestamp() // w) * w
    hi = int(row["next_window"].timestamp())
    # The windows' queries, timed as the writer runs them (chunks of its max_windows).
    detection = AnomalyDetection()
    windows: list[Window] = []
    p95s: dict[int, Any] = {}
    t0 = time.perf_counter()
    for a in range(lo, hi, w * detection.max_windows):
        ws, ps = await detection.windows(conn, gen, a, min(hi, a + w * detection.max_windows), w)
        windows += ws
        p95s.update(ps)
    sql_s = time.perf_counter() - t0
    return {
        "sql_s": sql_s,
        "episodes": eps,
        "slow_frames": frames,
        "windows": windows,
        "p95s": p95s,
        "hours": (hi - lo) / 3600,
    }


def _compare(
    config: DetectorConfig,
    windows: list[Window],
    p95s: dict[int, Any],
    truth: list[dict[str, Any]],
    hours: float,
) -> dict[str, dict[str, Any]]:
    """Each approach's score on the same windows, and the CPU it took (``cpu_s``)."""
    slack = config.window_s + config.lateness_s
    out: dict[str, dict[str, Any]] = {}
    for name, det in detectors(config).items():
        t0 = time.process_time()
        found = run_detector(det, windows, p95s)
        cpu = time.process_time() - t0
        out[name] = {**score(episodes(found, config.lateness_s), truth, hours, slack_s=slack), "cpu_s": cpu}
    return out


@scenario("anomaly")
async def anomaly(b: Bench) -> None:
    sc = b.scale
    d = b.detail("anomaly")
    config = DetectorConfig(window_s=b.base.anomaly.window_s, lateness_s=b.base.anomaly.lateness_s)
    seconds = sc.anomaly_minutes * 60
    specs = injections(
        sc.anomaly_cameras, seconds, sc.anomaly_learn_s, sc.anomaly_slot_s, sc.anomaly_length_s
    )
    inj: Source | None = None
    clean: Source | None = None
    read: dict[str, Any] | None = None
    runs: list[dict[str, Any]] = []
    try:
        inj, start = await _preload(b, "anomaly-inj", seconds, specs, seed=41)
        truth = [Injection.parse(spec).truth(start) for spec in specs]
        clean, _ = await _preload(b, "anomaly-clean", sc.anomaly_clean_minutes * 60, [], seed=43)
        # A warm-up drain first (not counted: the first drain after a pre-load ran
        # slower in either mode); then on, off, off, on, ...: a drift of the
        # machine's load hits both alike.
        await _drain(b, inj, "anomaly-warmup", detect=False, read=False)
        modes = [
            m for rep in range(sc.anomaly_reps) for m in ((True, False) if rep % 2 == 0 else (False, True))
        ]
        for i, detect in enumerate(modes):
            r = await _drain(b, inj, f"anomaly-{i}", detect=detect, read=detect and read is None)
            if "episodes" in r:
                read = {k: r.pop(k) for k in ("episodes", "slow_frames", "windows", "p95s", "hours", "sql_s")}
            runs.append(r)
            log(f"anomaly drain {'on' if detect else 'off'}: {r['rate'] or 0:,.0f} events/s")
        rc = await _drain(b, clean, "anomaly-clean", detect=True, read=True)
    finally:
        for src in (inj, clean):
            if src is not None:
                await b.stack.delete_prefix(src.prefix)
    assert read is not None
    windows, p95s, hours = read["windows"], read["p95s"], read["hours"]
    d["injected"] = {"slow_frames": read["slow_frames"], "windows": len(windows), "hours": round(hours, 3)}

    pipeline = score(read["episodes"], truth, hours, slack_s=config.window_s + config.lateness_s)
    compared = _compare(config, windows, p95s, truth, hours)
    # Clean: the pipeline's run, and planned hours of the same mix in process.
    clean_windows, clean_p95s, clean_hours = rc["windows"], rc["p95s"], rc["hours"]
    clean_inproc = _compare(config, clean_windows, clean_p95s, [], clean_hours)
    planned_cfg = SimulationConfig(
        cameras=sc.anomaly_cameras, fps=sc.anomaly_fps, duration_s=sc.anomaly_planned_hours * 3600,
        seed=47, start=start, camera_prefix="cam", injections=Injections(),
    )  # fmt: skip
    t0 = time.process_time()
    pw, pp = await asyncio.to_thread(lambda: summarize(planned_runs(planned_cfg), config.window_s))
    # Only the windows the pipeline would have closed: the last, cut short by the
    # end of the traffic, would look like every camera dropping its rate.
    closed_by = start.timestamp() + planned_cfg.duration_s - config.lateness_s
    pw = [w for w in pw if w.start + config.window_s <= closed_by]
    planned = _compare(config, pw, pp, [], sc.anomaly_planned_hours)
    planned_s = time.process_time() - t0
    clean_pipeline_eps = len(rc["episodes"])
    total_hours = clean_hours + sc.anomaly_planned_hours

    def fa(name: str) -> float | None:
        if not total_hours:
            return None
        n = (clean_pipeline_eps if name == "learned" else clean_inproc[name]["episodes"]) + planned[name][
            "episodes"
        ]
        return round(n / total_hours, 3)

    for prefix, name, res in (
        ("anomaly", "learned", pipeline),
        ("anomaly_static", "static", compared.get("static")),
        ("anomaly_river", "river", compared.get("river")),
    ):
        if res is None:
            for k in ("precision", "recall", "delay_p50_s", "false_alarms_per_hour"):
                b.figures[f"{prefix}_{k}"] = None
                b.notes[f"{prefix}_{k}"] = "river is not installed (pip install '.[bench]')"
            continue
        for k in ("precision", "recall", "delay_p50_s"):
            b.put(f"{prefix}_{k}", [res[k]], 3 if k != "delay_p50_s" else 1)
            if res[k] is None:
                b.notes[f"{prefix}_{k}"] = "nothing detected" if k != "recall" else "nothing injected to find"
        b.put(f"{prefix}_false_alarms_per_hour", [fa(name)], 3)

    on = [r for r in runs if r["detect"]]
    off = [r for r in runs if not r["detect"]]
    b.put("anomaly_pipeline_eps_on", [r["rate"] for r in on], 0)
    b.put("anomaly_pipeline_eps_off", [r["rate"] for r in off], 0)
    if b.figures["anomaly_pipeline_eps_on"] and b.figures["anomaly_pipeline_eps_off"]:
        b.figures["anomaly_pipeline_ratio"] = round(
            b.figures["anomaly_pipeline_eps_on"] / b.figures["anomaly_pipeline_eps_off"], 3
        )
    else:
        b.figures["anomaly_pipeline_ratio"] = None
        b.notes["anomaly_pipeline_ratio"] = "a drain's rate was not measured"
    cost = [
        (a["worker_cpu_us"] + a["postgres_cpu_us"]) - (z["worker_cpu_us"] + z["postgres_cpu_us"])
        for a, z in zip(on, off, strict=False)
    ]
    # The median of the differences (each pair's noise is of the order of the cost).
    b.put("anomaly_cpu_us_per_event", [max(0.0, median(cost))] if cost else [], 2)
    d.update(
        truth=truth,
        injections=specs,
        pipeline=pipeline,
        in_process_on_pipeline_windows=compared,
        clean={
            "pipeline_hours": round(clean_hours, 3),
            "pipeline_episodes": [e.__dict__ for e in rc["episodes"]],
            "in_process_on_pipeline_windows": clean_inproc,
            "planned_hours": sc.anomaly_planned_hours,
            "planned": planned,
            "planned_cpu_s": round(planned_s, 1),
        },
        # The learned detector in process on the pipeline's windows finds what the pipeline found.
        in_process_matches_pipeline={k: v for k, v in compared["learned"].items() if k != "cpu_s"} == pipeline
        and clean_inproc["learned"]["episodes"] == clean_pipeline_eps,
        runs=runs,
        cpu_us_per_event_on_minus_off=[round(c, 2) for c in cost],
        # The detector's own work replayed over the same windows: its window queries
        # (wall time) and its Python (CPU), per event of the injected traffic.
        replayed_us_per_event={
            "window_queries": round(1e6 * read["sql_s"] / inj.events, 2) if inj else None,
            "detector_python": round(1e6 * compared["learned"]["cpu_s"] / inj.events, 2) if inj else None,
        },
        traffic=f"{sc.anomaly_cameras} cameras x {sc.anomaly_fps:g} fps, simulator defaults; "
        f"{sc.anomaly_minutes:g} min injected ({len(specs)} injections after {sc.anomaly_learn_s:g} s), "
        f"{sc.anomaly_clean_minutes:g} min clean; window {config.window_s} s, lateness {config.lateness_s} s",
        events={"injected": inj.events if inj else 0, "clean": clean.events if clean else 0},
    )
    d["episodes"] = [e.__dict__ for e in read["episodes"]]
    log(
        f"anomaly: precision {pipeline['precision']}, recall {pipeline['recall']}, delay p50 "
        f"{pipeline['delay_p50_s']} s, false alarms/h {b.figures['anomaly_false_alarms_per_hour']} "
        f"(static: {compared['static']}); eps on/off {b.figures['anomaly_pipeline_ratio']}; "
        f"detector {b.figures['anomaly_cpu_us_per_event']} us/event"
    )
