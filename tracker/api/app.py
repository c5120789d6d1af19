"""``tracker serve``: the HTTP JSON API, ``/metrics``, ``/healthz``, ``/readyz``
and the web UI (``/ui/``, :mod:`tracker.api.ui`).

Bound to 127.0.0.1 unless told otherwise. With ``TRACKER_API_TOKEN`` set,
every endpoint but ``/healthz`` requires ``Authorization: Bearer <token>``,
or the UI's session cookie that ``/ui/login`` sets for that token (the
sign-in form and the UI's static files need neither).
Bad parameters get a 4xx with a one-line message; a database outage gets 503;
nothing returns a stack trace. The endpoints are documented in
``tracker/api/openapi.json``, which a test checks against the running server.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import math
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from tracker.api import ui
from tracker.config import KafkaSettings, Settings
from tracker.errors import InvalidQuery, TrackerError, http_status
from tracker.metrics import exposition
from tracker.queries import FrameTrackingQueries
from tracker.queries.checks import parse_time

log = logging.getLogger(__name__)
OPENAPI_PATH = Path(__file__).with_name("openapi.json")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

QUERIES = web.AppKey("queries", FrameTrackingQueries)
SETTINGS = web.AppKey("settings", Settings)
READINESS = web.AppKey("readiness", object)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _dumps(obj: Any) -> str:
    return json.dumps(obj, default=str)


def _float_param(request: web.Request, name: str, default: float | None = None) -> float:
    raw = request.query.get(name)
    if raw is None:
        if default is None:
            raise InvalidQuery(f"missing query parameter {name}")
        return default
    try:
        value = float(raw)
    except ValueError:
        raise InvalidQuery(f"{name} must be a number") from None
    if not math.isfinite(value):
        raise InvalidQuery(f"{name} must be finite")
    return value


def _int_param(request: web.Request, name: str, default: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise InvalidQuery(f"{name} must be a whole number") from None


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as e:
        if e.status >= 400:
            return _error(e.status, e.reason or "error")
        raise
    except Exception as e:
        # The status comes from tracker.errors (the CLI's exit codes too); 4xx
        # messages are the client's to read, 5xx ones say nothing internal.
        status = http_status(e)
        if status < 500:
            return _error(status, str(e))
        if status == 503:
            log.warning("database unavailable while serving %s", request.path)
            return _error(503, "database unavailable; retry later")
        if isinstance(e, TrackerError):
            log.error("query failed on %s: %s", request.path, e)
            return _error(500, "query failed")
        log.exception("unexpected error on %s", request.path)
        return _error(500, "internal error")


@web.middleware
async def security_headers_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        response = await handler(request)
    except web.HTTPException as e:  # redirects raised by handlers carry the headers too
        e.headers.update(ui.SECURITY_HEADERS)
        raise
    response.headers.update(ui.SECURITY_HEADERS)
    return response


def auth_middleware(token: str) -> Any:
    expected = f"Bearer {token}".encode()
    cookie = ui.session_cookie(token).encode() if token else b""

    def authorized(request: web.Request) -> bool:
        given = request.headers.get("Authorization", "").encode()
        by_cookie = request.cookies.get(ui.COOKIE, "").encode()
        # Both compared in constant time, whichever is given.
        return hmac.compare_digest(given, expected) | hmac.compare_digest(by_cookie, cookie)

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        public = request.path == "/healthz" or request.path.startswith(ui.PUBLIC_PREFIXES)
        if token and not public:
            if not authorized(request):
                if ui.is_ui_path(request.path) and request.method == "GET":
                    raise web.HTTPSeeOther("/ui/login?" + urlencode({"next": request.path_qs}))
                return web.json_response(
                    {"error": "missing or wrong bearer token"},
                    status=401,
                    headers={"WWW-Authenticate": "Bearer"},
                )
        return await handler(request)

    return check


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    checker = request.app[READINESS]
    checks = await checker.check()  # type: ignore[attr-defined]
    ok = all(c["ok"] for c in checks.values())
    return web.json_response({"ready": ok, "checks": checks}, status=200 if ok else 503)


async def metrics(request: web.Request) -> web.Response:
    body, content_type = exposition()
    return web.Response(body=body, headers={"Content-Type": content_type})


async def openapi(request: web.Request) -> web.Response:
    return web.Response(text=OPENAPI_PATH.read_text(), content_type="application/json")


async def journey(request: web.Request) -> web.Response:
    q = request.app[QUERIES]
    return web.json_response(await q.get_frame_journey(request.match_info["frame_id"]), dumps=_dumps)


async def slow_frames(request: web.Request) -> web.Response:
    q = request.app[QUERIES]
    camera = request.query.get("camera_id")
    rows = await q.find_slow_frames(
        _float_param(request, "threshold_ms", 1000.0),
        _float_param(request, "hours", 1.0),
        camera_id=camera,
        limit=_int_param(request, "limit", 100),
    )
    return web.json_response({"frames": rows}, dumps=_dumps)


async def failures(request: web.Request) -> web.Response:
    q = request.app[QUERIES]
    return web.json_response(await q.get_failure_analysis(_float_param(request, "hours", 24.0)), dumps=_dumps)


async def anomalies(request: web.Request) -> web.Response:
    q = request.app[QUERIES]
    found = await q.find_anomalies(
        _float_param(request, "hours", 1.0), limit=_int_param(request, "limit", 100)
    )
    return web.json_response(found, dumps=_dumps)


async def camera_stats(request: web.Request) -> web.Response:
    q = request.app[QUERIES]
    return web.json_response(
        {"cameras": await q.get_camera_stats(_float_param(request, "hours", 1.0))}, dumps=_dumps
    )


async def stage_stats(request: web.Request) -> web.Response:
    q = request.app[QUERIES]
    return web.json_response(
        {"stages": await q.get_stage_performance(_float_param(request, "hours", 1.0))}, dumps=_dumps
    )


async def search_frames(request: web.Request) -> web.Response:
    q = request.app[QUERIES]
    limit = _int_param(request, "limit", 50)
    prefix = request.query.get("prefix")
    camera = request.query.get("camera_id")
    trace_id = request.query.get("trace_id")
    if trace_id is not None and prefix is None and camera is None:
        frames = await q.search_frames_by_trace_id(trace_id, limit=limit)
        return web.json_response({"frames": frames, "suggestions": []}, dumps=_dumps)
    if trace_id is not None:
        raise InvalidQuery("give trace_id alone, without prefix or camera_id")
    if prefix is not None and camera is None:
        frames = await q.search_frames_by_prefix(prefix, limit=limit)
        suggestions = [] if frames else await q.suggest_frame_ids(prefix)
        return web.json_response({"frames": frames, "suggestions": suggestions}, dumps=_dumps)
    if camera is not None and prefix is None:
        until = parse_time("until", request.query["until"]) if "until" in request.query else datetime.now(UTC)
        if "since" not in request.query:
            raise InvalidQuery("missing query parameter since")
        since = parse_time("since", request.query["since"])
        frames = await q.search_frames_by_camera(camera, since, until, limit=limit)
        return web.json_response({"frames": frames, "suggestions": []}, dumps=_dumps)
    raise InvalidQuery("give prefix, or trace_id, or camera_id and since (and until)")


async def failed_frames(request: web.Request) -> web.Response:
    q = request.app[QUERIES]
    rows = await q.find_failed_frames(
        _float_param(request, "hours", 1.0), limit=_int_param(request, "limit", 50)
    )
    return web.json_response({"frames": rows}, dumps=_dumps)


async def baselines(request: web.Request) -> web.Response:
    q = request.app[QUERIES]
    camera = request.query.get("camera_id")
    if camera is None:
        raise InvalidQuery("missing query parameter camera_id")
    at = parse_time("at", request.query["at"]) if "at" in request.query else datetime.now(UTC)
    return web.json_response(await q.get_baselines(camera, at), dumps=_dumps)


class Readiness:
    """Kafka and PostgreSQL reachability, each with a short timeout."""

    def __init__(self, kafka: KafkaSettings, queries: FrameTrackingQueries) -> None:
        self.kafka = kafka
        self.queries = queries

    async def check(self) -> dict[str, dict[str, Any]]:
        pg, kafka = await asyncio.gather(self._pg(), self._kafka())
        return {"postgresql": pg, "kafka": kafka}

    async def _pg(self) -> dict[str, Any]:
        try:
            await asyncio.wait_for(self.queries.ping(), 2.0)
            return {"ok": True}
        except (TimeoutError, TrackerError) as e:
            return {"ok": False, "error": type(e).__name__}

    async def _kafka(self) -> dict[str, Any]:
        from tracker.adapters.kafka import make_admin

        admin = make_admin(self.kafka, role="status")
        try:
            await asyncio.wait_for(admin.start(), 3.0)
            await asyncio.wait_for(admin.list_topics(), 2.0)
            return {"ok": True}
        except Exception as e:  # any failure to talk to Kafka means "not ready"
            return {"ok": False, "error": type(e).__name__}
        finally:
            try:
                await asyncio.wait_for(admin.close(), 2.0)
            except Exception:  # closing a half-open client may fail too
                log.debug("admin close failed", exc_info=True)


def build_app(
    settings: Settings, queries: FrameTrackingQueries, ui_config: ui.UiConfig | None = None
) -> web.Application:
    app = web.Application(
        middlewares=[
            security_headers_middleware,
            errors_middleware,
            auth_middleware(settings.api.token.get()),
        ],
        client_max_size=64 * 1024,
    )
    app[QUERIES] = queries
    app[SETTINGS] = settings
    app[READINESS] = Readiness(settings.kafka, queries)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/openapi.json", openapi)
    app.router.add_get("/api/v1/frames", search_frames)
    app.router.add_get("/api/v1/frames/{frame_id}", journey)
    app.router.add_get("/api/v1/failed-frames", failed_frames)
    app.router.add_get("/api/v1/stats/baselines", baselines)
    app.router.add_get("/api/v1/slow-frames", slow_frames)
    app.router.add_get("/api/v1/failures", failures)
    app.router.add_get("/api/v1/anomalies", anomalies)
    app.router.add_get("/api/v1/stats/cameras", camera_stats)
    app.router.add_get("/api/v1/stats/stages", stage_stats)
    ui.add_routes(app, settings, queries, ui_config or ui.UiConfig())
    return app


async def serve(
    settings: Settings,
    *,
    host: str | None = None,
    port: int | None = None,
    ready: asyncio.Event | None = None,
    stop: asyncio.Event | None = None,
    ui_config: ui.UiConfig | None = None,
) -> None:
    """Run until ``stop`` is set (or forever)."""
    from tracker.adapters.progress import periodically
    from tracker.queries.status import collect_status

    queries = await FrameTrackingQueries.connect(settings)
    runner = web.AppRunner(build_app(settings, queries, ui_config), access_log=None)
    await runner.setup()

    async def refresh_status_metrics() -> None:
        await collect_status(settings)  # exports lag, DLQ size, rebuild and rate gauges

    # Pipeline-wide gauges (lag per partition, DLQ size, rebuild running, events/s)
    # on this process's /metrics, whether or not the workers expose theirs.
    status_task = asyncio.create_task(periodically(refresh_status_metrics, 15.0))
    try:
        host = host or settings.api.host
        port = port if port is not None else settings.api.port
        site = web.TCPSite(runner, host, port)
        await site.start()
        log.info("serving on http://%s:%s", host, port)
        if ready is not None:
            ready.set()
        await (stop or asyncio.Event()).wait()
    finally:
        status_task.cancel()
        await runner.cleanup()
        await queries.close()
