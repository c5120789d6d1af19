"""``python -m bench`` (``make bench``): run the benchmarks against the local stack.

    BENCH_SCALE=small python -m bench          # every scenario, about two minutes
    python -m bench                            # the default scale: the figures
    python -m bench --only limits,ingest       # a subset (the other keys stay null)
    python -m bench --out /tmp/b --no-plot     # elsewhere than bench/results/

Writes ``<out>/latest.json`` (every key, the spread of the repetitions, targets,
per-run details) and ``<out>/latest.png``, prints a table; a subset (``--only``)
writes ``<out>/partial.json`` instead. ``--only profile`` runs the workers under
py-spy and writes ``<out>/profile-*.txt``. Exit status 1 when a
scenario failed (its keys are null and ``notes`` says why).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import report, workers
from bench.infra import log
from bench.scales import SCALES, scale_from_env
from bench.scenarios import DERIVED, EXTRA, KEYS, REGISTRY, SCENARIOS, Bench, derive
from bench.stack import Stack
from bench.workers import ROOT
from tracker.config import Settings

ATTEMPTS = 4  # per scenario, when the stack restarts under it


async def run(args: argparse.Namespace) -> tuple[dict[str, Any], bool]:
    scale = scale_from_env(args.scale)
    for item in args.set:
        name, _, value = item.partition("=")
        if name not in scale.__dataclass_fields__ or name == "name":
            raise SystemExit(f"--set {item}: no such scale field")
        kind = type(getattr(scale, name))
        scale = scale.with_overrides(**{name: kind(float(value)) if kind is int else kind(value)})
    only = [s for s in (args.only or ",".join(SCENARIOS)).split(",") if s]
    unknown = set(only) - set(SCENARIOS) - set(EXTRA)
    if unknown:
        raise SystemExit(f"unknown scenario(s) {sorted(unknown)}; known: {', '.join(SCENARIOS + EXTRA)}")
    base = Settings.from_env()
    workdir = Path(tempfile.mkdtemp(prefix="bench-"))
    stack = Stack(base, workdir)
    bench = Bench(stack, scale, out_dir=args.out)
    started = datetime.now(UTC)
    t0 = time.monotonic()
    failed = False
    durations: dict[str, float] = {}
    log(f"scale {scale.name}: scenarios {', '.join(only)}; worker logs in {workdir}")
    plan = [REGISTRY[name] for name in SCENARIOS + EXTRA if name in only]  # in the registry's order
    await stack.start()
    try:
        for sc in plan:
            if sc.setup:
                await sc.run(bench)
        if any(sc.needs_source for sc in plan):
            await bench.preload_all()
        for sc in plan:
            if sc.setup:
                continue
            name = sc.name
            log(f"--- {name}")
            ts = time.monotonic()
            for attempt in range(1, ATTEMPTS + 1):
                before = await stack.services_fingerprint()
                error: Exception | None = None
                try:
                    await bench.background_load(name)
                    await sc.run(bench)
                except Exception as e:  # one scenario's failure must not lose the others
                    error = e
                after = await stack.services_fingerprint()
                if after == before:
                    break
                # PostgreSQL or Kafka restarted meanwhile (someone's fault test): the
                # figures saw an outage. Once the stack has settled, measure again.
                log(f"{name}: the stack restarted during attempt {attempt}; running it again once it settles")
                bench.details.setdefault("restarts", []).append({"scenario": name, "attempt": attempt})
                await stack.wait_stable()
            if error is not None:
                failed = True
                bench.notes[name] = f"failed: {type(error).__name__}: {str(error)[:800]}"
                log(f"{name} FAILED: {type(error).__name__}: {error}")
            durations[name] = round(time.monotonic() - ts, 1)
            log(f"{name} took {durations[name]:.0f}s")
    finally:
        try:
            await bench.cleanup_sources()
            await stack.drop_own()
        finally:
            await stack.close()
    bench.derive()
    result: dict[str, Any] = {
        "scale": scale.name,
        "started_at": started.isoformat(),
        "duration_s": round(time.monotonic() - t0, 1),
        "scenarios_run": only,
        "scenario_durations_s": durations,
        "src_events": bench.src.events if bench.src else None,
    }
    for k in KEYS:
        result[k.name] = bench.figures.get(k.name)
    for name, note in bench.notes.items():
        if any(x.name == name for x in KEYS):
            result[f"{name}_note"] = note
    result["targets"] = report.targets(result)
    result["spread"] = bench.spread
    result["notes"] = bench.notes
    result["scale_settings"] = scale.__dict__
    result["details"] = bench.details
    if not args.keep_logs:
        shutil.rmtree(workdir, ignore_errors=True)
    return result, failed


def merge(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """``old`` (a full run) with the scenarios that ``new`` ran replaced by ``new``'s."""
    # A scenario that failed again keeps its earlier figures.
    failed = [s for s in new["scenarios_run"] if s in new.get("notes", {})]
    ran = [s for s in new["scenarios_run"] if s in SCENARIOS and s not in failed]
    for name in ran:
        # A scenario added since the full run (sdk, say) is part of it once it has run.
        if name not in old.setdefault("scenarios_run", []):
            old["scenarios_run"].append(name)
        for key in REGISTRY[name].keys:
            if key in DERIVED:  # ratios are recomputed below
                continue
            old[key] = new.get(key)
            old.pop(f"{key}_note", None)
            old.setdefault("notes", {}).pop(key, None)
            if f"{key}_note" in new:
                old[f"{key}_note"] = new[f"{key}_note"]
                old["notes"][key] = new[f"{key}_note"]
            old.setdefault("spread", {}).pop(key, None)
            if key in new.get("spread", {}):
                old["spread"][key] = new["spread"][key]
        old.setdefault("details", {})[name] = new.get("details", {}).get(name, {})
        old.setdefault("notes", {}).pop(name, None)
        if name in new.get("notes", {}):
            old["notes"][name] = new["notes"][name]
        old.setdefault("scenario_durations_s", {})[name] = new.get("scenario_durations_s", {}).get(name)
    for k in DERIVED:
        old.pop(f"{k}_note", None)
        old.setdefault("notes", {}).pop(k, None)
    for k, note in derive(old, old.setdefault("details", {})).items():
        old[f"{k}_note"] = note
        old["notes"][k] = note
    old["targets"] = report.targets(old)
    old.setdefault("updates", []).append(
        {"scenarios": ran, "failed": failed, "started_at": new["started_at"], "duration_s": new["duration_s"]}
    )
    return old


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--scale", choices=sorted(SCALES), help="default: $BENCH_SCALE, else 'default'")
    ap.add_argument("--only", help=f"comma-separated scenarios ({', '.join(SCENARIOS)})")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results", help="results folder")
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument(
        "--keep-logs", action="store_true", help="keep the workers' logs (their folder is printed)"
    )
    ap.add_argument("--markdown", action="store_true", help="also print the README table")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a size of the scale (bench/scales.py), e.g. --set events=200000",
    )
    ap.add_argument(
        "--update",
        action="store_true",
        help="with --only: rerun those scenarios and update their figures in <out>/latest.json",
    )
    ap.add_argument(
        "--code",
        type=Path,
        help="run the workers from this checkout instead (e.g. a git worktree with a patch applied)",
    )
    args = ap.parse_args(argv)
    if args.code:
        workers.set_code_root(args.code)
    result, failed = asyncio.run(run(args))
    full = set(SCENARIOS) <= set(result["scenarios_run"])
    if args.update and not full and (args.out / "latest.json").exists():
        result = merge(json.loads((args.out / "latest.json").read_text()), result)
        full = set(SCENARIOS) <= set(result["scenarios_run"])
    # A subset (--only) must not overwrite the figures of a full run.
    path = report.write_json(result, args.out, "latest.json" if full else "partial.json")
    png = None if args.no_plot or not full else report.plot(result, args.out)
    if full and not args.no_plot:
        report.plot_soak(result, args.out)
        report.plot_scale(result, args.out)
    print(report.table(result))
    if args.markdown:
        print()
        print(report.markdown(result))
    print(f"\nwrote {path}" + (f" and {png}" if png else "") + f" ({result['duration_s']:.0f}s)")
    missing = report.missing_keys(result)
    if missing and full:
        print(f"keys without a value: {', '.join(missing)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
