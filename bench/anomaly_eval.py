"""Scoring anomaly detectors against the simulator's ground truth, and the
detectors the learned one is compared with.

The windows a detector reads can come from the database (what the pipeline
projected, ``bench.scenarios.anomaly``) or straight from the simulator's plan
(:func:`planned_runs`, no Kafka: hours of traffic in seconds). Every detector
here has the learned one's interface (``close(window, p95) -> findings``), so
the same windows are judged by each:

- :class:`projections.detector.Detector`: the learned baselines the tracker runs;
- :class:`StaticDetector`: fixed thresholds, the same for every camera and stage;
- :class:`RiverDetector`: river's ``GaussianScorer`` (a rolling Gaussian per
  series, scored by its CDF) on the same three series per key.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from projections.detector import (
    FAILURE_BURST,
    RATE_DROP,
    SILENT,
    STAGE_SLOW,
    Detector,
    DetectorConfig,
    Finding,
    StageRun,
    Window,
    summarize,
)
from tracker import events as ev
from tracker.simulator import SimulationConfig, plan_frame

# What an injection kind is detected as (a silent camera may first show as a drop).
MATCHES = {"slow": {STAGE_SLOW}, "errors": {FAILURE_BURST}, "silent": {SILENT, RATE_DROP}}


class WindowDetector(Protocol):
    def close(self, w: Window, p95_ms: Mapping[tuple[str, str], float] | None = None) -> list[Finding]: ...


def planned_runs(cfg: SimulationConfig) -> Iterator[StageRun]:
    """The finished stage runs of the simulator's plan (``tracker.simulator``), in capture order."""
    rng = random.Random(cfg.seed)
    start = cfg.start or datetime(2026, 1, 1, tzinfo=UTC)
    base = start.timestamp()
    cameras = [f"{cfg.camera_prefix}-{i + 1:03d}" for i in range(cfg.cameras)]
    interval = 1.0 / cfg.fps
    for tick in range(int(cfg.fps * cfg.duration_s)):
        for c, camera in enumerate(cameras):
            capture = tick * interval + rng.uniform(0, interval * 0.1) + c * 1e-6
            if cfg.injections.silent(camera, capture):
                continue
            for _, e in plan_frame(rng, cfg, camera, capture, start, "processor/1"):
                if isinstance(e, ev.StageCompleted | ev.StageFailed):
                    yield StageRun(
                        base + capture,
                        camera,
                        e.stage,
                        isinstance(e, ev.StageFailed),
                        e.duration_ms,
                        e.frame_id,
                    )


def run_detector(
    det: WindowDetector, windows: Sequence[Window], p95s: Mapping[int, Mapping[tuple[str, str], float]]
) -> list[Finding]:
    out: list[Finding] = []
    for w in windows:
        out.extend(det.close(w, p95s.get(w.start)))
    return out


@dataclass(frozen=True)
class Episode:
    kind: str
    camera_id: str
    stage: str
    started: int
    detected: float  # event time it was known: the first window's end plus the lateness
    ended: int


def episodes(findings: Iterable[Finding], lateness_s: float) -> list[Episode]:
    """Findings grouped into episodes (their ``started`` key), in order."""
    eps: dict[tuple[str, str, str, int], Episode] = {}
    for f in findings:
        k = (f.kind, f.camera_id, f.stage, f.started)
        if k in eps:
            eps[k] = Episode(*k, eps[k].detected, max(eps[k].ended, f.window_end))
        else:
            eps[k] = Episode(*k, f.window_end + lateness_s, f.window_end)
    return sorted(eps.values(), key=lambda e: (e.started, e.kind, e.camera_id, e.stage))


def score(
    eps: Sequence[Episode], truth: Sequence[Mapping[str, Any]], hours: float, *, slack_s: float
) -> dict[str, float | None]:
    """Precision (episodes that match an injection), recall (injections meant to
    alarm that some episode matched), the median delay from an injection's start
    to its first detection, and episodes matching nothing per hour."""
    spans = [
        (
            t,
            datetime.fromisoformat(t["start"]).timestamp(),
            datetime.fromisoformat(t["end"]).timestamp(),
        )
        for t in truth
    ]

    def match(e: Episode, t: Mapping[str, Any], lo: float, hi: float) -> bool:
        kinds = MATCHES.get(t["kind"])
        if not kinds or e.kind not in kinds or e.camera_id != t["camera_id"]:
            return False
        if t["stage"] and e.stage != t["stage"]:
            return False
        return lo - slack_s <= e.started <= hi + slack_s or (e.started <= lo <= e.ended)

    true_pos = [e for e in eps if any(match(e, t, lo, hi) for t, lo, hi in spans)]
    meant = [(t, lo, hi) for t, lo, hi in spans if t.get("expect")]
    found, delays = 0, []
    for t, lo, hi in meant:
        hits = [e for e in eps if match(e, t, lo, hi)]
        if hits:
            found += 1
            delays.append(max(0.0, min(e.detected for e in hits) - lo))
    return {
        "precision": round(len(true_pos) / len(eps), 4) if eps else (1.0 if meant else None),
        "recall": round(found / len(meant), 4) if meant else None,
        "delay_p50_s": round(statistics.median(delays), 1) if delays else None,
        "false_alarms_per_hour": round((len(eps) - len(true_pos)) / hours, 3) if hours > 0 else None,
        "episodes": len(eps),
    }


class _Episodes:
    """Episodes as the learned detector keeps them (``gap_windows`` normal windows
    may pass inside one), for the detectors it is compared with."""

    def __init__(self, config: DetectorConfig) -> None:
        self.config = config
        self.open: dict[tuple[str, str, str], int] = {}
        self.quiet: dict[tuple[str, str, str], int] = {}

    def finding(
        self, kind: str, cam: str, stage: str, w: Window, sc: float, exp: float, obs: float
    ) -> Finding:
        key = (kind, cam, stage)
        new = key not in self.open
        started = self.open.setdefault(key, w.start)
        return Finding(kind, cam, stage, w.start, w.start + self.config.window_s, started, new, sc, exp, obs)

    def end_window(self, found: list[Finding]) -> None:
        alarmed = {(f.kind, f.camera_id, f.stage) for f in found}
        for k in [k for k in self.open if k not in alarmed]:
            self.quiet[k] = self.quiet.get(k, 0) + 1
            if self.quiet[k] > self.config.gap_windows:
                del self.open[k], self.quiet[k]
        for k in alarmed:
            self.quiet.pop(k, None)


class StaticDetector:
    """Fixed thresholds, the same everywhere (what an operator sets without
    learning): a window is slow when its median stage duration is above
    ``slow_ms``, a burst when more than ``failure_rate`` of its runs failed (at
    least ``min_failures``), and a camera silent when it had no frame in a
    window after having had some."""

    def __init__(
        self,
        config: DetectorConfig | None = None,
        *,
        slow_ms: float = 150.0,
        failure_rate: float = 0.2,
        min_failures: int = 3,
    ) -> None:
        self.config = config or DetectorConfig()
        self.slow_ms, self.failure_rate, self.min_failures = slow_ms, failure_rate, min_failures
        self.seen: set[str] = set()
        self.episodes = _Episodes(self.config)
        self._f = self.episodes.finding

    def close(self, w: Window, p95_ms: Mapping[tuple[str, str], float] | None = None) -> list[Finding]:
        out = []
        for (cam, stage), s in sorted(w.stages.items()):
            if s.median_ms is not None and s.timed >= self.config.min_runs and s.median_ms > self.slow_ms:
                out.append(
                    self._f(STAGE_SLOW, cam, stage, w, s.median_ms / self.slow_ms, self.slow_ms, s.median_ms)
                )
            if s.failures >= self.min_failures and s.failures > self.failure_rate * s.runs:
                out.append(
                    self._f(
                        FAILURE_BURST,
                        cam,
                        stage,
                        w,
                        s.failures / s.runs,
                        self.failure_rate,
                        s.failures / s.runs,
                    )
                )
        for cam in sorted(self.seen | set(w.frames)):
            if cam in self.seen and w.frames.get(cam, 0) == 0:
                out.append(self._f(SILENT, cam, "", w, 1.0, 1.0, 0.0))
        self.seen |= set(w.frames)
        self.episodes.end_window(out)
        return out


class RiverDetector:
    """river's ``anomaly.GaussianScorer`` per series (log median duration and
    failure fraction per camera and stage, frames per camera): a Gaussian over
    the last ``window_size`` windows, the score being its CDF at the value; a
    window is abnormal when the score passes ``threshold`` (one-sided: slower,
    more failures, fewer frames)."""

    def __init__(
        self, config: DetectorConfig | None = None, *, window_size: int = 60, threshold: float = 0.99999
    ) -> None:
        from river import anomaly
        from river.utils.math import norm_cdf

        self._anomaly = anomaly
        self._norm_cdf = norm_cdf
        self.config = config or DetectorConfig()
        self.window_size, self.threshold = window_size, threshold
        self.scorers: dict[tuple[str, ...], Any] = {}
        self.seen: dict[tuple[str, ...], int] = {}
        self.episodes = _Episodes(self.config)
        self._f = self.episodes.finding

    def _score(self, key: tuple[str, ...], x: float, sign: float) -> float | None:
        sc = self.scorers.get(key)
        if sc is None:
            sc = self.scorers[key] = self._anomaly.GaussianScorer(
                window_size=self.window_size, grace_period=self.config.warmup_windows
            )
        n = self.seen.get(key, 0)
        # GaussianScorer's own score is two-sided (2|CDF - 0.5|); one side is wanted
        # (slower, more failures, fewer frames), so its Gaussian's CDF is read.
        s = None
        if n >= self.config.warmup_windows:
            g: Any = sc.gaussian
            mu = float(g.mu)
            sigma_raw = g.sigma
            # A series that never varied has no (or, by rounding, a complex) sigma:
            # a floor of 0.1% of the mean keeps its CDF defined.
            floor = 1e-3 * max(1.0, abs(mu))
            sigma = float(sigma_raw.real if isinstance(sigma_raw, complex) else sigma_raw)
            s = self._norm_cdf((sign * x - mu) / max(sigma, floor))
        sc.learn_one(None, sign * x)
        self.seen[key] = n + 1
        return s

    def close(self, w: Window, p95_ms: Mapping[tuple[str, str], float] | None = None) -> list[Finding]:
        out = []
        c = self.config
        for (cam, stage), s in sorted(w.stages.items()):
            if s.median_ms and s.timed >= c.min_runs:
                sc = self._score(("d", cam, stage), math.log(s.median_ms), 1.0)
                if sc is not None and sc >= self.threshold:
                    out.append(self._f(STAGE_SLOW, cam, stage, w, sc, 0.0, s.median_ms))
            if s.runs:
                sc = self._score(("f", cam, stage), s.failures / s.runs, 1.0)
                if sc is not None and sc >= self.threshold and s.failures >= 3:
                    out.append(self._f(FAILURE_BURST, cam, stage, w, sc, 0.0, s.failures / s.runs))
        cams = {k[1] for k in self.scorers if k[0] == "c"} | set(w.frames)
        for cam in sorted(cams):
            n = w.frames.get(cam, 0)
            sc = self._score(("c", cam), float(n), -1.0)
            if sc is not None and sc >= self.threshold:
                out.append(self._f(SILENT if n == 0 else RATE_DROP, cam, "", w, sc, 0.0, float(n)))
        self.episodes.end_window(out)
        return out


def detectors(config: DetectorConfig) -> dict[str, WindowDetector]:
    """The approaches compared, by the name their keys carry."""
    out: dict[str, WindowDetector] = {"learned": Detector(config), "static": StaticDetector(config)}
    try:
        out["river"] = RiverDetector(config)
    except ImportError:  # river is in the bench extra
        pass
    return out


def evaluate(
    runs: Iterable[StageRun],
    truth: Sequence[Mapping[str, Any]],
    config: DetectorConfig,
    hours: float,
) -> dict[str, dict[str, float | None]]:
    """Every approach's score on the same windows (all of them: the last may be cut short)."""
    windows, p95s = summarize(runs, config.window_s)
    out = {}
    for name, det in detectors(config).items():
        eps = episodes(run_detector(det, windows, p95s), config.lateness_s)
        out[name] = score(eps, truth, hours, slack_s=config.window_s + config.lateness_s)
    return out
