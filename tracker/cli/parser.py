"""The ``tracker`` argument parser and its argument types.

A bad argument prints one line (``tracker <command>: error: ...``) and exits 2.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from pathlib import Path
from typing import NoReturn

from tracker import __version__
from tracker.errors import EXIT_USAGE


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


def _positive_float(text: str) -> float:
    value = _float(text)
    if not value > 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive number")
    return value


def _non_negative_float(text: str) -> float:
    value = _float(text)
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be zero or positive")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def _rate(text: str) -> float:
    value = _non_negative_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be between 0 and 1")
    return value


def _duration(text: str) -> float:
    """``30d`` / ``12h`` / ``90m`` → hours."""
    units = {"d": 24.0, "h": 1.0, "m": 1 / 60}
    try:
        value, unit = float(text[:-1]), text[-1]
        factor = units[unit]
    except (ValueError, KeyError, IndexError):
        raise argparse.ArgumentTypeError(f"{text!r}: expected a number and a unit (d, h, m)") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be positive")
    return value * factor


def _timestamp(text: str) -> datetime:
    try:
        ts = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO 8601 date or time") from None
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="tracker", description="Frame tracking for the Detektor video pipeline.")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    sub.add_parser("config", help="print the effective settings (secrets masked)")
    m = sub.add_parser("migrate", help="apply the sql/ migrations")
    m.add_argument("--json", action="store_true")
    t = sub.add_parser("topics", help="create the tracker's topics (camera, processing, dlq) if missing")
    t.add_argument("--json", action="store_true")

    s = sub.add_parser("simulate", help="simulated camera and processor services")
    s.add_argument("--cameras", type=_positive_int, default=3)
    s.add_argument("--fps", type=_positive_float, default=5.0)
    s.add_argument("--duration", type=_positive_float, default=5.0, help="seconds of video")
    s.add_argument("--failure-rate", type=_rate, default=0.05)
    s.add_argument("--retry-rate", type=_rate, default=0.02)
    s.add_argument("--seed", type=int, default=1)
    s.add_argument("--fast", action="store_true", help="publish as fast as Kafka takes it")
    s.add_argument("--ids-out", type=Path, help="write every published event id to this file")
    s.add_argument(
        "--inject",
        action="append",
        default=[],
        metavar="SPEC",
        help="inject a labelled anomaly (repeatable): slow@cam-001/detect:120+60x3, "
        "errors@cam-001/analyze:120+60x0.5, silent@cam-001:120+60, drift@cam-001/notify:0+1800x2 "
        "(seconds of simulated time: START+DURATION)",
    )
    s.add_argument("--truth-out", type=Path, help="write the injections' ground truth (JSON) to this file")
    s.add_argument(
        "--start", type=_timestamp, metavar="TIME", help="capture time of the first frame (default: now)"
    )
    s.add_argument("--json", action="store_true")

    c = sub.add_parser("consume", help="event-store consumer worker")
    c.add_argument("--until-idle", action="store_true", help="exit once caught up")
    c.add_argument(
        "--inline-projection",
        action="store_true",
        help="also keep the frames projection, in each batch's own transaction "
        "(then do not run `tracker project`)",
    )
    c.add_argument("--metrics-port", type=_port, default=9464, help="0 disables /metrics")
    c.add_argument("--json", action="store_true")

    pr = sub.add_parser("project", help="projection worker (frame_metadata, processing_stages, rollups)")
    pr.add_argument("--until-idle", action="store_true", help="exit once caught up")
    pr.add_argument("--metrics-port", type=_port, default=9465, help="0 disables /metrics")
    pr.add_argument("--json", action="store_true")

    rp = sub.add_parser("replay", help="rebuild a projection with no downtime")
    rp.add_argument(
        "--projection",
        default="frames",
        choices=["frames"],
        help="frames = frame_metadata + processing_stages + hourly rollups",
    )
    rp.add_argument("--source", default="topics", choices=["topics", "store"])
    rp.add_argument(
        "--since",
        type=_timestamp,
        metavar="TIME",
        help="with --source store: recompute frames captured since TIME (ISO 8601, UTC "
        "if no offset), copy older ones unchanged",
    )
    rp.add_argument("--json", action="store_true")

    j = sub.add_parser("journey", help="the journey of one frame")
    j.add_argument("frame_id")
    j.add_argument("--json", action="store_true")

    sl = sub.add_parser("slow", help="frames slower than a threshold")
    sl.add_argument("--threshold-ms", type=_non_negative_float, default=1000.0)
    sl.add_argument("--hours", type=_positive_float, default=1.0)
    sl.add_argument("--camera", help="only this camera")
    sl.add_argument("--limit", type=_positive_int, default=20)
    sl.add_argument("--json", action="store_true")

    f = sub.add_parser("failures", help="failure analysis")
    f.add_argument("--hours", type=_positive_float, default=24.0)
    f.add_argument("--json", action="store_true")

    an = sub.add_parser("anomalies", help="what the learned detector found abnormal")
    an.add_argument("--hours", type=_positive_float, default=1.0)
    an.add_argument("--limit", type=_positive_int, default=100)
    an.add_argument("--json", action="store_true")

    st = sub.add_parser("stats", help="per-camera and per-stage statistics")
    st.add_argument("--hours", type=_positive_float, default=1.0)
    st.add_argument("--json", action="store_true")

    ss = sub.add_parser("status", help="lag, checkpoints, DLQ, rebuilds")
    ss.add_argument("--json", action="store_true")

    rt = sub.add_parser("retention", help="drop whole partitions older than a cut-off")
    rt.add_argument(
        "--older-than",
        type=_duration,
        required=True,
        metavar="AGE",
        help="e.g. 30d or 12h (rounded down to whole UTC days)",
    )
    rt.add_argument("--json", action="store_true")

    sv = sub.add_parser("serve", help="HTTP API, web UI (/ui/), /metrics, /healthz, /readyz")
    sv.add_argument("--host", help="bind address (default TRACKER_API_HOST, 127.0.0.1)")
    sv.add_argument("--port", type=_port, help="default TRACKER_API_PORT, 8080")
    sv.add_argument(
        "--grafana-url",
        default="http://localhost:3000",
        help="Grafana that the web UI's frame pages link to (default http://localhost:3000)",
    )

    d = sub.add_parser("dlq", help="dead letters")
    dsub = d.add_subparsers(dest="dlq_command", required=True, parser_class=_Parser)
    dl = dsub.add_parser("list", help="list dead letters")
    dl.add_argument("--limit", type=_positive_int, default=100)
    dl.add_argument("--json", action="store_true")
    dr = dsub.add_parser("replay", help="re-publish dead letters to their original topic")
    sel = dr.add_mutually_exclusive_group(required=True)
    sel.add_argument("--all", action="store_true")
    sel.add_argument(
        "--offset",
        action="append",
        metavar="PARTITION:OFFSET",
        help="one dead letter by its DLQ position (repeatable)",
    )
    return p
