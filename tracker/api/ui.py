"""The web UI of ``tracker serve``: find any frame in a browser.

Routes under ``/ui/``: search (``/ui/``), a frame (``/ui/frames/{id}``), the
pipeline (``/ui/pipeline``), sign-in (``/ui/login``) and the static files
(``/ui/static/``, plain CSS and JavaScript shipped in the package: no build
step, nothing fetched from elsewhere). Pages are rendered on the server
(``pages``, ``pipeline_page``, ``gantt``) from the same queries as the JSON API.

The token rule is the API's: with ``TRACKER_API_TOKEN`` set, every page needs
it. A browser cannot send a bearer header by itself, so ``/ui/login`` takes
the token once and sets an HttpOnly, SameSite=Strict cookie holding a digest
of it, which the server accepts in place of the header (``session_cookie``).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aiohttp import web

from tracker.api import pages
from tracker.api.html import Markup
from tracker.api.pipeline_page import pipeline_main, pipeline_page
from tracker.config import Settings
from tracker.errors import InvalidQuery, NotFound, TrackerError, http_status
from tracker.queries import FrameTrackingQueries
from tracker.queries.checks import is_trace_id, parse_time

log = logging.getLogger(__name__)
STATIC_DIR = Path(__file__).with_name("static")
COOKIE = "tracker_session"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# No inline script, style or handler anywhere: only this origin's files run.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
# Paths that need no token: what a browser needs to show the sign-in form.
PUBLIC_PREFIXES = ("/ui/login", "/ui/static/")


@dataclass(frozen=True)
class UiConfig:
    """What the pages link to besides this server."""

    grafana_url: str = "http://localhost:3000"


QUERIES = web.AppKey("ui_queries", FrameTrackingQueries)
SETTINGS = web.AppKey("ui_settings", Settings)
CONFIG = web.AppKey("ui_config", UiConfig)


def session_cookie(token: str) -> str:
    """The cookie's value: a digest of the token, so the cookie never holds the token itself."""
    return hmac.new(token.encode(), b"tracker-ui-session", hashlib.sha256).hexdigest()


def html(body: Markup, status: int = 200) -> web.Response:
    return web.Response(
        text=str(body),
        status=status,
        content_type="text/html",
        charset="utf-8",
        headers={"Cache-Control": "no-store"},
    )


def _html_errors(handler: Handler) -> Handler:
    """Errors as pages (the API's middleware would answer JSON)."""

    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except TrackerError as e:
            status = http_status(e)
            if status >= 500:
                log.warning("UI page %s failed: %s", request.path, type(e).__name__)
                message = "The database is unavailable; retry later." if status == 503 else "Query failed."
            else:
                message = str(e)
            return html(pages.error_page("Error", message), status)

    return wrapped


def _datetime_local(ts: datetime) -> str:
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S")


@_html_errors
async def search(request: web.Request) -> web.StreamResponse:
    q = request.app[QUERIES]
    text = request.query.get("q", "").strip()
    camera = request.query.get("camera", "").strip()
    listing = request.query.get("list", "")
    now = datetime.now(UTC).replace(microsecond=0)
    form: dict[str, Any] = {
        "q": text,
        "camera": camera,
        "since": request.query.get("since") or _datetime_local(now - timedelta(hours=1)),
        "until": request.query.get("until") or _datetime_local(now),
    }
    try:
        if listing == "slow":
            frames = await q.find_slow_frames(0.0, 1.0, limit=50)
            return html(
                pages.search_page(
                    **form,
                    heading="Slowest frames captured in the last hour",
                    results=pages.frames_table(frames, slow=True),
                )
            )
        if listing == "failed":
            frames = await q.find_failed_frames(1.0, limit=50)
            return html(
                pages.search_page(
                    **form,
                    heading="Frames captured in the last hour that failed",
                    results=pages.frames_table(frames),
                )
            )
        if text:
            frames = await q.search_frames_by_prefix(text, limit=50)
            if any(f["frame_id"] == text for f in frames):
                raise web.HTTPSeeOther(pages.frame_href(text))
            if frames:
                return html(
                    pages.search_page(
                        **form,
                        heading=f"Frames whose id starts with “{text}”",
                        results=pages.frames_table(frames),
                    )
                )
            if is_trace_id(text):
                frames = await q.search_frames_by_trace_id(text, limit=50)
                if len(frames) == 1:
                    raise web.HTTPSeeOther(pages.frame_href(frames[0]["frame_id"]))
                if frames:
                    return html(
                        pages.search_page(
                            **form,
                            heading=f"Frames of trace {text.lower()}",
                            results=pages.frames_table(frames),
                        )
                    )
            suggestions = await q.suggest_frame_ids(text)
            return html(
                pages.search_page(
                    **form,
                    notice=f"No frame has the id or an id starting with “{text}”"
                    + (", nor an event of that trace." if is_trace_id(text) else "."),
                    suggestions=suggestions,
                ),
                404,
            )
        if camera:
            since = parse_time("since", form["since"])
            until = parse_time("until", form["until"])
            frames = await q.search_frames_by_camera(camera, since, until, limit=200)
            return html(
                pages.search_page(
                    **form,
                    heading=f"Frames of camera {camera} captured from {since:%Y-%m-%d %H:%M:%S} "
                    f"to {until:%Y-%m-%d %H:%M:%S} UTC (latest first)",
                    results=pages.frames_table(frames),
                )
            )
    except InvalidQuery as e:
        return html(pages.search_page(**form, notice=str(e)), 400)
    return html(pages.search_page(**form))


@_html_errors
async def frame(request: web.Request) -> web.StreamResponse:
    q = request.app[QUERIES]
    frame_id = request.match_info["frame_id"]
    try:
        journey = await q.get_frame_journey(frame_id)
    except NotFound:
        suggestions = await q.suggest_frame_ids(frame_id)
        return html(
            pages.search_page(
                q=frame_id, notice=f"No frame has the id “{frame_id}”.", suggestions=suggestions
            ),
            404,
        )
    base = None
    if journey.get("frame_timestamp"):
        base = await q.get_baselines(journey["camera_id"], datetime.fromisoformat(journey["frame_timestamp"]))
    main = pages.frame_main(
        journey,
        base,
        now=datetime.now(UTC),
        grafana_url=request.app[CONFIG].grafana_url,
        trace_url=q.trace_link,
    )
    if request.query.get("part") == "main":
        return html(main)
    return html(pages.frame_page(main, frame_id))


@_html_errors
async def pipeline(request: web.Request) -> web.StreamResponse:
    from tracker.adapters.dead_letters import latest_dead_letters
    from tracker.queries.status import collect_status

    q = request.app[QUERIES]
    settings = request.app[SETTINGS]
    status: dict[str, Any] | None = None
    error = ""
    letters: list[dict[str, Any]] = []
    cameras, stages = await asyncio.gather(q.get_camera_stats(1.0), q.get_stage_performance(1.0))
    try:
        st = await asyncio.wait_for(collect_status(settings), 10.0)
        status = st.to_json()
        if st.dlq_records:
            latest = await latest_dead_letters(settings.kafka, settings.topics, limit=10)
            letters = [d.to_json() for d in latest]
    except (TimeoutError, TrackerError) as e:
        error = "Kafka or PostgreSQL did not answer" if isinstance(e, TimeoutError) else str(e)
    main = pipeline_main(status, error, letters, cameras, stages)
    if request.query.get("part") == "main":
        return html(main)
    return html(pipeline_page(main))


def _next_path(raw: str | None) -> str:
    # Only back into the UI: never an open redirect to another site.
    return raw if raw and raw.startswith("/ui/") and not raw.startswith("//") else "/ui/"


async def login_form(request: web.Request) -> web.StreamResponse:
    return html(pages.login_page(_next_path(request.query.get("next"))))


async def login(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    token = request.app[SETTINGS].api.token.get()
    given = str(form.get("token", ""))
    target = _next_path(str(form.get("next", "")))
    if not token:
        raise web.HTTPSeeOther(target)
    if not hmac.compare_digest(given.encode(), token.encode()):
        return html(pages.login_page(target, wrong=True), 401)
    response = web.Response(status=303, headers={"Location": target})
    response.set_cookie(
        COOKIE, session_cookie(token), httponly=True, samesite="Strict", path="/", secure=request.secure
    )
    return response


async def root(request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound("/ui/")


def add_routes(
    app: web.Application, settings: Settings, queries: FrameTrackingQueries, config: UiConfig
) -> None:
    app[QUERIES] = queries
    app[SETTINGS] = settings
    app[CONFIG] = config
    app.router.add_get("/", root)
    app.router.add_get("/ui/", search)
    app.router.add_get("/ui/frames/{frame_id:.+}", frame)
    app.router.add_get("/ui/pipeline", pipeline)
    app.router.add_get("/ui/login", login_form)
    app.router.add_post("/ui/login", login)
    app.router.add_static("/ui/static/", STATIC_DIR, append_version=False)


def is_ui_path(path: str) -> bool:
    return path == "/" or path.startswith("/ui/")
