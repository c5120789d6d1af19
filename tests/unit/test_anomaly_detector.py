"""The learned anomaly detector (projections/detector.py), on synthetic traffic:
each camera and stage keeps its own normal, injected slowdowns, bursts and
silences are found and a gradual drift is not, the state survives a JSON round
trip, and the findings do not depend on the order the runs arrive in."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterable

from hypothesis import given, settings
from hypothesis import strategies as st

from projections.detector import (
    FAILURE_BURST,
    SILENT,
    STAGE_SLOW,
    Detector,
    DetectorConfig,
    Finding,
    StageRun,
    Window,
    closable,
    poisson_tail_score,
    summarize,
    watermark,
)

T0 = 1_767_225_600  # 2026-01-01T00:00:00Z
# Each camera's median per stage (ms): the same stage is 3x slower on cam-b.
MEDIANS = {"cam-a": {"detect": 45.0, "notify": 8.0}, "cam-b": {"detect": 135.0, "notify": 8.0}}


def traffic(
    seconds: int,
    *,
    fps: float = 2.0,
    seed: int = 1,
    slow: tuple[str, str, int, int, float] | None = None,
    burst: tuple[str, str, int, int] | None = None,
    silent: tuple[str, int, int] | None = None,
    drift: tuple[str, str, float] | None = None,
) -> list[StageRun]:
    """Stage runs of every camera (log-normal durations, 2% failures), with
    an injected slowdown (camera, stage, from, to, factor), burst (camera,
    stage, from, to: half the runs fail), silence (camera, from, to) or drift
    (camera, stage, factor reached at the end, linearly)."""
    rng = random.Random(seed)
    out = []
    n = 0
    for i in range(int(seconds * fps)):
        t = i / fps
        for cam, stages in MEDIANS.items():
            if silent and cam == silent[0] and silent[1] <= t < silent[2]:
                continue
            n += 1
            for stage, median in stages.items():
                ms = median * rng.lognormvariate(0, 0.35)
                if slow and (cam, stage) == slow[:2] and slow[2] <= t < slow[3]:
                    ms *= slow[4]
                if drift and (cam, stage) == drift[:2]:
                    ms *= 1 + (drift[2] - 1) * t / seconds
                p_fail = 0.5 if burst and (cam, stage) == burst[:2] and burst[2] <= t < burst[3] else 0.02
                failed = rng.random() < p_fail
                out.append(StageRun(T0 + t + rng.uniform(0, 0.01), cam, stage, failed, ms, f"{cam}-{n}"))
    return out


def run_all(runs: Iterable[StageRun], config: DetectorConfig | None = None) -> list[Finding]:
    config = config or DetectorConfig()
    windows, p95s = summarize(runs, config.window_s)
    det = Detector(config)
    out: list[Finding] = []
    for w in windows:
        out.extend(det.close(w, p95s.get(w.start)))
    return out


def episodes(findings: list[Finding]) -> set[tuple[str, str, str, int]]:
    return {(f.kind, f.camera_id, f.stage, f.started - T0) for f in findings}


def test_clean_traffic_raises_nothing_and_each_camera_keeps_its_own_normal() -> None:
    # cam-b's detect runs at 3x cam-a's all along: its normal, not an anomaly.
    assert run_all(traffic(2 * 3600)) == []


def test_a_slowdown_is_found_in_the_first_window_and_ends_with_it() -> None:
    found = run_all(traffic(1200, slow=("cam-a", "detect", 600, 720, 3.0)))
    assert episodes(found) == {(STAGE_SLOW, "cam-a", "detect", 600)}
    slow = [f for f in found if f.kind == STAGE_SLOW]
    assert slow[0].window_start == T0 + 600 and slow[0].new
    assert slow[-1].window_end == T0 + 720  # every window of the injection, none after
    assert len(slow) == 12
    assert math.isclose(slow[0].expected, 45.0, rel_tol=0.15)
    assert slow[0].frame_threshold_ms is not None and slow[0].frame_threshold_ms > slow[0].expected


def test_the_same_duration_is_abnormal_on_one_camera_and_normal_on_another() -> None:
    # 135 ms is cam-b's normal detect time; on cam-a it is a 3x slowdown.
    found = run_all(traffic(1200, slow=("cam-a", "detect", 600, 660, 3.0)))
    assert {f.camera_id for f in found} == {"cam-a"}


def test_a_failure_burst_and_a_silent_camera_are_found() -> None:
    found = run_all(
        traffic(1500, burst=("cam-b", "notify", 600, 660), silent=("cam-a", 900, 1000)),
    )
    assert episodes(found) == {(FAILURE_BURST, "cam-b", "notify", 600), (SILENT, "cam-a", "", 900)}


def test_a_gradual_drift_is_learned_not_alarmed() -> None:
    assert run_all(traffic(2 * 3600, drift=("cam-a", "detect", 2.5))) == []


def test_a_lasting_change_becomes_the_new_normal() -> None:
    found = run_all(traffic(3 * 3600, slow=("cam-a", "detect", 600, 3 * 3600, 2.0)))
    assert episodes(found) == {(STAGE_SLOW, "cam-a", "detect", 600)}
    assert found[-1].window_end < T0 + 3 * 3600 - 600  # learned long before the end


def test_the_state_survives_a_json_round_trip_mid_stream() -> None:
    runs = traffic(1200, slow=("cam-a", "detect", 600, 700, 3.0), seed=3)
    windows, p95s = summarize(runs, 10)
    whole = Detector()
    expected = [f for w in windows for f in whole.close(w, p95s.get(w.start))]
    first = Detector()
    got = [f for w in windows[:62] for f in first.close(w, p95s.get(w.start))]
    again = Detector.from_json(json.loads(json.dumps(first.to_json())))
    got += [f for w in windows[62:] for f in again.close(w, p95s.get(w.start))]
    assert got == expected and expected
    assert again.to_json() == whole.to_json()


def _closing_in_arrival_order(
    runs: list[StageRun], arrival: list[int], cuts: set[int], partitions: int, config: DetectorConfig
) -> list[Finding]:
    """What the store does: batches of runs in ``arrival`` order, each partition's
    latest capture time, and windows closed once the watermark passed them."""
    det = Detector(config)
    marks: dict[int, float] = {}
    pending: dict[int, list[StageRun]] = {}
    next_start: int | None = None
    out: list[Finding] = []
    batch: list[StageRun] = []
    for i, idx in enumerate(arrival):
        batch.append(runs[idx])
        if i + 1 not in cuts and i + 1 != len(arrival):
            continue
        for r in batch:
            p = hash(r.frame_id) % partitions
            marks[p] = max(marks.get(p, r.frame_ts), r.frame_ts)
            w = int(r.frame_ts // config.window_s) * config.window_s
            pending.setdefault(w, []).append(r)
        batch = []
        # The first window is the earliest run's, read when the first one closes
        # (the store reads min(frame_timestamp) then): all earlier runs are in by then.
        first = next_start if next_start is not None else min(pending)
        for s in closable(first, watermark(marks.values(), config.idle_s), config):
            windows, p95s = summarize(pending.pop(s, []), config.window_s)
            w = windows[0] if windows else Window(s, {}, {})
            out.extend(det.close(w, p95s.get(s)))
            next_start = s + config.window_s
    return out


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**16), cuts=st.sets(st.integers(1, 3000), max_size=200))
def test_findings_do_not_depend_on_the_arrival_order(seed: int, cuts: set[int]) -> None:
    config = DetectorConfig(warmup_windows=6)
    runs = traffic(360, fps=1.0, seed=seed % 7, slow=("cam-a", "detect", 200, 260, 4.0))
    rng = random.Random(seed)
    # Arrival: out of capture order by up to half the lateness, across partitions.
    arrival = sorted(range(len(runs)), key=lambda i: runs[i].frame_ts + rng.uniform(0, config.lateness_s / 2))
    got = _closing_in_arrival_order(runs, arrival, cuts, partitions=3, config=config)
    # The windows the watermark closed (the last ones stay open): the same
    # findings as judging those windows in order with everything in them.
    closed_until = max(f.window_end for f in got) if got else 0
    in_order = [f for f in run_all(runs, config) if f.window_end <= closed_until]
    assert got == in_order
    assert (STAGE_SLOW, "cam-a", "detect", 200) in episodes(got)


def test_the_watermark_leaves_idle_partitions_out_and_closes_whole_windows() -> None:
    assert watermark([], 300) is None
    assert watermark([100.0, 90.0, 5.0], 50) == 90.0  # the partition at 5 s is idle
    config = DetectorConfig(window_s=10, lateness_s=10)
    assert closable(0, 19.9, config) == []  # [0, 10) closes at 10 s + 10 s of lateness
    assert closable(0, 20.0, config) == [0]
    assert closable(0, 30.0, config) == [0, 10]
    assert closable(20, 55.0, config) == [20, 30]


def test_poisson_tail_score() -> None:
    assert math.isclose(poisson_tail_score(1, 1.0), -math.log10(1 - math.exp(-1)), rel_tol=1e-9)
    assert poisson_tail_score(0, 3.0) == 0.0
    assert poisson_tail_score(30, 2.0) > 15
