"""sdk: the producer-side API services embed — frames through
``FrameRepository.save`` against the broker, and the CPU the instrumentation
adds per frame (the processes are ``python -m bench.sdk``'s)."""

from __future__ import annotations

import asyncio
from typing import Any

from bench.infra import git_commit, log, read_json_line, summarize
from bench.scenarios.context import Bench
from bench.scenarios.registry import scenario
from bench.workers import python_argv, worker_env


@scenario("sdk")
async def sdk(b: Bench) -> None:
    """``make bench``'s ``sdk`` scenario: both measurements as processes of their
    own (tracing and logging set-up are process-wide), topics of their own."""
    from bench.sdk import EVENTS_PER_FRAME, SAVE_EVENTS, SAVES  # here: importing it creates its metrics

    sc = b.scale
    d = b.detail("sdk")
    prefix = b.stack.topic_prefix(b.stack.name("sdk"))
    s = b.base.with_overrides(topic_prefix=prefix)
    await b.stack.create_topics(list(s.topics.events), s.topics.partitions)
    try:
        wt = b.stack.worker(
            "sdk-throughput",
            python_argv(
                "-m", "bench.sdk", "throughput", "--frames", str(sc.sdk_frames), "--tasks", str(sc.sdk_tasks),
                "--reps", str(sc.reps), "--sequential", str(sc.sdk_sequential_frames),
                "--cameras", str(sc.cameras),
            ),
            worker_env(s),
        )  # fmt: skip
        await b.stack.drive([wt], groups=[], total=0, timeout_s=sc.timeout_s)
        tp = read_json_line(wt.output())
        records = await b.stack.end_offsets_total(s.topics.events)
    finally:
        await b.stack.delete_prefix(prefix)
    # The figure counts what the broker holds: exactly ten records per frame saved.
    expected = tp["frames_total"] * EVENTS_PER_FRAME
    short = [r for r in tp["reps"] if r["events"] != r["frames"] * EVENTS_PER_FRAME]
    if records != expected or tp["events_saved"] != expected or short:
        raise RuntimeError(
            f"sdk: {tp['frames_total']} frames saved ({tp['events_saved']} events reported published), "
            f"{records} records in {prefix}.*, {expected} expected"
        )
    b.put("sdk_frames_per_s", [r["frames_per_s"] for r in tp["reps"]], 0)
    b.put("sdk_events_per_s", [r["frames_per_s"] * EVENTS_PER_FRAME for r in tp["reps"]], 0)
    log(
        f"sdk: {b.figures['sdk_frames_per_s']:,.0f} frames/s through save ({sc.sdk_tasks} tasks), "
        f"{records:,} records in the topics as expected"
    )

    wo = b.stack.worker(
        "sdk-overhead",
        python_argv(
            "-m", "bench.sdk", "overhead", "--frames", str(sc.sdk_overhead_frames),
            "--reps", str(sc.sdk_overhead_reps), "--cameras", str(sc.cameras),
        ),
        worker_env(s),
    )  # fmt: skip
    await b.stack.drive([wo], groups=[], total=0, timeout_s=sc.timeout_s)
    ov = read_json_line(wo.output())
    b.put("sdk_overhead_us_per_frame", [r["overhead_cpu_us"] for r in ov["sdk"]], 1)
    b.put("sdk_overhead_batch_us_per_frame", [r["overhead_cpu_us"] for r in ov["batch"]], 1)
    b.put("sdk_bare_us_per_frame", [r["bare_cpu_us"] for r in ov["sdk"]], 1)
    log(
        f"sdk: instrumentation {b.figures['sdk_overhead_us_per_frame']} us/frame "
        f"({b.figures['sdk_overhead_batch_us_per_frame']} with a batch span processor), "
        f"domain alone {b.figures['sdk_bare_us_per_frame']} us/frame"
    )

    def med(runs: list[dict[str, Any]], key: str) -> Any:
        return summarize([r[key] for r in runs])["median"]

    d.update(
        # latest.json's git_commit is the full run's; an --update of this scenario says its own.
        git_commit=await asyncio.to_thread(git_commit),
        tasks=sc.sdk_tasks,
        frames_per_rep=sc.sdk_frames,
        events_per_frame=EVENTS_PER_FRAME,
        saves_per_frame={k: f"{SAVE_EVENTS[k]} event(s)" for k in SAVES},
        records_in_topics=records,
        frames_total=tp["frames_total"],
        warmup_frames=tp["warmup_frames"],
        producer_start_s=tp["start_s"],
        cpu_us_per_frame=med(tp["reps"], "cpu_us_per_frame"),
        save_ms={
            k: {q: med([r["save_ms"][k] for r in tp["reps"]], q) for q in ("p50", "p99")} for k in SAVES
        },
        sequential=tp.get("sequential"),
        throughput_runs=tp["reps"],
        workers={"throughput": wt.summary(), "overhead": wo.summary()},
        overhead={
            "frames_per_rep": ov["frames_per_rep"],
            "reps": sc.sdk_overhead_reps,
            "spans_per_frame": ov["spans_per_frame"],
            "log_lines_per_frame": ov["log_lines_per_frame"],
            "instrumented_cpu_us": med(ov["sdk"], "instrumented_cpu_us"),
            "overhead_wall_us": med(ov["sdk"], "overhead_wall_us"),
            "batch_overhead_wall_us": med(ov["batch"], "overhead_wall_us"),
            "batch_spans_started": ov["batch_spans_started"],
            "batch_spans_exported": ov["batch_spans_exported"],
            "runs": ov["sdk"],
            "batch_runs": ov["batch"],
        },
        method=METHOD.format(tasks=sc.sdk_tasks),
    )


METHOD = (
    "throughput: one process (python -m bench.sdk throughput), the real FramePublisher (make_producer: "
    "acks=all, idempotent, linger 5 ms) under a FrameRepository, tracing on the SDK provider of "
    "setup_tracing exporting nowhere; {tasks} asyncio tasks take frames from one counter; each frame is "
    "captured, queued, saved (2 events), processing, saved (1), three empty stages started and completed, "
    "completed, saved (7); timed from the first frame to the last save acknowledged, after a warm-up; the "
    "topics' end offsets are checked to hold exactly 10 records per frame saved. overhead: another process, "
    "no publishing; per repetition the instrumented loop (@traced process function, set_frame_context, a "
    "span and a TimingContext per stage, increment_frames_processed, observe_processing_duration, one JSON "
    "log line through setup_logging at INFO to a discarding stream) and the domain-only loop, in alternating "
    "order; CPU time (time.process_time, all threads) per frame; first with setup_tracing's processors only "
    "(no OTLP endpoint), then with a BatchSpanProcessor to an exporter that discards"
)
