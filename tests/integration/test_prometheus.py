"""Prometheus configuration, alert rules and every PromQL expression we ship,
checked with the real ``promtool`` and against a real Prometheus scraping real
workers.

- ``promtool check config`` on compose/prometheus/prometheus.yml (with the rule
  files it loads), ``promtool check rules`` and ``promtool test rules`` on the
  unit tests in compose/prometheus/rules/tests/.
- A live run: ``tracker consume`` and ``tracker project`` run as processes with
  ``--metrics-port``, and ``tracker serve`` with its ``/metrics``; a private
  Prometheus (Debian's package, our own port and TSDB folder, exemplar storage
  on) scrapes them every second and evaluates the alert rules, while a
  simulated workload and one undecodable record go through. Then every PromQL
  expression of the Grafana dashboards and of the alert rules must parse and
  run, the ones that describe the workload must return data, and the exemplars
  of ``tracker_frame_processing_duration_seconds`` must carry trace ids that
  exist in that test's ``frame_events``.
- One exporter per series: across the workers and ``tracker serve``, no
  series (its name and labels, ``job`` and ``instance`` aside) comes from two
  jobs. In particular each lag series (group or projection, topic, partition)
  is exported once: the workers export their view, ``tracker serve`` its own
  under families of its own. The promtool unit tests hold both views of the
  same partitions, and a copy of the rules that adds them up must fail those
  tests for every lag alert.
- No double counting: beside the workers, Prometheus scrapes a stand-in
  processor service that records the same cameras through the service-side
  API of ``tracker.metrics`` (``frames_processed_total`` and friends, with a
  ``service`` label and exemplars of its own traces), far more than the
  workload. The consumer's finished-frame counter must equal the finished
  frames in ``frame_events``, and every dashboard and rule expression must give
  the same result once the service's series are deleted from the TSDB. The
  promtool unit tests hold such service series too, and a copy of the rules
  that sums them in must fail those tests for every frame alert.

Each checker returns a list of problems; the ``*_can_fail`` tests and the end
of the live test feed them broken input, so none of them passes by accident.
"""

from __future__ import annotations

import asyncio
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import yaml
from aiokafka import AIOKafkaProducer

from tests.integration.helpers import ROOT, env_for, publish_simulation
from tests.integration.prom import (
    PROMETHEUS_CONFIG,
    RULE_TESTS_DIR,
    RULES_DIR,
    PrometheusServer,
    PrometheusTools,
    PrometheusUnavailable,
    PromQLError,
    PromTarget,
    RuleExpr,
    dashboard_promql,
    find_prometheus,
    free_port,
    grafana_to_promql,
    rule_exprs,
    rule_files,
)
from tracker.config import Settings
from tracker.simulator import SimulationConfig

pytestmark = pytest.mark.integration

API_JOB = "tracker-api"
# tracker serve's view of lag, beside the workers': one family per view and exporter.
SERVE_LAG_FAMILIES = ("tracker_consumer_committed_lag_records", "tracker_projection_checkpoint_lag_records")
WORKER_LAG_FAMILIES = ("tracker_consumer_lag_records", "tracker_projection_lag_records")

# Dashboard expressions over these metrics may return nothing in the live run:
# the series only exist once the event has happened.
ONLY_AFTER_AN_OUTAGE = {
    "tracker_worker_paused": "set only when a worker pauses fetching (database outage)",
    "tracker_db_retries_total": "incremented only when a database operation is retried",
}

# What each alert's expression must return in the live run: True = data (the
# condition holds), False = nothing, None = either (depends on the simulated
# failure and latency draws). A new alert needs an entry here.
LIVE_ALERT_EXPECTATIONS: dict[str, bool | None] = {
    "TrackerDLQGrowing": True,  # the run dead-letters one undecodable record
    "FrameErrorRateHigh": None,  # a few dozen frames at a 20% failure rate
    "FrameLatencyP99High": None,  # simulated latencies are far below 2 s, but a few frames take the slow path
    "CameraSilent": False,  # needs traffic older than 10 minutes
    "TrackerConsumerLagHigh": False,
    "TrackerConsumerLagGrowing": False,
    "TrackerProjectionLagHigh": False,
    "TrackerWorkerDown": False,  # both workers are up
    "TrackerWorkerPaused": False,
}


# A stand-in processor service, scraped beside the workers: it records the
# workload's cameras itself, through the service-side API (get_metrics,
# TimingContext), much more often and with more failures and slower frames than
# the workload, inside spans of its own (exemplars with trace ids that are in no
# frame_events). Stopped with SIGTERM.
SERVICE_JOB = "detektor-processor"
SERVICE_SCRIPT = """
import sys, time
from opentelemetry.sdk.trace import TracerProvider
from tracker.metrics import TimingContext, get_metrics, serve_metrics

port, cameras = int(sys.argv[1]), sys.argv[2].split(",")
metrics = get_metrics("processor")
tracer = TracerProvider().get_tracer("stand-in-processor")
serve_metrics(port)
while True:
    for cam in cameras:
        with tracer.start_as_current_span("process_frame"):
            metrics.increment_frames_processed({"camera_id": cam}, amount=50)
            failed = {"camera_id": cam, "stage": "total", "status": "failed"}
            metrics.increment_frames_processed(failed, amount=50)
            metrics.increment_errors("StandInError", attributes={"camera_id": cam, "stage": "total"})
            metrics.observe_processing_duration(cam, "total", 20.0)
            try:
                with TimingContext(cam, "detect"):
                    raise RuntimeError("stand-in failure")
            except RuntimeError:
                pass
    time.sleep(0.1)
"""


@pytest.fixture(scope="session")
def prom_tools() -> PrometheusTools:
    """prometheus and promtool, installed from Debian's package if missing (as root)."""
    try:
        return find_prometheus()
    except PrometheusUnavailable as e:
        pytest.fail(str(e), pytrace=False)


# ---- promtool ---------------------------------------------------------------------


def promtool(tools: PrometheusTools, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tools.promtool, *args], capture_output=True, text=True, timeout=120, check=False, cwd=cwd
    )


def checkable_config(tools: PrometheusTools, config: Path, workdir: Path) -> Path:
    """The config promtool can check: the file itself, or, for a Prometheus older
    than 2.49 (Debian 12 ships 2.42), a copy without `scrape_protocols`, which
    only those versions reject (tests/unit/test_compose.py checks its values
    against what the compose image, v2.55, accepts). The copy sits beside a link
    to the real rules folder, so the relative `rule_files` globs still resolve
    to the real rule files."""
    if tools.supports_scrape_protocols:
        return config
    cfg = yaml.safe_load(config.read_text(encoding="utf-8"))
    cfg.get("global", {}).pop("scrape_protocols", None)
    for job in cfg.get("scrape_configs") or []:
        job.pop("scrape_protocols", None)
    workdir.mkdir(parents=True, exist_ok=True)
    copy = workdir / config.name
    copy.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    for entry in config.parent.iterdir():
        if entry.is_dir() and not (workdir / entry.name).exists():
            (workdir / entry.name).symlink_to(entry, target_is_directory=True)
    return copy


def check_config(
    tools: PrometheusTools, config: Path, workdir: Path, expect_rule_files: Sequence[str] = ()
) -> list[str]:
    """promtool check config (which checks the rule files it loads as well)."""
    result = promtool(tools, "check", "config", str(checkable_config(tools, config, workdir)))
    output = result.stdout + result.stderr
    if result.returncode != 0:
        return [f"promtool check config {config.name}:\n{output}"]
    return [
        f"promtool check config did not check rule file {n}:\n{output}"
        for n in expect_rule_files
        if n not in output
    ]


def check_unit_tests(tools: PrometheusTools, test_files: Sequence[Path]) -> list[str]:
    problems = []
    for f in test_files:
        result = promtool(tools, "test", "rules", f.name, cwd=f.parent)
        if result.returncode != 0:
            problems.append(f"promtool test rules {f.name}:\n{result.stdout}{result.stderr}")
    return problems


def check_alert_test_coverage(rules: Sequence[RuleExpr], test_files: Sequence[Path]) -> list[str]:
    """Every alert has a unit test where it fires and one where it must not."""
    fires: set[str] = set()
    silent: set[str] = set()
    for f in test_files:
        for case in yaml.safe_load(f.read_text(encoding="utf-8")).get("tests") or []:
            for t in case.get("alert_rule_test") or []:
                (fires if t.get("exp_alerts") else silent).add(t["alertname"])
    problems = []
    for r in rules:
        if not r.is_alert:
            continue
        if r.name not in fires:
            problems.append(f"alert {r.name}: no unit test in which it fires")
        if r.name not in silent:
            problems.append(f"alert {r.name}: no unit test in which it must not fire")
    return problems


def unit_test_files() -> list[Path]:
    return sorted(RULE_TESTS_DIR.glob("*.yml"))


def test_prometheus_config_is_valid(prom_tools: PrometheusTools, tmp_path: Path) -> None:
    assert rule_files(), "prometheus.yml loads no rule files"
    assert not set(rule_files()) & set(unit_test_files()), (
        "prometheus.yml would load a unit-test file as rules"
    )
    assert check_config(prom_tools, PROMETHEUS_CONFIG, tmp_path, [f.name for f in rule_files()]) == []


def test_rule_files_are_valid(prom_tools: PrometheusTools) -> None:
    for f in rule_files():
        result = promtool(prom_tools, "check", "rules", str(f))
        assert result.returncode == 0, result.stdout + result.stderr


def test_alert_unit_tests_pass(prom_tools: PrometheusTools) -> None:
    files = unit_test_files()
    assert files, f"no promtool unit tests in {RULE_TESTS_DIR.relative_to(ROOT)}"
    # The unit tests must cover the files prometheus.yml really loads.
    covered = {
        (f.parent / r).resolve()
        for f in files
        for r in yaml.safe_load(f.read_text(encoding="utf-8")).get("rule_files") or []
    }
    assert {f.resolve() for f in rule_files()} <= covered
    assert check_unit_tests(prom_tools, files) == []
    assert check_alert_test_coverage(rule_exprs(), files) == []


def _copy_rules(tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the rules folder (rule files and unit tests, same layout)."""
    rules = tmp_path / "rules"
    shutil.copytree(RULES_DIR, rules)
    return rules, rules / RULE_TESTS_DIR.relative_to(RULES_DIR)


def test_config_check_can_fail(prom_tools: PrometheusTools, tmp_path: Path) -> None:
    rules, _ = _copy_rules(tmp_path)
    config = tmp_path / "prometheus.yml"
    shutil.copy(PROMETHEUS_CONFIG, config)
    for f in rules.glob("*.yml"):
        f.write_text(f.read_text(encoding="utf-8").replace("rate(", "rte(", 1), encoding="utf-8")
    assert check_config(prom_tools, config, tmp_path / "work"), "a rule with a bad function passed"


def test_unit_tests_can_fail(prom_tools: PrometheusTools, tmp_path: Path) -> None:
    rules, tests_dir = _copy_rules(tmp_path)
    alerts = rules / "tracker-alerts.yml"
    text = alerts.read_text(encoding="utf-8")
    # Raise the error-rate threshold: the test that expects cam-bad (20%) to fire must fail.
    assert ") > 0.10" in text
    alerts.write_text(text.replace(") > 0.10", ") > 0.50"), encoding="utf-8")
    problems = check_unit_tests(prom_tools, sorted(tests_dir.glob("*.yml")))
    assert problems and "FrameErrorRateHigh" in problems[0], problems
    # An alert nobody tests is reported.
    extra = [*rule_exprs(), RuleExpr("x.yml", "g", "Untested", "vector(1)", True)]
    assert check_alert_test_coverage(extra, unit_test_files()) == [
        "alert Untested: no unit test in which it fires",
        "alert Untested: no unit test in which it must not fire",
    ]


# What a rule file that summed the services' own series in with the tracker's
# would select instead of each tracker_ family.
_SUMMED_IN = re.compile(
    r"\btracker_(frames_processed_total|frame_errors_total|frame_processing_duration_seconds_bucket)\{"
)
FRAME_ALERTS = ("FrameErrorRateHigh", "FrameLatencyP99High", "CameraSilent")


def test_unit_tests_catch_double_counting(prom_tools: PrometheusTools, tmp_path: Path) -> None:
    """The unit tests hold service series beside the tracker's: a copy of the
    rules that sums them in fails them, for every frame alert."""
    rules, tests_dir = _copy_rules(tmp_path)
    alerts = rules / "tracker-alerts.yml"
    text = alerts.read_text(encoding="utf-8")
    summed, n = _SUMMED_IN.subn(r'{__name__=~"(tracker_)?\1", ', text)
    assert n >= 6, "the frame alerts no longer read the tracker_ families"
    alerts.write_text(summed, encoding="utf-8")
    problems = check_unit_tests(prom_tools, sorted(tests_dir.glob("*.yml")))
    assert len(problems) == 1, problems
    for alert in FRAME_ALERTS:
        assert f"alertname: {alert}" in problems[0], f"{alert} does not notice a service summed in"


# Both lag views added up, where each rule should take one.
_LAG_VIEWS = {
    "tracker_consumer_lag_records": '{__name__=~"tracker_consumer_(committed_)?lag_records"}',
    "tracker_projection_lag_records": '{__name__=~"tracker_projection_(checkpoint_)?lag_records"}',
}
LAG_ALERTS = ("TrackerConsumerLagHigh", "TrackerConsumerLagGrowing", "TrackerProjectionLagHigh")


def test_unit_tests_catch_lag_counted_twice(prom_tools: PrometheusTools, tmp_path: Path) -> None:
    """The unit tests hold tracker serve's lag view beside the workers', for the
    same partitions: a copy of the rules that adds the two fails them, for
    every lag alert."""
    rules, tests_dir = _copy_rules(tmp_path)
    alerts = rules / "tracker-alerts.yml"
    text = alerts.read_text(encoding="utf-8")
    for family, both in _LAG_VIEWS.items():
        assert family in text, f"the lag alerts no longer read {family}"
        text = text.replace(family, both)
    alerts.write_text(text, encoding="utf-8")
    problems = check_unit_tests(prom_tools, sorted(tests_dir.glob("*.yml")))
    assert len(problems) == 1, problems
    for alert in LAG_ALERTS:
        assert f"alertname: {alert}" in problems[0], f"{alert} does not notice lag counted twice"


# ---- live: real workers, a real Prometheus ----------------------------------------


def check_one_exporter(series: Iterable[dict[str, str]]) -> list[str]:
    """Each series, by its name and labels (``job`` and ``instance`` aside),
    comes from one job: summed over the scrape set, nothing counts twice."""
    jobs: dict[tuple[tuple[str, str], ...], set[str]] = {}
    for s in series:
        key = tuple(sorted((k, v) for k, v in s.items() if k not in ("job", "instance")))
        jobs.setdefault(key, set()).add(s.get("job", ""))
    return [
        f"{dict(key)} is exported by {len(js)} jobs: {sorted(js)}"
        for key, js in sorted(jobs.items())
        if len(js) > 1
    ]


@dataclass(frozen=True)
class Query:
    name: str
    expr: str  # ready to run (Grafana variables replaced)
    must_have_data: bool
    must_be_empty: bool = False
    finite: bool = False  # at least one finite value (quantiles: not all NaN)


def dashboard_queries(targets: Iterable[PromTarget], cameras: Sequence[str]) -> list[Query]:
    out = []
    for t in targets:
        expr = grafana_to_promql(t.expr, {"camera": cameras}, interval=t.interval)
        optional = any(metric in t.expr for metric in ONLY_AFTER_AN_OUTAGE)
        out.append(Query(t.name, expr, not optional, finite="histogram_quantile" in expr and not optional))
    return out


def rule_queries(rules: Iterable[RuleExpr]) -> list[Query]:
    out = []
    for r in rules:
        if r.is_alert and r.name not in LIVE_ALERT_EXPECTATIONS:
            raise AssertionError(f"alert {r.name}: add its expected live outcome to LIVE_ALERT_EXPECTATIONS")
        want = LIVE_ALERT_EXPECTATIONS.get(r.name)
        out.append(Query(f"{r.file} / {r.group} / {r.name}", r.expr, want is True, want is False))
    return out


def _finite(sample: dict[str, Any]) -> bool:
    value = sample.get("value")
    if not isinstance(value, list) or len(value) != 2:
        return False
    try:
        return math.isfinite(float(value[1]))
    except (TypeError, ValueError):
        return False


def check_queries(prom: PrometheusServer, queries: Iterable[Query]) -> list[str]:
    problems = []
    for q in queries:
        try:
            result = prom.query(q.expr)
        except PromQLError as e:
            problems.append(f"{q.name}: {e}\n    {q.expr}")
            continue
        if q.must_have_data and not result:
            problems.append(f"{q.name}: no data\n    {q.expr}")
        elif q.must_be_empty and result:
            problems.append(f"{q.name}: returned data, expected none: {result[:3]}\n    {q.expr}")
        elif q.finite and result and not any(_finite(s) for s in result):
            problems.append(f"{q.name}: only NaN/Inf values {result[:3]}\n    {q.expr}")
    return problems


def exemplar_trace_ids(prom: PrometheusServer, expr: str, start: float, end: float) -> list[str]:
    return [
        ex["labels"].get("trace_id", "")
        for series in prom.query_exemplars(expr, start, end)
        for ex in series.get("exemplars") or []
    ]


def check_exemplars(trace_ids: Sequence[str], stored: set[str], what: str) -> list[str]:
    if not trace_ids:
        return [f"{what}: no exemplars"]
    unknown = sorted(set(trace_ids) - stored)
    if unknown:
        return [f"{what}: {len(unknown)} exemplar trace ids not in frame_events.trace_id, e.g. {unknown[:3]}"]
    return []


Results = dict[str, list[tuple[tuple[tuple[str, str], ...], str]]]


def evaluate(prom: PrometheusServer, queries: Iterable[Query], at: float) -> Results:
    """Each query's result at ``at``: (labels, value) pairs in a stable order."""
    out: Results = {}
    for q in queries:
        result = prom.query(q.expr, at)
        out[q.name] = sorted(
            (tuple(sorted((s.get("metric") or {}).items())), str(s["value"][1])) for s in result
        )
    return out


def compare_results(with_service: Results, without: Results) -> list[str]:
    return [
        f"{name}: {with_service[name][:3]} with the service's series, {without.get(name, [])[:3]} without"
        for name in with_service
        if with_service[name] != without.get(name)
    ]


def check_rule_health(groups: Sequence[dict[str, Any]], expected: Iterable[str]) -> list[str]:
    seen = {r["name"]: r for g in groups for r in g.get("rules") or []}
    problems = [f"rule {n}: not loaded by Prometheus" for n in expected if n not in seen]
    for name, r in seen.items():
        if r.get("health") != "ok":
            problems.append(f"rule {name}: health {r.get('health')!r} {r.get('lastError', '')}")
    return problems


async def _spawn(settings: Settings, log: Path, *args: str) -> asyncio.subprocess.Process:
    with log.open("wb") as out:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tracker.cli", *args,
            env=env_for(settings), cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip


async def _stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), 20)
    except TimeoutError:
        proc.kill()
        await proc.wait()


async def _poll(fn: Any, what: str, timeout: float = 45.0, interval: float = 0.25) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await fn()
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def _scalar(prom: PrometheusServer, expr: str) -> float | None:
    result = prom.query(expr)
    return float(result[0]["value"][1]) if result else None


async def test_live_scrape_dashboards_and_rules(
    settings: Settings, prom_tools: PrometheusTools, tmp_path: Path
) -> None:
    t0 = time.time()
    consumer_port, projector_port, service_port = free_port(), free_port(), free_port()
    api_port = free_port()
    prom = PrometheusServer(
        prom_tools,
        tmp_path,
        {
            "tracker-consumer": [f"127.0.0.1:{consumer_port}"],
            "tracker-projector": [f"127.0.0.1:{projector_port}"],
            API_JOB: [f"127.0.0.1:{api_port}"],
            SERVICE_JOB: [f"127.0.0.1:{service_port}"],
        },
        rule_files=[str(f) for f in rule_files()],
        admin_api=True,
    )
    await asyncio.to_thread(prom.start)
    procs: list[asyncio.subprocess.Process] = []
    sim_cfg = SimulationConfig(cameras=3)
    service_cameras = [f"{sim_cfg.camera_prefix}-{i + 1:03d}" for i in range(sim_cfg.cameras)]
    with (tmp_path / "service.log").open("wb") as out:
        service = await asyncio.create_subprocess_exec(
            sys.executable, "-c", SERVICE_SCRIPT, str(service_port), ",".join(service_cameras),
            env=env_for(settings), cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        procs.append(
            await _spawn(settings, tmp_path / "consume.log", "consume", "--metrics-port", str(consumer_port))
        )
        procs.append(
            await _spawn(settings, tmp_path / "project.log", "project", "--metrics-port", str(projector_port))
        )
        procs.append(await _spawn(settings, tmp_path / "serve.log", "serve", "--port", str(api_port)))

        async def targets_up() -> bool:
            for p in [*procs, service]:
                if p.returncode is not None:
                    raise AssertionError(f"a worker exited {p.returncode}; see {tmp_path}/*.log")
            targets = await asyncio.to_thread(prom.active_targets)
            return len(targets) == 4 and all(t["health"] == "up" for t in targets)

        await _poll(targets_up, "both workers, tracker serve and the service to be scraped")

        # The workload, in two waves with scrapes in between: a series appears
        # with its first increment, so Prometheus needs samples before and after
        # an increase for rate() and histogram_quantile() to see it. Simulated
        # cameras (with failures, so the error series exist) and one record no
        # codec can read (for the DLQ series).
        events = 0

        async def stored(n: int, dlq: int) -> bool:
            got = await asyncio.to_thread(_scalar, prom, "sum(tracker_events_stored_total)")
            dead = await asyncio.to_thread(_scalar, prom, "sum(tracker_dlq_records_total)")
            plag = await asyncio.to_thread(_scalar, prom, "sum(tracker_projection_lag_records)")
            return got == n and (dead or 0) == dlq and plag == 0

        failed = 0
        for wave, seed in enumerate((11, 12)):
            sim = await publish_simulation(
                settings, cameras=3, fps=5, duration_s=2, failure_rate=0.2, seed=seed
            )
            events += sim.events
            failed += sim.failed_frames
            if wave == 1:
                producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
                await producer.start()
                try:
                    await producer.send_and_wait(settings.camera_topic, b"not avro", key=b"broken-frame")
                finally:
                    await producer.stop()
            await _poll(
                lambda n=events, d=wave: stored(n, d),
                f"Prometheus to see {events} stored events, {wave} dead letters, projections caught up",
            )
            await asyncio.sleep(1.5)  # two more scrapes
        assert failed > 0
        # tracker serve refreshes its view every 15 s: wait until it covers
        # every partition, then for a rule evaluation after the last change.
        partitions = len(settings.event_topics) * settings.topic_partitions

        async def serve_reported() -> bool:
            counts = [
                await asyncio.to_thread(_scalar, prom, f'count({family}{{job="{API_JOB}"}})')
                for family in SERVE_LAG_FAMILIES
            ]
            return counts == [partitions, partitions]

        await _poll(serve_reported, "tracker serve to export the lag of every partition")
        await asyncio.sleep(1)

        conn = await asyncpg.connect(settings.database_url.get())
        try:
            cameras = [
                r[0] for r in await conn.fetch("SELECT DISTINCT camera_id FROM frame_events ORDER BY 1")
            ]
            stored_traces = {
                r[0]
                for r in await conn.fetch(
                    "SELECT DISTINCT trace_id FROM frame_events WHERE trace_id IS NOT NULL"
                )
            }
            finished = await conn.fetchval(
                "SELECT count(*) FROM frame_events"
                " WHERE event_type IN ('ProcessingCompleted', 'ProcessingFailed')"
            )
        finally:
            await conn.close()
        assert len(cameras) == 3 and stored_traces
        assert cameras == service_cameras, "the stand-in service must record the workload's cameras"

        targets = dashboard_promql()
        rules = rule_exprs()
        assert targets and rules
        queries = dashboard_queries(targets, cameras) + rule_queries(rules)
        problems = await asyncio.to_thread(check_queries, prom, queries)

        # Exemplars: the raw histogram, and each dashboard target that shows them.
        end = time.time() + 1
        ids = await asyncio.to_thread(
            exemplar_trace_ids, prom, "tracker_frame_processing_duration_seconds_bucket", t0, end
        )
        problems += check_exemplars(ids, stored_traces, "tracker_frame_processing_duration_seconds_bucket")
        exemplar_targets = [t for t in targets if t.exemplar]
        assert exemplar_targets, "no dashboard target shows exemplars"
        for t in exemplar_targets:
            expr = grafana_to_promql(t.expr, {"camera": cameras}, interval=t.interval)
            ids = await asyncio.to_thread(exemplar_trace_ids, prom, expr, t0, end)
            problems += check_exemplars(ids, stored_traces, t.name)

        # Prometheus loaded and evaluated every rule without error.
        async def evaluated() -> list[dict[str, Any]] | None:
            groups = await asyncio.to_thread(prom.rule_groups)
            rules_seen = [r for g in groups for r in g.get("rules") or []]
            return groups if rules_seen and all(r.get("health") != "unknown" for r in rules_seen) else None

        groups = await _poll(evaluated, "every rule to be evaluated", timeout=15)
        problems += check_rule_health(groups, [r.name for r in rules])

        # One exporter per series, across the workers and tracker serve (every
        # series any of them ever exported in this run): each lag series
        # (group or projection, topic, partition) once, in each view.
        tracker_jobs = ["tracker-consumer", "tracker-projector", API_JOB]
        exported = await asyncio.to_thread(
            prom.api,
            "series",
            **{"match[]": f'{{job=~"{"|".join(tracker_jobs)}", __name__!~"up|scrape_.*"}}'},
        )
        problems += check_one_exporter(exported)
        lag_series = [s for s in exported if s["__name__"] in (*WORKER_LAG_FAMILIES, *SERVE_LAG_FAMILIES)]
        exporters = {(s["__name__"], s["job"]) for s in lag_series}
        assert exporters == {
            ("tracker_consumer_lag_records", "tracker-consumer"),
            ("tracker_projection_lag_records", "tracker-projector"),
            *((family, API_JOB) for family in SERVE_LAG_FAMILIES),
        }, exporters
        for family in (*WORKER_LAG_FAMILIES, *SERVE_LAG_FAMILIES):
            got = sorted((s["topic"], s["partition"]) for s in lag_series if s["__name__"] == family)
            want = sorted(
                (t, str(p)) for t in settings.event_topics for p in range(settings.topic_partitions)
            )
            if got != want:
                problems.append(f"{family}: series for {got}, expected each partition once: {want}")
        assert problems == [], "\n".join(problems)

        # No double counting. The service's series are there, for the same
        # cameras, with exemplars of its own traces; the consumer's count of
        # finished frames is that of frame_events all the same.
        service_series = 'frames_processed_total{service="processor", stage="total", camera_id=~"cam-.*"}'
        assert (await asyncio.to_thread(_scalar, prom, f"sum({service_series})") or 0) > finished
        service_ids = await asyncio.to_thread(
            exemplar_trace_ids, prom, "frame_processing_duration_seconds_bucket", t0, end
        )
        assert service_ids and not set(service_ids) & stored_traces
        tracker_total = 'sum(tracker_frames_processed_total{stage="total"})'
        assert await asyncio.to_thread(_scalar, prom, tracker_total) == finished
        # Every dashboard and rule expression gives the same result without the
        # service's series (stopped first, so that no new sample comes in; `at`
        # lies before the stop, so the workers' samples up to it are the same).
        at = time.time() - 2
        with_service = await asyncio.to_thread(evaluate, prom, queries, at)
        await _stop(service)
        await asyncio.to_thread(prom.delete_series, f'{{job="{SERVICE_JOB}"}}')
        gone = await asyncio.to_thread(prom.query, f'count({{job="{SERVICE_JOB}"}})', at)
        assert gone == [], gone
        without = await asyncio.to_thread(evaluate, prom, queries, at)
        assert compare_results(with_service, without) == []

        # The checks can fail: a parse error, a misspelled metric, NaN-only
        # quantiles, an alert that should be quiet, unknown trace ids, a bad rule.
        broken = [
            Query("syntax", "sum by (camera_id (rate(tracker_frames_processed_total[1m]))", True),
            Query("typo", 'sum(rate(tracker_frames_processed_totl{stage="total"}[1m]))', True),
            Query(
                "nan",
                "histogram_quantile(0.5,"
                ' rate(tracker_frame_processing_duration_seconds_bucket{stage="nope"}[1m])) or vector(NaN)',
                True,
                finite=True,
            ),
            Query("quiet", "sum(tracker_dlq_records_total) > 0", False, must_be_empty=True),
        ]
        found = await asyncio.to_thread(check_queries, prom, broken)
        assert [p.split(":")[0] for p in found] == ["syntax", "typo", "nan", "quiet"], found
        assert "parse error" in found[0] and "no data" in found[1], found
        assert check_exemplars([*sorted(stored_traces)[:1], "0" * 32], stored_traces, "x")
        assert check_exemplars([], stored_traces, "x")
        assert check_rule_health(groups, ["NoSuchAlert"]) == ["rule NoSuchAlert: not loaded by Prometheus"]
        bad_group = [{"rules": [{"name": "Bad", "health": "err", "lastError": "boom"}]}]
        assert check_rule_health(bad_group, ["Bad"])
        # the lag both exported by the consumer and by tracker serve under one name, as before
        twice = [
            {**s, "job": API_JOB, "instance": "a:8080"}
            for s in lag_series
            if s["__name__"] == "tracker_consumer_lag_records"
        ]
        found = check_one_exporter([*exported, *twice])
        assert len(found) == partitions and all("tracker_consumer_lag_records" in p for p in found), (
            found
        )
        name = next(iter(without))
        inflated = {**without, name: [((("x", "y"),), "1e9")]}
        assert compare_results(inflated, without) == [
            f"{name}: [((('x', 'y'),), '1e9')] with the service's series, {without[name][:3]} without"
        ]
    finally:
        for p in [*procs, service]:
            await _stop(p)
        await asyncio.to_thread(prom.stop)
    for name, p in zip(("consume", "project", "serve"), procs, strict=True):
        log = (tmp_path / f"{name}.log").read_text(encoding="utf-8", errors="replace")
        assert p.returncode == 0, f"tracker {name} exited {p.returncode}:\n{log[-3000:]}"


def test_grafana_variables_in_promql() -> None:
    expr = 'sum(rate(x{camera_id=~"$camera", a=~"${camera:regex}"}[$__rate_interval])) and y[$__interval]'
    out = grafana_to_promql(expr, {"camera": ["cam-001", "cam.2"]}, interval="1h")
    assert out == 'sum(rate(x{camera_id=~"(cam-001|cam\\\\.2)", a=~"(cam-001|cam\\.2)"}[1m])) and y[1h]'
    assert grafana_to_promql('{a=~"$v"}', {"v": ["one"]}) == '{a=~"one"}'
    with pytest.raises(KeyError):
        grafana_to_promql('x{a=~"$nope"}', {})


def test_prometheus_install_message_without_root(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where prometheus is missing and we cannot install it, the error says what to do."""
    import tests.integration.prom as prom_mod

    monkeypatch.setattr(prom_mod, "_locate", lambda name: None)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(PrometheusUnavailable, match="apt-get install -y prometheus"):
        find_prometheus()
