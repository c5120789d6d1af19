"""Every PromQL expression we ship, run against a real Prometheus scraping real workers.

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
  under families of its own.
- No double counting: beside the workers, Prometheus scrapes a stand-in
  processor service that records the same cameras through the service-side
  API of ``tracker.metrics`` (``frames_processed_total`` and friends, with a
  ``service`` label and exemplars of its own traces), far more than the
  workload. The consumer's finished-frame counter must equal the finished
  frames in ``frame_events``, and every dashboard and rule expression must give
  the same result once the service's series are deleted from the TSDB.

What each expression must return in this run, and the checkers, are in
tests/integration/prom_live_checks.py; the end of the live test feeds the
checkers broken input, so none of them passes by accident. The promtool checks
of the same rules are in test_prometheus_rules.py.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer

from tests.integration.helpers import ROOT, env_for, publish_simulation
from tests.integration.prom import PrometheusServer, PrometheusTools, free_port
from tests.integration.prom_live_checks import (
    ONLY_AFTER_AN_ANOMALY,
    Query,
    check_exemplars,
    check_one_exporter,
    check_queries,
    check_rule_health,
    compare_results,
    dashboard_queries,
    evaluate,
    exemplar_trace_ids,
    rule_queries,
)
from tests.integration.shipped_promql import dashboard_promql, grafana_to_promql, rule_exprs, rule_files
from tracker.config import Settings
from tracker.simulator import SimulationConfig

pytestmark = pytest.mark.integration

API_JOB = "tracker-api"
# tracker serve's view of lag, beside the workers': one family per view and exporter.
SERVE_LAG_FAMILIES = ("tracker_consumer_committed_lag_records", "tracker_projection_checkpoint_lag_records")
WORKER_LAG_FAMILIES = ("tracker_consumer_lag_records", "tracker_projection_lag_records")


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
                producer = AIOKafkaProducer(bootstrap_servers=settings.kafka.bootstrap)
                await producer.start()
                try:
                    await producer.send_and_wait(settings.topics.camera, b"not avro", key=b"broken-frame")
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
        partitions = len(settings.topics.events) * settings.topics.partitions

        async def serve_reported() -> bool:
            counts = [
                await asyncio.to_thread(_scalar, prom, f'count({family}{{job="{API_JOB}"}})')
                for family in SERVE_LAG_FAMILIES
            ]
            return counts == [partitions, partitions]

        await _poll(serve_reported, "tracker serve to export the lag of every partition")
        await asyncio.sleep(1)

        conn = await asyncpg.connect(settings.database.url.get())
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
        # (The anomalies' exemplars exist once one is found: tests/integration/test_anomalies.py.)
        exemplar_targets = [
            t for t in targets if t.exemplar and not any(m in t.expr for m in ONLY_AFTER_AN_ANOMALY)
        ]
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
                (t, str(p)) for t in settings.topics.events for p in range(settings.topics.partitions)
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
        assert len(found) == partitions and all("tracker_consumer_lag_records" in p for p in found), found
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
