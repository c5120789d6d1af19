"""The web UI in a real browser: ``tracker serve`` (a real process) on the real
stack, filled by the simulator, with the event-store and projection workers
running; headless Chromium (Debian's) driven by Selenium. One server, one
browser and one database for the module.

What a person sees is checked: a completed, a failed, a retried and an
in-flight frame found by search; the Gantt bars' count and order; the failed
attempt marked; the p95 comparison against the rollups; the trace link; the
in-flight frame's page turning final without a reload; a frame whose ids and
error hold markup and script shown as text with no script run; no request
leaving the machine. Screenshots go to tests/screenshots/.
"""

from __future__ import annotations

import asyncio
import random
import re
import signal
import subprocess
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import asyncpg
import pytest
import pytest_asyncio
from aiokafka import AIOKafkaProducer

from tests.integration.browser import chromium, requested_urls, screenshot
from tests.integration.conftest import ROOT, fresh_settings
from tests.integration.helpers import free_port, publish_simulation, span_exporter
from tracker.api.html import fmt_ms
from tracker.config import Settings
from tracker.domain import Frame, FrameError, ProcessingState
from tracker.publisher import FramePublisher
from tracker.queries.shaping import percentile_from_buckets
from tracker.simulator import SimulationConfig, plan_frame

pytestmark = pytest.mark.integration
TRACE_TEMPLATE = "http://jaeger.invalid:16686/trace/{trace_id}"


@dataclass
class Stack:
    settings: Settings
    base: str
    log_dir: Path


def _start(settings: Settings, log: Path, *args: str) -> subprocess.Popen[bytes]:
    # Plain Popen, not bench.workers: those are killed after every test, and these
    # serve the whole module.
    from bench.workers import tracker_argv, tracker_env

    env = tracker_env(settings, TRACKER_TRACE_URL_TEMPLATE=TRACE_TEMPLATE, TRACKER_LOG_FORMAT="text")
    env["PYTHONPATH"] = str(ROOT)
    with log.open("wb") as out:
        return subprocess.Popen(tracker_argv(*args), env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)


async def _wait_http(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"{url} did not answer within {timeout}s")
        await asyncio.sleep(0.2)


async def _wait_db(settings: Settings, sql: str, *args: Any, timeout: float = 60.0) -> Any:
    conn = await asyncpg.connect(settings.database.url.get())
    try:
        deadline = time.monotonic() + timeout
        while True:
            value = await conn.fetchval(sql, *args)
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"not true within {timeout}s: {sql} {args}")
            await asyncio.sleep(0.2)
    finally:
        await conn.close()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    logs = tmp_path_factory.mktemp("ui-logs")
    async with fresh_settings(trace_url_template=TRACE_TEMPLATE) as settings:
        result = await publish_simulation(
            settings, cameras=3, fps=20, duration_s=4, seed=1414, failure_rate=0.15, retry_rate=0.15
        )
        procs = [
            _start(settings, logs / "consume.log", "consume"),
            _start(settings, logs / "project.log", "project"),
        ]
        port = free_port()
        procs.append(
            _start(
                settings,
                logs / "serve.log",
                "serve",
                "--port",
                str(port),
                "--grafana-url",
                "http://grafana.invalid:3000",
            )
        )
        try:
            await _wait_db(
                settings,
                "SELECT count(*) = $1 FROM frame_metadata "
                "WHERE state IN ('completed', 'failed', 'conflicted')",
                result.frames,
            )
            # The two groups read the topics apart: the store may be behind the projection.
            await _wait_db(settings, "SELECT count(*) = $1 FROM frame_events", result.events)
            await _wait_http(f"http://127.0.0.1:{port}/healthz")
            yield Stack(settings, f"http://127.0.0.1:{port}", logs)
        finally:
            for p in procs:
                p.send_signal(signal.SIGTERM)
            for p in procs:
                try:
                    p.wait(20)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    driver = chromium()
    try:
        yield driver
    finally:
        driver.quit()


@pytest_asyncio.fixture(loop_scope="session")
async def db(stack: Stack) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(stack.settings.database.url.get())
    yield conn
    await conn.close()


def css(driver: Any, selector: str) -> list[Any]:
    from selenium.webdriver.common.by import By

    return list(driver.find_elements(By.CSS_SELECTOR, selector))


def one(driver: Any, selector: str) -> Any:
    found = css(driver, selector)
    assert len(found) == 1, (selector, len(found), driver.current_url)
    return found[0]


def search_for(driver: Any, base: str, text: str) -> None:
    driver.get(base + "/ui/")
    box = one(driver, "input[name=q]")
    box.clear()
    box.send_keys(text)
    box.submit()
    wait_for_new_page(driver, box)


def wait_for_new_page(driver: Any, old: Any) -> None:
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.support.ui import WebDriverWait

    def gone(_: Any) -> bool:
        # Selenium's staleness_of catches only StaleElementReferenceException; while the
        # page is being replaced, chromedriver may instead answer "Node with given id
        # does not belong to the document", which means the same thing.
        try:
            old.is_enabled()
        except WebDriverException:
            return True
        return False

    WebDriverWait(driver, 15).until(gone)
    WebDriverWait(driver, 15).until(lambda d: d.execute_script("return document.readyState") == "complete")


async def _frame_where(db: asyncpg.Connection, where: str) -> str:
    fid = await db.fetchval(f"SELECT frame_id FROM frame_metadata m WHERE {where} ORDER BY frame_id LIMIT 1")
    assert fid, where
    return str(fid)


async def check_frame_page(driver: Any, stack: Stack, db: asyncpg.Connection, fid: str) -> list[Any]:
    """Search ``fid``, land on its page, and check what it shows against the database."""
    search_for(driver, stack.base, fid)
    assert urlsplit(driver.current_url).path == "/ui/frames/" + quote(fid, safe="")
    assert one(driver, "#frame-id").text == fid
    row = await db.fetchrow("SELECT * FROM frame_metadata WHERE frame_id = $1", fid)
    assert one(driver, "#frame-state").text == row["state"]
    stages = await db.fetch(
        "SELECT stage, attempt, status, duration_ms FROM processing_stages WHERE frame_id = $1 "
        "ORDER BY started_at, stage, attempt",
        fid,
    )
    bars = css(driver, "svg.gantt rect.bar[data-stage]")
    assert [(b.get_attribute("data-stage"), int(b.get_attribute("data-attempt"))) for b in bars] == [
        (s["stage"], s["attempt"]) for s in stages
    ]
    assert [b.get_attribute("data-status") for b in bars] == [s["status"] for s in stages]
    # The trace link is the configured template with the frame's trace.
    assert one(driver, "#trace-link").get_attribute("href") == TRACE_TEMPLATE.format(
        trace_id=row["last_trace_id"]
    )
    assert "grafana.invalid:3000/d/detektor-frame-search/" in one(driver, "#grafana-link").get_attribute(
        "href"
    )
    assert one(driver, "#api-link").get_attribute("href").endswith("/api/v1/frames/" + quote(fid, safe=""))
    # "Is this normal?": each stage beside its p95 for the hour on the frame's
    # camera, which the verdict is made on, and on every camera, from the rollups.
    hour = row["frame_timestamp"].replace(minute=0, second=0, microsecond=0)
    on_camera = {
        r["stage"]: (percentile_from_buckets(list(r["duration_buckets"]), 0.95), r["duration_count"])
        for r in await db.fetch(
            "SELECT stage, duration_buckets, duration_count FROM stage_camera_stats "
            "WHERE camera_id = $1 AND hour = $2",
            row["camera_id"],
            hour,
        )
    }
    everywhere = {
        r["stage"]: percentile_from_buckets(list(r["duration_buckets"]), 0.95)
        for r in await db.fetch("SELECT stage, duration_buckets FROM performance_stats WHERE hour = $1", hour)
    }
    assert one(driver, "#normal th.group span.camera").text == row["camera_id"]
    assert "every camera" in one(driver, "#normal th.group.all-cameras").text
    shown = css(driver, "#normal tr.stage")
    assert len(shown) == len(stages)
    for tr, s in zip(shown, stages, strict=True):
        assert tr.get_attribute("data-stage") == s["stage"]
        p95, runs = on_camera[s["stage"]]
        assert tr.find_element("css selector", "td.p95").text == fmt_ms(round(p95, 3))
        assert tr.find_element("css selector", "td.runs").text == str(runs)
        assert tr.find_element("css selector", "td.p95-all").text == fmt_ms(round(everywhere[s["stage"]], 3))
        verdict = tr.find_element("css selector", "td.verdict").text
        assert (verdict == "slower than p95") == (s["duration_ms"] > round(p95, 3)), verdict
    # Every event is listed, each with its own trace link.
    events = await db.fetchval("SELECT count(*) FROM frame_events WHERE frame_id = $1", fid)
    assert len(css(driver, "#events tbody tr")) == events
    assert len(css(driver, "#events a.trace")) == events
    return bars


async def test_completed_frame(browser: Any, stack: Stack, db: asyncpg.Connection) -> None:
    fid = await _frame_where(
        db,
        "state = 'completed' AND NOT EXISTS (SELECT 1 FROM processing_stages s "
        "WHERE s.frame_id = m.frame_id AND s.attempt > 1)",
    )
    bars = await check_frame_page(browser, stack, db, fid)
    assert [b.get_attribute("data-stage") for b in bars] == ["detect", "analyze", "notify"]
    assert not css(browser, "svg.gantt rect.bar.failed")
    assert css(browser, "svg.gantt rect.bar.wait")  # the time in the queue
    assert css(browser, "svg.gantt line.gap")  # the waits between stages
    screenshot(browser, "ui-frame")


async def test_failed_frame(browser: Any, stack: Stack, db: asyncpg.Connection) -> None:
    fid = await _frame_where(db, "state = 'failed'")
    bars = await check_frame_page(browser, stack, db, fid)
    assert bars[-1].get_attribute("class") == "bar failed"
    row = await db.fetchrow("SELECT error_type, error_message FROM frame_metadata WHERE frame_id = $1", fid)
    error = one(browser, "#frame-error").text
    assert row["error_type"] in error and row["error_message"] in error
    screenshot(browser, "ui-frame-failed")


async def test_retried_frame(browser: Any, stack: Stack, db: asyncpg.Connection) -> None:
    fid = await _frame_where(
        db,
        "state = 'completed' AND EXISTS (SELECT 1 FROM processing_stages s "
        "WHERE s.frame_id = m.frame_id AND s.attempt = 2)",
    )
    bars = await check_frame_page(browser, stack, db, fid)
    retried = [b for b in bars if b.get_attribute("data-attempt") == "2"]
    assert retried
    stage = retried[0].get_attribute("data-stage")
    attempts = [b for b in bars if b.get_attribute("data-stage") == stage]
    assert [a.get_attribute("data-status") for a in attempts] == ["failed", "completed"]
    assert "failed" in attempts[0].get_attribute("class").split()
    assert float(attempts[0].get_attribute("x")) < float(attempts[1].get_attribute("x"))
    screenshot(browser, "ui-frame-retried")


async def test_in_flight_frame_turns_final_without_a_reload(
    browser: Any, stack: Stack, db: asyncpg.Connection
) -> None:
    cfg = SimulationConfig(failure_rate=0.0, retry_rate=0.0, slow_rate=0.0)
    planned = [
        e for _, e in plan_frame(random.Random(5), cfg, "cam-live", 0.0, datetime.now(UTC), "processor/9")
    ]
    fid = planned[0].frame_id
    span_exporter()
    async with FramePublisher(stack.settings, producer_name="ui-test") as pub:
        for e in planned[:4]:  # captured, queued, processing started, first stage started
            await pub.publish(e)
        await _wait_db(
            stack.settings, "SELECT state = 'processing' FROM frame_metadata WHERE frame_id = $1", fid
        )
        search_for(browser, stack.base, fid)
        assert one(browser, "#frame-state").text == "processing"
        assert one(browser, "main#frame").get_attribute("data-live") == "1"
        assert [b.get_attribute("data-status") for b in css(browser, "svg.gantt rect.bar[data-stage]")] == [
            "running"
        ]
        browser.execute_script("window.__sameDocument = 42")
        for e in planned[4:]:
            await pub.publish(e)
    deadline = time.monotonic() + 30
    while one(browser, "#frame-state").text != "completed":
        assert time.monotonic() < deadline, "the page did not turn to completed"
        await asyncio.sleep(0.3)
    assert browser.execute_script("return window.__sameDocument") == 42, "the page was reloaded"
    assert one(browser, "main#frame").get_attribute("data-live") == "0"
    bars = css(browser, "svg.gantt rect.bar[data-stage]")
    assert [b.get_attribute("data-stage") for b in bars] == ["detect", "analyze", "notify"]
    assert {b.get_attribute("data-status") for b in bars} == {"completed"}


async def test_markup_in_ids_and_errors_shows_as_text_and_runs_nothing(
    browser: Any, stack: Stack, db: asyncpg.Connection
) -> None:
    fid = '<script>window.__xss = "frame"</script>"\'&amp;'
    camera = "<img src=x onerror=\"window.__xss = 'camera'\">"
    stage_name = "<svg onload=\"window.__xss = 'stage'\">"
    message = "<script>window.__xss = 'error'</script><b>bold?</b>"
    frame = Frame.capture(camera, frame_id=fid)
    frame.transition_to(ProcessingState.QUEUED)
    frame.transition_to(ProcessingState.PROCESSING)
    frame.start_processing_stage(stage_name).fail(FrameError("<i>EvilError</i>", message))
    frame.mark_as_failed(FrameError("<i>EvilError</i>", message))
    span_exporter()
    async with FramePublisher(stack.settings, producer_name="<b>producer</b>") as pub:
        await pub.publish_changes(frame)
    await _wait_db(stack.settings, "SELECT state = 'failed' FROM frame_metadata WHERE frame_id = $1", fid)
    requested_urls(browser)
    browser.get(stack.base + "/ui/frames/" + quote(fid, safe=""))
    assert one(browser, "#frame-id").text == fid
    assert one(browser, "#frame-camera").text == camera
    assert (
        message in one(browser, "#frame-error").text
        and "<i>EvilError</i>" in one(browser, "#frame-error").text
    )
    assert one(browser, "svg.gantt rect.bar[data-stage]").get_attribute("data-stage") == stage_name
    assert stage_name in one(browser, "svg.gantt g.stage text.label").text
    assert not css(browser, "#frame-error .message b, img, svg svg")
    assert browser.execute_script("return window.__xss") is None
    # The search page lists it the same way.
    search_for(browser, stack.base, fid[:12])
    assert fid in [a.text for a in css(browser, "a.frame-link")]
    assert browser.execute_script("return window.__xss") is None
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors


async def test_prefix_camera_and_one_click_searches(
    browser: Any, stack: Stack, db: asyncpg.Connection
) -> None:
    fid = await _frame_where(db, "camera_id = 'cam-001'")
    prefix = fid[: len("cam-001-") + 8]
    search_for(browser, stack.base, prefix)
    found = [a.text for a in css(browser, "a.frame-link")]
    expected = await db.fetch(
        "SELECT frame_id FROM frame_metadata WHERE starts_with(frame_id, $1) "
        'ORDER BY frame_id COLLATE "C" LIMIT 50',
        prefix,
    )
    assert found == [r["frame_id"] for r in expected] and fid in found
    screenshot(browser, "ui-search")
    # An unknown id says so and offers the ids closest to it.
    typo = fid[:-1] + ("x" if fid[-1] != "x" else "y")
    search_for(browser, stack.base, typo)
    assert "No frame has the id" in one(browser, "p.notice").text
    assert fid in [a.text for a in css(browser, "p.suggest a")]
    # A camera and a time range.
    driver = browser
    driver.get(stack.base + "/ui/?camera=cam-002")
    rows = css(driver, "table.frames tbody tr")
    n = await db.fetchval(
        "SELECT count(*) FROM frame_metadata WHERE camera_id = 'cam-002' "
        "AND frame_timestamp >= now() - interval '1 hour'"
    )
    assert len(rows) == min(n, 200) and n > 0
    # One click: the slowest frames of the last hour, slowest first, and the failed ones.
    driver.get(stack.base + "/ui/")
    link = one(driver, "a#slowest")
    link.click()
    wait_for_new_page(driver, link)
    totals = [r.text for r in css(driver, "table.frames tbody td.num")]
    slowest = await db.fetchval("SELECT max(total_processing_time_ms) FROM frame_metadata")
    assert totals and totals[0] == fmt_ms(round(slowest, 3))
    link = one(driver, "a#failed")
    link.click()
    wait_for_new_page(driver, link)
    states = [s.text for s in css(driver, "table.frames tbody .state")]
    assert states and set(states) <= {"failed", "conflicted"}
    screenshot(driver, "ui-search-failed")


async def test_pipeline_page(browser: Any, stack: Stack, db: asyncpg.Connection) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=stack.settings.kafka.bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(stack.settings.topics.camera, key=b"<b>poison</b>", value=b"not avro")
    finally:
        await producer.stop()
    browser.get(stack.base + "/ui/pipeline")
    deadline = time.monotonic() + 30
    while one(browser, "#dlq-size").text != "1":  # the page refreshes itself
        assert time.monotonic() < deadline, "the dead letter did not show"
        await asyncio.sleep(0.5)
    assert "DecodeError" in one(browser, "table.dlq").text or "Error" in one(browser, "table.dlq").text
    assert "<b>poison</b>" in one(browser, "table.dlq").text
    groups = css(browser, "section.group h3")
    assert groups[0].text == stack.settings.groups.event_store
    assert len(css(browser, "table.lag tbody tr")) == 2 * 2 * stack.settings.topics.partitions
    assert {r.text for r in css(browser, "#rates-camera tbody td:first-child")} >= {
        "cam-001",
        "cam-002",
        "cam-003",
    }
    assert {r.text for r in css(browser, "#rates-stage tbody td:first-child")} >= {
        "detect",
        "analyze",
        "notify",
    }
    assert "No rebuild yet" in one(browser, "#rebuild").text
    screenshot(browser, "ui-pipeline")


async def test_no_request_leaves_the_machine_and_headers_are_strict(
    browser: Any, stack: Stack, db: asyncpg.Connection
) -> None:
    fid = await _frame_where(db, "state = 'failed'")
    requested_urls(browser)
    for path in ("/ui/", "/ui/frames/" + quote(fid, safe=""), "/ui/pipeline", "/ui/?list=slow"):
        browser.get(stack.base + path)
        await asyncio.sleep(1.5)  # let polling and any late request happen
    urls = requested_urls(browser)
    # data: URLs are made in the browser (Chromium's own); nothing goes to another host.
    assert urls and all(u.startswith((stack.base + "/", "data:")) for u in urls), urls
    with urllib.request.urlopen(stack.base + "/ui/") as r:
        csp = r.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "default-src 'none'" in csp
        assert r.headers["X-Content-Type-Options"] == "nosniff"
        body = r.read().decode()
    assert "<script>" not in body and not re.search(r"<[^>]*\son[a-z]+\s*=", body), "inline script or handler"
