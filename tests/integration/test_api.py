"""The HTTP API against a real database: the OpenAPI document is checked
against the running server, bad requests get 4xx, tokens are enforced."""

from __future__ import annotations

import copy
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import jsonschema
import pytest_asyncio

from tests.integration.helpers import api_server, consume_until_idle, project_until_idle, publish_simulation
from tracker.api.app import build_app
from tracker.config import Secret, Settings

SPEC = json.loads((Path(__file__).resolve().parents[2] / "tracker/api/openapi.json").read_text())


def _resolve(node: Any) -> Any:
    """Inline ``#/components/schemas/...`` references."""
    if isinstance(node, dict):
        if "$ref" in node:
            return _resolve(copy.deepcopy(SPEC["components"]["schemas"][node["$ref"].rsplit("/", 1)[1]]))
        return {k: _resolve(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_resolve(v) for v in node]
    return node


def check_against_spec(path: str, status: int, body: Any) -> None:
    responses = SPEC["paths"][path]["get"]["responses"]
    assert str(status) in responses, f"{path}: undocumented status {status}"
    schema = responses[str(status)]["content"]
    media = next(iter(schema.values()))["schema"]
    jsonschema.validate(body, _resolve(media), cls=jsonschema.Draft202012Validator)


class Server:
    def __init__(self, base: str, session: aiohttp.ClientSession) -> None:
        self.base = base
        self.session = session

    async def get(self, path: str, token: str | None = None, **params: Any) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with self.session.get(self.base + path, params=params, headers=headers) as r:
            text = await r.text()
            try:
                return r.status, json.loads(text)
            except json.JSONDecodeError:
                return r.status, text


@pytest_asyncio.fixture
async def server(settings: Settings) -> AsyncIterator[Server]:
    await publish_simulation(settings, cameras=2, fps=20, duration_s=3, seed=71, failure_rate=0.2)
    await consume_until_idle(settings)
    await project_until_idle(settings)
    async with api_server(settings) as base, aiohttp.ClientSession() as session:
        yield Server(base, session)


async def test_every_documented_endpoint_answers_as_documented(server: Server, db) -> None:  # type: ignore[no-untyped-def]
    failed = await db.fetchval("SELECT frame_id FROM frame_metadata WHERE state = 'failed' LIMIT 1")
    calls = {
        "/healthz": ("/healthz", {}),
        "/readyz": ("/readyz", {}),
        "/metrics": ("/metrics", {}),
        "/openapi.json": ("/openapi.json", {}),
        "/api/v1/frames/{frame_id}": (f"/api/v1/frames/{quote(failed, safe='')}", {}),
        "/api/v1/frames": ("/api/v1/frames", {"prefix": failed[:10]}),
        "/api/v1/failed-frames": ("/api/v1/failed-frames", {"hours": "1"}),
        "/api/v1/stats/baselines": ("/api/v1/stats/baselines", {"camera_id": "cam-001"}),
        "/api/v1/slow-frames": ("/api/v1/slow-frames", {"threshold_ms": "100", "hours": "1"}),
        "/api/v1/failures": ("/api/v1/failures", {"hours": "24"}),
        "/api/v1/anomalies": ("/api/v1/anomalies", {"hours": "1"}),
        "/api/v1/stats/cameras": ("/api/v1/stats/cameras", {"hours": "1"}),
        "/api/v1/stats/stages": ("/api/v1/stats/stages", {}),
    }
    assert set(calls) == set(SPEC["paths"]), "every documented path is exercised"
    for spec_path, (url, params) in calls.items():
        status, body = await server.get(url, **params)
        assert status == 200, (url, status, body)
        if spec_path == "/metrics":
            assert "tracker_frame_processing_duration_seconds_bucket" in body
            assert body.rstrip().endswith("# EOF")
            continue
        check_against_spec(spec_path, status, body)
    status, body = await server.get(f"/api/v1/frames/{quote(failed, safe='')}")
    assert body["state"] == "failed" and body["error"]["type"]
    assert body["trace"]["url"].endswith(body["trace"]["trace_id"])
    status, body = await server.get("/api/v1/slow-frames", threshold_ms="0", limit="3")
    assert len(body["frames"]) == 3
    status, body = await server.get("/api/v1/frames", prefix=failed)
    assert [f["frame_id"] for f in body["frames"]][:1] == [failed] and body["suggestions"] == []
    status, body = await server.get("/api/v1/frames", prefix=failed[:-1] + "~")
    assert status == 200 and body["frames"] == [] and body["suggestions"]
    check_against_spec("/api/v1/frames", status, body)
    camera = await db.fetchval("SELECT camera_id FROM frame_metadata WHERE frame_id = $1", failed)
    now = datetime.now(UTC)
    since, until = (now - timedelta(hours=2)).isoformat(), (now + timedelta(hours=1)).isoformat()
    status, body = await server.get(
        "/api/v1/frames", camera_id=camera, since=since, until=until, limit="1000"
    )
    assert status == 200 and len(body["frames"]) == await db.fetchval(
        "SELECT count(*) FROM frame_metadata WHERE camera_id = $1", camera
    )
    check_against_spec("/api/v1/frames", status, body)
    status, body = await server.get("/api/v1/failed-frames", hours="1", limit="1000")
    assert {f["frame_id"] for f in body["frames"]} == {
        r["frame_id"]
        for r in await db.fetch("SELECT frame_id FROM frame_metadata WHERE failed_at IS NOT NULL")
    }
    status, body = await server.get("/api/v1/stats/baselines", camera_id=camera)
    assert {s["stage"] for s in body["stages"]} == {"detect", "analyze", "notify"}
    assert body["camera"]["count"] == await db.fetchval(
        "SELECT count(*) FROM frame_metadata WHERE camera_id = $1 AND total_processing_time_ms IS NOT NULL",
        camera,
    )
    # Each stage on this camera, and on every camera: the timed runs of each.
    timed = "duration_ms IS NOT NULL AND status <> 'running'"
    on_camera = await db.fetch(
        f"SELECT stage, count(*) AS n FROM processing_stages WHERE camera_id = $1 AND {timed} "
        "GROUP BY stage ORDER BY stage",
        camera,
    )
    everywhere = await db.fetch(
        f"SELECT stage, count(*) AS n FROM processing_stages WHERE {timed} GROUP BY stage ORDER BY stage"
    )
    assert [(s["stage"], s["count"]) for s in body["camera_stages"]] == [
        (r["stage"], r["n"]) for r in on_camera
    ]
    assert [(s["stage"], s["count"]) for s in body["stages"]] == [(r["stage"], r["n"]) for r in everywhere]
    assert sum(r["n"] for r in on_camera) < sum(r["n"] for r in everywhere)  # more than one camera


async def test_every_route_is_documented(settings: Settings) -> None:
    """Every API route; the web UI's pages (/, /ui/...) are HTML for people, not API."""
    app = build_app(settings, queries=None)  # type: ignore[arg-type]
    routes = {r.resource.canonical for r in app.router.routes() if r.method == "GET"}  # type: ignore[union-attr]
    assert {r for r in routes if r != "/" and not r.startswith("/ui")} == set(SPEC["paths"])


async def test_bad_requests_get_4xx_and_leave_the_database_alone(server: Server, db) -> None:  # type: ignore[no-untyped-def]
    before = await db.fetchval("SELECT count(*) FROM frame_events")
    cases = [
        ("/api/v1/frames/" + quote("no-such-frame"), {}, 404),
        ("/api/v1/frames/" + quote("x' OR '1'='1", safe=""), {}, 404),
        ("/api/v1/frames/" + quote("'; DROP TABLE frame_events; --", safe=""), {}, 404),
        ("/api/v1/frames/" + quote("bad\nid", safe=""), {}, 400),
        ("/api/v1/frames/" + "x" * 300, {}, 400),
        ("/api/v1/slow-frames", {"hours": "-1"}, 400),
        ("/api/v1/slow-frames", {"hours": "0"}, 400),
        ("/api/v1/slow-frames", {"hours": "1; DROP TABLE frame_events"}, 400),
        ("/api/v1/slow-frames", {"hours": "nan"}, 400),
        ("/api/v1/slow-frames", {"limit": "100000"}, 400),
        ("/api/v1/slow-frames", {"limit": "-3"}, 400),
        ("/api/v1/slow-frames", {"limit": "1e9"}, 400),
        ("/api/v1/slow-frames", {"threshold_ms": "-1"}, 400),
        ("/api/v1/slow-frames", {"camera_id": "c" * 500}, 400),
        ("/api/v1/failures", {"hours": "1e12"}, 400),
        ("/api/v1/stats/cameras", {"hours": "inf"}, 400),
        ("/api/v1/stats/stages", {"hours": ""}, 400),
        ("/api/v1/frames", {}, 400),
        ("/api/v1/frames", {"prefix": "a", "camera_id": "b"}, 400),
        ("/api/v1/frames", {"prefix": "bad\nid"}, 400),
        ("/api/v1/frames", {"camera_id": "cam-001"}, 400),
        ("/api/v1/frames", {"camera_id": "cam-001", "since": "yesterday"}, 400),
        (
            "/api/v1/frames",
            {"camera_id": "cam-001", "since": "2026-01-02T00:00:00Z", "until": "2026-01-01"},
            400,
        ),
        ("/api/v1/failed-frames", {"hours": "0"}, 400),
        ("/api/v1/stats/baselines", {}, 400),
        ("/api/v1/stats/baselines", {"camera_id": "c", "at": "soon"}, 400),
        ("/api/v1/nothing-here", {}, 404),
    ]
    for url, params, want in cases:
        status, body = await server.get(url, **params)
        assert status == want, (url, params, status, body)
        assert isinstance(body, dict) and body["error"] and "Traceback" not in body["error"]
        if url.split("?")[0] in SPEC["paths"] or url.startswith("/api/v1/frames/"):
            spec_path = "/api/v1/frames/{frame_id}" if url.startswith("/api/v1/frames/") else url
            check_against_spec(spec_path, status, body)
    assert await db.fetchval("SELECT count(*) FROM frame_events") == before


async def test_bearer_token_guards_everything_but_healthz(settings: Settings) -> None:
    secured = Settings.from_env(
        database_url=settings.database.url,
        topic_prefix=settings.topics.prefix,
        group_prefix=settings.groups.prefix,
        api_token=Secret("s3cret-token"),
    )
    async with api_server(secured) as base:
        async with aiohttp.ClientSession() as session:
            s = Server(base, session)
            assert (await s.get("/healthz"))[0] == 200
            for path in ("/readyz", "/metrics", "/openapi.json", "/api/v1/failures", "/api/v1/frames/x"):
                assert (await s.get(path))[0] == 401, path
                assert (await s.get(path, token="wrong"))[0] == 401, path
            assert (await s.get("/api/v1/failures", token="s3cret-token"))[0] == 200
            status, body = await s.get("/readyz", token="s3cret-token")
            assert status == 200 and body == {
                "ready": True,
                "checks": {"postgresql": {"ok": True}, "kafka": {"ok": True}},
            }
            # The web UI: same token, given once to the sign-in form, kept as a cookie.
            for path in ("/ui/", "/ui/pipeline", "/ui/frames/x"):
                async with session.get(s.base + path, allow_redirects=False) as r:
                    assert r.status == 303 and r.headers["Location"].startswith("/ui/login?next="), path
            async with session.get(s.base + "/ui/static/ui.css") as r:
                assert r.status == 200  # the sign-in page's own files need no token
            async with session.post(s.base + "/ui/login", data={"token": "wrong", "next": "/ui/"}) as r:
                assert r.status == 401 and "Wrong token" in await r.text()
            async with session.post(
                s.base + "/ui/login",
                data={"token": "s3cret-token", "next": "https://elsewhere.example/"},
                allow_redirects=False,
            ) as r:
                assert r.status == 303 and r.headers["Location"] == "/ui/"  # never off-site
                cookie = r.cookies["tracker_session"]
                assert cookie["httponly"] and cookie["samesite"] == "Strict"
                assert "s3cret-token" not in cookie.value
            # (aiohttp's cookie jar keeps no cookie of an IP address: sent by hand, as a browser would.)
            jar = {"tracker_session": cookie.value}
            async with session.get(s.base + "/ui/pipeline", cookies=jar, allow_redirects=False) as r:
                assert r.status == 200 and 'id="pipeline"' in await r.text()
            async with session.get(s.base + "/api/v1/failures", cookies=jar) as r:
                assert r.status == 200  # the cookie stands for the token
        async with aiohttp.ClientSession() as other:
            forged = {"tracker_session": "0" * 64}
            async with other.get(base + "/api/v1/failures", cookies=forged) as r:
                assert r.status == 401
