"""Benchmark sizes. ``BENCH_SCALE`` picks one; ``default`` is the one the figures are about.

Sizes fixed by the issue (default scale): at least 1,000,000 events for ingest,
replay and memory; at least 10,000,000 stored events for the queries; three
repetitions per figure; 5,000 events/s offered for freshness. Everything else
(how many records the slow baselines get, how long freshness runs, the second
backlog size of the memory scenario) is chosen so that a default run stays
within about 35 minutes on the 2-core reference machine, plus the 20-minute soak.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Scale:
    name: str
    events: int  # the pre-loaded source topics: ingest, limits, replay, memory (large backlog)
    reps: int  # repetitions per figure (median reported, spread alongside)
    naive_records: int  # the naive baseline is slow: it gets a prefix of the same records
    quix_records: int  # the Quix Streams peer: a prefix of the same records (0 = all)
    # The Kafka Connect peer: a prefix of the same records (0 = all, -1 = not run:
    # it needs ~100 MB of jars from Maven Central and a JVM).
    connect_records: int
    memory_small_events: int  # second backlog size of the memory scenario
    memory_reps: int
    fresh_rate_eps: int  # offered load of the freshness scenario
    fresh_duration_s: float
    fresh_warmup_s: float
    fresh_sample_every: int  # probe one frame in N
    query_events: int  # events stored for the query scenario
    query_calls: int  # calls per query kind and repetition
    replay_reps: int
    cameras: int = 50  # simulated mix of the pre-loaded records: 50 cameras x 10 fps
    fps: float = 10.0
    timeout_s: float = 1800.0  # per worker run
    background_probe_s: float = 1.0  # how long to watch the machine's load before each scenario
    # The sdk scenario (bench/sdk.py): frames per repetition through FrameRepository.save,
    # the asyncio tasks saving them concurrently, a one-task run for the latency of one
    # save, and the frames and repetitions of the instrumentation-overhead loops.
    sdk_frames: int = 20_000
    sdk_tasks: int = 32
    sdk_sequential_frames: int = 200
    sdk_overhead_frames: int = 20_000
    sdk_overhead_reps: int = 5
    # The ingest modes run (bench/scenarios/context.py MODES), comma-separated; a
    # subset compares with a checkout that lacks some (``--code``).
    ingest_modes: str = "store,project,two_groups,pipeline,pipeline_2w"
    # The scale scenario: a source of its own in topics of 12 partitions, drained by
    # 1, 2 and 4 workers per group.
    scale_events: int = 300_000
    scale_partitions: int = 12
    # The soak: the pipeline live at a steady rate it can hold, sampled every
    # soak_sample_s; the first soak_warmup_s are left out of the figures.
    soak_minutes: float = 20.0
    soak_rate_eps: int = 5_000
    soak_mode: str = "pipeline_2w"
    soak_sample_s: float = 10.0
    soak_warmup_s: float = 60.0
    # The anomaly scenario (bench/scenarios/anomaly.py): its own traffic, event time
    # running ahead of the clock. Injected minutes (a learning period, then one
    # injection per slot), clean minutes through the pipeline, and planned hours of
    # clean traffic judged in process; on/off repetitions of the injected drain.
    anomaly_cameras: int = 8
    anomaly_fps: float = 4.0
    anomaly_minutes: float = 18.0
    anomaly_clean_minutes: float = 18.0
    anomaly_planned_hours: float = 2.0
    anomaly_learn_s: float = 300.0
    anomaly_slot_s: float = 100.0
    anomaly_length_s: float = 60.0
    anomaly_reps: int = 3

    def with_overrides(self, **kw: object) -> Scale:
        return replace(self, **kw)  # type: ignore[arg-type]


SCALES = {
    # The figures. Issue-fixed sizes: events >= 1M, query_events >= 10M, reps >= 3.
    "default": Scale(
        name="default",
        events=1_000_000,
        reps=3,
        naive_records=3_000,
        quix_records=200_000,
        connect_records=200_000,
        memory_small_events=250_000,
        memory_reps=1,
        fresh_rate_eps=5_000,
        fresh_duration_s=45.0,
        fresh_warmup_s=10.0,
        fresh_sample_every=4,
        query_events=10_000_000,
        query_calls=100,
        replay_reps=3,
    ),
    # Every scenario, about two minutes.
    "small": Scale(
        name="small",
        events=20_000,
        reps=3,
        naive_records=300,
        quix_records=0,
        connect_records=0,
        memory_small_events=5_000,
        memory_reps=1,
        fresh_rate_eps=5_000,
        fresh_duration_s=10.0,
        fresh_warmup_s=3.0,
        fresh_sample_every=4,
        query_events=200_000,
        query_calls=50,
        replay_reps=3,
        sdk_frames=3_000,
        sdk_overhead_frames=5_000,
        sdk_overhead_reps=3,
        scale_events=30_000,
        soak_minutes=2.0,
        soak_sample_s=5.0,
        soak_warmup_s=20.0,
        anomaly_cameras=6,
        anomaly_fps=3.0,
        anomaly_minutes=12.0,
        anomaly_clean_minutes=10.0,
        anomaly_planned_hours=1.0,
        anomaly_reps=1,
    ),
    # The test of the harness itself (tests/integration/test_bench.py): seconds,
    # one repetition; the figures mean nothing.
    "tiny": Scale(
        name="tiny",
        events=4_000,
        reps=1,
        naive_records=100,
        quix_records=0,
        connect_records=-1,
        memory_small_events=1_000,
        memory_reps=1,
        fresh_rate_eps=1_000,
        fresh_duration_s=2.0,
        fresh_warmup_s=0.5,
        fresh_sample_every=2,
        query_events=20_000,
        query_calls=10,
        replay_reps=1,
        cameras=10,
        timeout_s=120.0,
        background_probe_s=0.2,
        sdk_frames=100,
        sdk_tasks=8,
        sdk_sequential_frames=10,
        sdk_overhead_frames=300,
        sdk_overhead_reps=1,
        scale_events=3_000,
        soak_minutes=0.25,
        soak_rate_eps=1_000,
        soak_sample_s=2.0,
        soak_warmup_s=2.0,
        anomaly_cameras=3,
        anomaly_fps=2.0,
        anomaly_minutes=4.0,
        anomaly_clean_minutes=2.0,
        anomaly_planned_hours=0.02,
        anomaly_learn_s=130.0,
        anomaly_slot_s=40.0,
        anomaly_length_s=30.0,
        anomaly_reps=1,
    ),
}


def scale_from_env(name: str | None = None) -> Scale:
    name = name or os.environ.get("BENCH_SCALE") or "default"
    if name not in SCALES:
        raise SystemExit(f"BENCH_SCALE={name!r}: expected one of {', '.join(SCALES)}")
    return SCALES[name]
