"""latest.json, the table on stdout, and the PNG plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.scenarios.keys import KEYS, NULLABLE, check_target


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        if abs(v) >= 10:
            return f"{v:.1f}"
        return f"{v:.2f}"
    return str(v)


def targets(figures: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k in KEYS:
        if k.target:
            out[k.name] = {
                "goal": k.target,
                "value": figures.get(k.name),
                "met": check_target(figures.get(k.name), k.target),
            }
    return out


def table(result: dict[str, Any]) -> str:
    spread = result.get("spread", {})
    rows = [("key", "value", "unit", "spread (min..max, ±%)", "target", "")]
    for k in KEYS:
        v = result.get(k.name)
        s = spread.get(k.name)
        sp = ""
        if s and s.get("median") is not None and len(s.get("reps", [])) > 1:
            sp = f"{_fmt(s['min'])}..{_fmt(s['max'])} ±{s['spread_pct']}%"
        met = check_target(v, k.target)
        mark = "" if met is None else ("met" if met else "MISSED")
        rows.append((k.name, _fmt(v), k.unit, sp, k.target, mark))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for i, r in enumerate(rows):
        lines.append(
            "  ".join(c.ljust(widths[j]) if j != 1 else c.rjust(widths[j]) for j, c in enumerate(r)).rstrip()
        )
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    notes = result.get("notes", {})
    for k, n in notes.items():
        lines.append(f"note {k}: {n}")
    return "\n".join(lines)


def markdown(result: dict[str, Any]) -> str:
    """The short table for the README."""
    f = result
    env = (
        f"commit {f.get('git_commit')}, scale {f.get('scale')}, {f.get('cpu_count')} CPUs, "
        f"Kafka {f.get('kafka_version')}, PostgreSQL {f.get('postgres_version')}, "
        f"{f.get('partitions')} partitions per topic"
    )
    lines = [env, "", "| figure | value | target |", "| --- | ---: | --- |"]
    for k in KEYS:
        if k.scenario == "environment":
            continue
        v = f.get(k.name)
        met = check_target(v, k.target)
        t = k.target + ("" if met is None else (" ✓" if met else " ✗"))
        lines.append(f"| `{k.name}` ({k.unit}) | {_fmt(v)} | {t} |")
    return "\n".join(lines)


def write_json(result: dict[str, Any], out_dir: Path, name: str = "latest.json") -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / name
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2, sort_keys=False, default=str) + "\n")
    tmp.replace(path)
    return path


def missing_keys(result: dict[str, Any]) -> list[str]:
    """Keys that are absent, or null without a note saying why."""
    bad = []
    for k in KEYS:
        if k.name not in result:
            bad.append(k.name)
        elif result[k.name] is None and not (k.name in NULLABLE and result.get(f"{k.name}_note")):
            bad.append(k.name)
    return bad


def _pyplot() -> Any:
    """matplotlib's pyplot drawing to files, or None without matplotlib (the bench extra)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def _save(plt: Any, fig: Any, path: Path, commit: Any) -> Path:
    fig.suptitle(f"detektor-tracker bench, commit {commit}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot(result: dict[str, Any], out_dir: Path) -> Path | None:
    """Throughput bars (with min..max) and freshness over the run, as a PNG."""
    plt = _pyplot()
    if plt is None:
        return None
    spread = result.get("spread", {})
    names = [
        "limit_consume_eps", "limit_decode_eps", "limit_copy_rows_s", "naive_eps",
        "naive_commit_each_eps", "peer_quix_eps", "peer_connect_eps",
        "store_eps", "project_eps", "two_groups_eps", "pipeline_eps", "replay_topics_eps", "replay_store_eps",
    ]  # fmt: skip
    names = [n for n in names if result.get(n)]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5))
    vals = [result[n] for n in names]
    lo = [max(0.0, result[n] - (spread.get(n, {}).get("min") or result[n])) for n in names]
    hi = [max(0.0, (spread.get(n, {}).get("max") or result[n]) - result[n]) for n in names]

    def color(name: str) -> str:
        if name.startswith("limit_"):
            return "#999999"
        if name.startswith("replay_"):
            return "#66aa77"
        return {
            "naive_eps": "#cc6666",
            "naive_commit_each_eps": "#cc6666",
            "peer_quix_eps": "#cc9966",
            "peer_connect_eps": "#cc9966",
        }.get(name, "#4477aa")

    ax1.barh(names, vals, xerr=[lo, hi], color=[color(n) for n in names])
    ax1.axvline(30000, color="black", linestyle="--", linewidth=1)
    ax1.text(30000, -0.6, " 30k target", fontsize=8)
    ax1.set_xscale("log")
    ax1.set_xlabel("events/s (log), median of repetitions, bars = min..max")
    ax1.invert_yaxis()
    ax1.set_title(f"Throughput ({result.get('scale')} scale, {result.get('src_events', '?')} events)")
    series = result.get("details", {}).get("freshness", {}).get("series") or []
    if series:
        ax2.scatter([t for t, _ in series], [ms for _, ms in series], s=4, alpha=0.6)
        for key, style in (("fresh_p50_ms", ":"), ("fresh_p99_ms", "--")):
            if result.get(key) is not None:
                ax2.axhline(result[key], linestyle=style, color="black", linewidth=1)
                ax2.text(0, result[key], f" {key} {result[key]:.0f}", fontsize=8, va="bottom")
        ax2.axhline(1000, color="red", linewidth=1)
        ax2.set_xlabel("seconds into the run")
        ax2.set_ylabel("publish -> visible in frame_metadata (ms)")
        ax2.set_title(f"Freshness at {result.get('fresh_offered_eps') or '?'} events/s offered")
    return _save(plt, fig, out_dir / "latest.png", result.get("git_commit"))


def _commit(result: dict[str, Any], scenario: str) -> Any:
    """The commit a scenario ran at: its own when an --update run recorded one."""
    return result.get("details", {}).get(scenario, {}).get("git_commit") or result.get("git_commit")


def plot_soak(result: dict[str, Any], out_dir: Path) -> Path | None:
    """The soak's samples over time: lag, freshness p99 per interval, RSS per worker."""
    samples = result.get("details", {}).get("soak", {}).get("samples") or []
    if not samples:
        return None
    plt = _pyplot()
    if plt is None:
        return None
    t = [x["t"] / 60.0 for x in samples]
    fig, (ax1, ax2, ax3) = plt.subplots(3, 1, figsize=(10, 8), sharex=True)
    ax1.plot(t, [x["lag"] for x in samples], color="#4477aa")
    ax1.set_ylabel("lag (records)")
    ax1.set_title(
        f"Soak: {result.get('soak_eps') or '?'} events/s for {result.get('soak_minutes') or '?'} min "
        f"({result.get('details', {}).get('soak', {}).get('mode', '?')})"
    )
    fresh = [(a, x["fresh_p99_ms"]) for a, x in zip(t, samples, strict=True) if x["fresh_p99_ms"] is not None]
    ax2.plot([a for a, _ in fresh], [v for _, v in fresh], color="#cc6666")
    ax2.axhline(500, color="black", linestyle="--", linewidth=1)
    ax2.set_ylabel("freshness p99 (ms)\nper interval")
    for name in samples[0]["rss_mb"]:
        ax3.plot(t, [x["rss_mb"].get(name, 0.0) for x in samples], label=name)
    ax3.set_ylabel("worker RSS (MB)")
    ax3.set_ylim(bottom=0)
    ax3.legend(fontsize=8)
    ax3.set_xlabel("minutes into the load")
    return _save(plt, fig, out_dir / "soak.png", _commit(result, "soak"))


def plot_scale(result: dict[str, Any], out_dir: Path) -> Path | None:
    """Rate and CPU per event against the number of workers per group."""
    medians = result.get("details", {}).get("scale", {}).get("medians") or {}
    if not medians:
        return None
    plt = _pyplot()
    if plt is None:
        return None
    counts = sorted(medians, key=int)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for mode, color in (("store", "#66aa77"), ("pipeline", "#4477aa")):
        ax1.plot(counts, [medians[n][mode]["rate"] for n in counts], marker="o", color=color, label=mode)
    ax1.set_xlabel("workers in the group")
    ax1.set_ylabel("events/s")
    ax1.set_ylim(bottom=0)
    ax1.legend()
    ax1.set_title(
        f"Rate ({result.get('scale_partitions') or '?'} partitions, {result.get('cpu_count')} CPUs)"
    )
    x = range(len(counts))
    w = [medians[n]["pipeline"]["workers_cpu_us_per_event"] for n in counts]
    pg = [medians[n]["pipeline"]["postgres_cpu_us_per_event"] for n in counts]
    br = [medians[n]["pipeline"]["broker_cpu_us_per_event"] for n in counts]
    ax2.bar(x, w, label="workers", color="#4477aa")
    ax2.bar(x, pg, bottom=w, label="PostgreSQL", color="#cc9966")
    ax2.bar(x, br, bottom=[a + b for a, b in zip(w, pg, strict=True)], label="broker", color="#999999")
    ax2.set_xticks(list(x), [f"{n} worker(s)" for n in counts])
    ax2.set_ylabel("CPU µs per event")
    ax2.set_title("Pipeline: CPU per event")
    ax2.legend()
    return _save(plt, fig, out_dir / "scale.png", _commit(result, "scale"))
