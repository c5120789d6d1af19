"""Learned anomaly detection over closed event-time windows (pure: no I/O).

The detector sees the stream as a sequence of *closed windows* of the frames'
capture time (``frame_timestamp``): per camera and stage the runs, failures and
median duration of the window, and per camera the frames that reached
processing. A window is closed once the watermark (the capture time every
partition has reached) has passed its end by the allowed lateness; windows are
processed in time order, and each is judged against the baselines learned from
the windows before it, then learned from. What it reports therefore depends
only on the events, not on the order they arrived in, and a rebuild that closes
the same windows finds the same anomalies.

Baselines are robust and exponentially weighted, per camera and stage and per
camera, so each keeps its own normal and a gradual drift is followed rather
than flagged:

- duration: the EWMA of the log of the window median, and the EWMA of its
  absolute deviation (a MAD-like spread); a window is slow when its median is
  both ``z_threshold`` spreads and ``min_ratio`` times above the learned one;
- failures: an exponentially weighted failure rate; a window is a burst when
  its failures are improbable under that rate (Poisson tail) and at least
  ``burst_ratio`` times it;
- frame rate: the EWMA of frames per window and its absolute deviation; a
  window is a drop when it falls ``z_threshold`` spreads below and under half
  the learned rate (no frame at all: the camera is silent).

A window is learned from with a bounded step (Huber: at most ``clip`` spreads
from the baseline), and an abnormal one moves the baseline but not its spread,
so a lasting change becomes the new normal after a while (some tens of windows)
instead of at once, and an anomaly does not widen what counts as normal.
Consecutive abnormal windows of one key make one *episode*; the store keeps one
row per episode, and one per frame whose stage ran beyond the learned p95 in a
slow window.

The state is plain JSON (floats round-trip exactly), checkpointed with the
projection.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

STAGE_SLOW = "stage_slow"
FAILURE_BURST = "failure_burst"
RATE_DROP = "frame_rate_drop"
SILENT = "camera_silent"
SLOW_FRAME = "slow_frame"
#: Kinds a window can have (an alarm); ``slow_frame`` rows are the frames of a slow window.
WINDOW_KINDS = (STAGE_SLOW, FAILURE_BURST, RATE_DROP, SILENT)
KINDS = (*WINDOW_KINDS, SLOW_FRAME)


@dataclass(frozen=True)
class DetectorConfig:
    window_s: int = 10
    lateness_s: int = 10
    warmup_windows: int = 12  # windows a key learns from before it may alarm
    alpha: float = 0.05  # EWMA weight of one window once warmed up
    damping: float = 10.0  # a failure burst's window is learned from this many times more slowly
    z_threshold: float = 5.0
    clip: float = 3.0  # a window counts at most this many spreads from the baseline when learned
    min_ratio: float = 1.5  # a slow window's median is at least this many times the learned one
    min_runs: int = 5  # fewer timed runs in a window say nothing about its median
    burst_score: float = 6.0  # -log10 of the Poisson tail of a failure burst
    burst_ratio: float = 3.0
    min_spread: float = 0.05  # floor of the log-duration spread (5%)
    gap_windows: int = 1  # normal windows an episode may span and go on
    idle_s: int = 300  # a partition this far behind the most advanced one does not hold the watermark

    def to_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> DetectorConfig:
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class StageWindow:
    """One camera and stage in one window: finished runs, failed ones, and the
    median duration of the completed ones (``timed`` of them)."""

    runs: int
    failures: int
    timed: int
    median_ms: float | None


@dataclass(frozen=True)
class Window:
    """Everything the detector reads of one closed window (start in epoch seconds)."""

    start: int
    stages: Mapping[tuple[str, str], StageWindow]
    frames: Mapping[str, int]


@dataclass(frozen=True)
class Finding:
    """One key found abnormal in one window, and the episode it belongs to.

    ``started`` is the start of the episode's first window; ``new`` says
    whether this window opened it. For a slow stage, ``frame_threshold_ms`` is
    the learned p95 beyond which a frame of the window is reported too."""

    kind: str
    camera_id: str
    stage: str
    window_start: int
    window_end: int
    started: int
    new: bool
    score: float
    expected: float
    observed: float
    frame_threshold_ms: float | None = None


@dataclass
class _Ewm:
    """An exponentially weighted mean and mean absolute deviation; a plain
    running mean while fewer than ``1/alpha`` values were seen."""

    n: int = 0
    mean: float = 0.0
    dev: float = 0.0

    def update(self, x: float, alpha: float, clip: float | None = None, *, spread: bool = True) -> None:
        """Learn ``x``; beyond ``clip`` from the mean it counts as if at ``clip``
        (Huber), so an outlier moves the baseline by a bounded step. An abnormal
        value (``spread=False``) moves the mean only: were it to widen the spread,
        a lasting anomaly would soon stop looking like one."""
        self.n += 1
        a = max(alpha, 1.0 / self.n)
        if self.n == 1:
            self.mean, self.dev = x, 0.0
            return
        if clip is not None:
            x = min(max(x, self.mean - clip), self.mean + clip)
        if spread:
            self.dev += a * (abs(x - self.mean) - self.dev)
        self.mean += a * (x - self.mean)

    def to_json(self) -> list[float]:
        return [self.n, self.mean, self.dev]

    @classmethod
    def from_json(cls, v: list[float]) -> _Ewm:
        return cls(int(v[0]), float(v[1]), float(v[2]))


@dataclass
class _StageState:
    median: _Ewm = field(default_factory=_Ewm)  # of log(median ms)
    windows: int = 0
    runs: float = 0.0  # exponentially weighted runs and failures
    failures: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"m": self.median.to_json(), "w": self.windows, "r": self.runs, "f": self.failures}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> _StageState:
        return cls(_Ewm.from_json(d["m"]), int(d["w"]), float(d["r"]), float(d["f"]))


def poisson_tail_score(k: int, lam: float) -> float:
    """``-log10 P(X >= k)`` for X ~ Poisson(lam): how surprising k failures are."""
    if k <= 0:
        return 0.0
    lam = max(lam, 1e-9)
    # Sum the tail's terms from k up in log space (it converges fast past lam).
    log_term = -lam + k * math.log(lam) - math.lgamma(k + 1)
    total, term = 0.0, log_term
    m = k
    while True:
        total += math.exp(term - log_term)
        m += 1
        term += math.log(lam) - math.log(m)
        if term - log_term < -40 or m > k + 10_000:
            break
    return -(log_term + math.log(total)) / math.log(10)


def _key(*parts: str) -> str:
    return "|".join(parts)


def _split(key: str) -> tuple[str, str]:
    cam, stage = key.rsplit("|", 1)
    return cam, stage


# -- windows from stage runs (what the store computes in SQL) -----------------


@dataclass(frozen=True)
class StageRun:
    """One finished stage run as the detector sees it (capture time in epoch seconds)."""

    frame_ts: float
    camera_id: str
    stage: str
    failed: bool
    duration_ms: float | None
    frame_id: str = ""


def _quantile(sorted_values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (PostgreSQL's percentile_cont)."""
    pos = q * (len(sorted_values) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def summarize(
    runs: Iterable[StageRun], window_s: int
) -> tuple[list[Window], dict[int, dict[tuple[str, str], float]]]:
    """The windows (in time order, empty ones between included) and each
    window's p95 per camera and stage, of finished stage runs; the frames of a
    camera are the distinct frames among its runs."""
    by: dict[int, dict[tuple[str, str], list[StageRun]]] = {}
    frames: dict[int, dict[str, set[str]]] = {}
    for r in runs:
        w = int(r.frame_ts // window_s) * window_s
        by.setdefault(w, {}).setdefault((r.camera_id, r.stage), []).append(r)
        frames.setdefault(w, {}).setdefault(r.camera_id, set()).add(r.frame_id or f"{r.frame_ts}")
    if not by:
        return [], {}
    out, p95s = [], {}
    for w in range(min(by), max(by) + window_s, window_s):
        stages, p95 = {}, {}
        for key, rs in by.get(w, {}).items():
            d = sorted(r.duration_ms for r in rs if not r.failed and r.duration_ms is not None)
            stages[key] = StageWindow(
                len(rs), sum(r.failed for r in rs), len(d), _quantile(d, 0.5) if d else None
            )
            if d:
                p95[key] = _quantile(d, 0.95)
        out.append(Window(w, stages, {c: len(f) for c, f in frames.get(w, {}).items()}))
        p95s[w] = p95
    return out, p95s


def watermark(marks: Iterable[float], idle_s: float) -> float | None:
    """The capture time every live partition has reached: the least of the
    partitions' latest, leaving out those ``idle_s`` behind the most advanced
    (a partition with no traffic must not hold every window open)."""
    values = list(marks)
    if not values:
        return None
    top = max(values)
    return min(v for v in values if v >= top - idle_s)


def closable(next_start: int, mark: float | None, config: DetectorConfig) -> list[int]:
    """The starts of the windows from ``next_start`` that the watermark has closed."""
    if mark is None:
        return []
    last = int((mark - config.lateness_s) // config.window_s) * config.window_s - config.window_s
    return list(range(next_start, last + 1, config.window_s))


class Detector:
    """The learned baselines and the open episodes; :meth:`close` judges one window."""

    def __init__(self, config: DetectorConfig | None = None) -> None:
        self.config = config or DetectorConfig()
        self.stages: dict[str, _StageState] = {}
        self.cameras: dict[str, _Ewm] = {}
        self.open: dict[str, int] = {}  # "kind|camera|stage" -> episode start
        self.quiet: dict[str, int] = {}  # open episodes' normal windows since their last abnormal one
        self.p95: dict[str, _Ewm] = {}  # log of each camera and stage's window p95 (frame threshold)

    # -- persistence ---------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {
            "config": self.config.to_json(),
            "stages": {k: v.to_json() for k, v in sorted(self.stages.items())},
            "cameras": {k: v.to_json() for k, v in sorted(self.cameras.items())},
            "p95": {k: v.to_json() for k, v in sorted(self.p95.items())},
            "open": dict(sorted(self.open.items())),
            "quiet": dict(sorted(self.quiet.items())),
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Detector:
        det = cls(DetectorConfig.from_json(d.get("config", {})))
        det.stages = {k: _StageState.from_json(v) for k, v in d.get("stages", {}).items()}
        det.cameras = {k: _Ewm.from_json(v) for k, v in d.get("cameras", {}).items()}
        det.p95 = {k: _Ewm.from_json(v) for k, v in d.get("p95", {}).items()}
        det.open = {k: int(v) for k, v in d.get("open", {}).items()}
        det.quiet = {k: int(v) for k, v in d.get("quiet", {}).items()}
        return det

    # -- judging one window --------------------------------------------------

    def close(self, w: Window, p95_ms: Mapping[tuple[str, str], float] | None = None) -> list[Finding]:
        """Judge window ``w`` against what was learned before it, then learn
        from it. ``p95_ms`` (optional): each camera and stage's p95 in the window,
        learned as the threshold beyond which a frame of a slow window is reported."""
        c = self.config
        found: list[Finding] = []
        end = w.start + c.window_s
        known = {_split(k) for k in self.stages}
        for cam, stage in sorted(set(w.stages) | known):
            key = _key(cam, stage)
            st = self.stages.setdefault(key, _StageState())
            obs = w.stages.get((cam, stage))
            slow = burst = False
            if obs is not None and obs.timed >= c.min_runs and obs.median_ms and obs.median_ms > 0:
                x = math.log(obs.median_ms)
                spread = max(st.median.dev * 1.25, c.min_spread)
                warm = st.median.n >= c.warmup_windows
                if warm:
                    z = (x - st.median.mean) / spread
                    ratio = math.exp(x - st.median.mean)
                    if z >= c.z_threshold and ratio >= c.min_ratio:
                        slow = True
                        p95 = self.p95.get(key)
                        thr = math.exp(p95.mean) if p95 and p95.n else math.exp(st.median.mean) * c.min_ratio
                        found.append(
                            self._finding(
                                STAGE_SLOW,
                                cam,
                                stage,
                                w.start,
                                end,
                                z,
                                math.exp(st.median.mean),
                                obs.median_ms,
                                thr,
                            )
                        )
                st.median.update(x, c.alpha, c.clip * spread if warm else None, spread=not slow)
                if p95_ms and (cam, stage) in p95_ms and p95_ms[(cam, stage)] > 0 and not slow:
                    p95 = self.p95.setdefault(key, _Ewm())
                    clip = c.clip * max(p95.dev * 1.25, c.min_spread) if p95.n >= c.warmup_windows else None
                    p95.update(math.log(p95_ms[(cam, stage)]), c.alpha, clip)
            if obs is not None and obs.runs > 0:
                if st.windows >= c.warmup_windows and st.runs > 0:
                    # A prior of one failure in 50 runs keeps a never-failing stage from
                    # alarming on its first failure.
                    rate = (st.failures + 0.02 * 50) / (st.runs + 50)
                    score = poisson_tail_score(obs.failures, obs.runs * rate)
                    if score >= c.burst_score and obs.failures >= c.burst_ratio * rate * obs.runs:
                        burst = True
                        found.append(
                            self._finding(
                                FAILURE_BURST, cam, stage, w.start, end, score, rate, obs.failures / obs.runs
                            )
                        )
                a = max(c.alpha / (c.damping if burst else 1.0), 1.0 / (st.windows + 1))
                st.runs += a * (obs.runs - st.runs)
                st.failures += a * (obs.failures - st.failures)
                st.windows += 1
        for cam in sorted(set(w.frames) | set(self.cameras)):
            n = w.frames.get(cam, 0)
            ew = self.cameras.setdefault(cam, _Ewm())
            drop = False
            spread = max(ew.dev * 1.25, math.sqrt(ew.mean) * 0.5, 1.0)
            warm = ew.n >= c.warmup_windows
            if warm and ew.mean > 0:
                z = (ew.mean - n) / spread
                if z >= c.z_threshold and n <= 0.5 * ew.mean:
                    drop = True
                    kind = SILENT if n == 0 else RATE_DROP
                    found.append(self._finding(kind, cam, "", w.start, end, z, ew.mean, float(n)))
            ew.update(float(n), c.alpha, c.clip * spread if warm else None, spread=not drop)
        # An episode ends once its key has been normal for more than gap_windows
        # windows in a row (one normal window inside a slowdown does not split it).
        alarmed = {_key(f.kind, f.camera_id, f.stage) for f in found}
        for k in [k for k in self.open if k not in alarmed]:
            self.quiet[k] = self.quiet.get(k, 0) + 1
            if self.quiet[k] > c.gap_windows:
                del self.open[k], self.quiet[k]
        for k in alarmed:
            self.quiet.pop(k, None)
        return found

    def _finding(
        self,
        kind: str,
        cam: str,
        stage: str,
        start: int,
        end: int,
        score: float,
        expected: float,
        observed: float,
        thr: float | None = None,
    ) -> Finding:
        key = _key(kind, cam, stage)
        new = key not in self.open
        started = self.open.setdefault(key, start)
        return Finding(kind, cam, stage, start, end, started, new, round(score, 6), expected, observed, thr)

    def run(self, windows: Iterable[Window]) -> list[Finding]:
        """Close each window in order; every finding (a convenience for tests and the bench)."""
        out: list[Finding] = []
        for w in windows:
            out.extend(self.close(w))
        return out
