"""``tracker simulate --inject``: the specs, what each injection does to the
planned frames, the ground truth written, and one line for a bad spec."""

from __future__ import annotations

import json
import random
import statistics
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tracker import events as ev
from tracker.cli import main
from tracker.errors import UsageError
from tracker.simulator import Injection, Injections, SimulationConfig, plan_frame

START = datetime(2026, 1, 1, tzinfo=UTC)


def test_specs_parse_with_their_defaults() -> None:
    assert Injection.parse("slow@cam-002/detect:120+60x3") == Injection(
        "slow", "cam-002", "detect", 120.0, 60.0, 3.0
    )
    assert Injection.parse("errors@cam-1/analyze:5+10").factor == 0.5
    assert Injection.parse("silent@cam-1:5+10") == Injection("silent", "cam-1", "", 5.0, 10.0, 1.0)
    assert Injection.parse("drift@cam-1/notify:0+1800x2").end_s == 1800.0


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ("slow", "expected KIND@CAMERA"),
        ("melt@cam-1/detect:1+2", "unknown kind 'melt'"),
        ("slow@cam-1:1+2", "needs a stage"),
        ("slow@cam-1/paint:1+2", "needs a stage"),
        ("silent@cam-1/detect:1+2", "without a stage"),
        ("errors@cam-1/detect:1+2x2", "a probability"),
        ("slow@cam-1/detect:1+0", "must be positive"),
    ],
)
def test_a_bad_spec_says_what_is_wrong(spec: str, says: str) -> None:
    with pytest.raises(UsageError, match=says):
        Injection.parse(spec)


def test_the_cli_prints_one_line_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "--inject", "slow@cam-1:1+2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tracker: error: --inject 'slow@cam-1:1+2'")


def _stage_ms(cfg: SimulationConfig, camera: str, stage: str, at: float, n: int = 200) -> list[float]:
    rng = random.Random(1)
    out = []
    for _ in range(n):
        for _, e in plan_frame(rng, cfg, camera, at, START, "processor/1"):
            if isinstance(e, ev.StageCompleted) and e.stage == stage:
                out.append(e.duration_ms)
    return out


def test_a_slowdown_applies_to_its_camera_stage_and_time_only() -> None:
    inj = Injections((Injection.parse("slow@cam-001/detect:100+50x4"),))
    cfg = SimulationConfig(failure_rate=0, retry_rate=0, slow_rate=0, injections=inj)
    clean = SimulationConfig(failure_rate=0, retry_rate=0, slow_rate=0)
    during = statistics.median(_stage_ms(cfg, "cam-001", "detect", 120))
    assert during == pytest.approx(4 * statistics.median(_stage_ms(clean, "cam-001", "detect", 120)))
    assert _stage_ms(cfg, "cam-001", "detect", 160) == _stage_ms(clean, "cam-001", "detect", 160)
    assert _stage_ms(cfg, "cam-002", "detect", 120) == _stage_ms(clean, "cam-002", "detect", 120)


def test_bursts_silences_and_drifts() -> None:
    inj = Injections(
        (
            Injection.parse("errors@cam-001/analyze:0+10x1"),
            Injection.parse("silent@cam-002:5+5"),
            Injection.parse("drift@cam-003/notify:0+100x3"),
        )
    )
    assert inj.failure_probability("cam-001", "analyze", 3) == 1.0
    assert inj.failure_probability("cam-001", "analyze", 10) == 0.0
    assert (inj.silent("cam-002", 7), inj.silent("cam-002", 11), inj.silent("cam-001", 7)) == (
        True,
        False,
        False,
    )
    assert inj.slowdown("cam-003", "notify", 50) == pytest.approx(2.0)
    assert inj.slowdown("cam-003", "notify", 500) == pytest.approx(3.0)  # a drift stays
    cfg = SimulationConfig(injections=inj)
    events = plan_frame(random.Random(2), cfg, "cam-001", 3.0, START, "processor/1")
    assert isinstance(events[-1][1], ev.ProcessingFailed) and events[-1][1].stage in ("detect", "analyze")


def test_the_ground_truth_file(tmp_path: Path) -> None:
    inj = Injections(
        (Injection.parse("slow@cam-001/detect:60+30x3"), Injection.parse("drift@cam-2/notify:0+9"))
    )
    inj.write_truth(tmp_path / "truth.json", START)
    truth = json.loads((tmp_path / "truth.json").read_text())
    assert truth["start"] == START.isoformat()
    assert truth["injections"][0] == {
        "kind": "slow",
        "camera_id": "cam-001",
        "stage": "detect",
        "start": "2026-01-01T00:01:00+00:00",
        "end": "2026-01-01T00:01:30+00:00",
        "factor": 3.0,
        "expect": "stage_slow",
    }
    assert truth["injections"][1]["expect"] is None  # a drift must not alarm
