"""ui: the web UI's pages, server time, over the query scenario's data set
(``query_events`` stored events over the last 24 hours, ``bench.querydata``).

``tracker serve``'s application (``tracker.api.app.build_app``, as served)
runs in this process on a loopback port; a middleware outside all of the
app's own times each request from its arrival to its response being ready,
the page rendered (the server's time, not the client's). Two kinds:

* frame: ``/ui/frames/{id}`` of a random frame of any of the 24 hours (its
  journey, the hour's baselines, the page with its Gantt chart);
* search: ``/ui/?q=PREFIX``, a prefix of a random frame id cut at a random
  length from the camera's name on (``cam-007-2026`` matches thousands of ids,
  a longer one a few), answered with its first 50 matches.
"""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable
from urllib.parse import quote

import aiohttp
from aiohttp import web

from bench import querydata
from bench.infra import log, percentile, summarize
from bench.scenarios.context import Bench
from bench.scenarios.registry import scenario


@scenario("ui")
async def ui(b: Bench) -> None:
    from tracker.api.app import build_app
    from tracker.queries import FrameTrackingQueries

    sc = b.scale
    d = b.detail("ui")
    async with b.stack.scratch("ui") as s:
        info = await querydata.build(s, sc.query_events, log=log)
        fids = info.pop("frame_ids")
        d["data"] = info
        rng = random.Random(11)
        q = await FrameTrackingQueries.connect(s)
        server_ms: list[float] = []

        @web.middleware
        async def timing(
            request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
        ) -> web.StreamResponse:
            t0 = time.perf_counter()
            response = await handler(request)
            server_ms.append((time.perf_counter() - t0) * 1000.0)
            return response

        app = build_app(s, q)
        app.middlewares.insert(0, timing)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        base = f"http://127.0.0.1:{port}"

        def frame_path() -> str:
            fid = querydata.replica_frame_id(rng.choice(fids), rng.randrange(querydata.HOURS))
            return "/ui/frames/" + quote(fid, safe="")

        def search_path() -> str:
            fid = rng.choice(fids)
            return "/ui/?q=" + quote(fid[: rng.randrange(len("cam-000-2026"), len(fid) - 4)], safe="")

        kinds = {"frame": frame_path, "search": search_path}
        per: dict[str, list[float]] = {k: [] for k in kinds}
        statuses: dict[str, dict[int, int]] = {k: {} for k in kinds}
        try:
            async with aiohttp.ClientSession() as session:

                async def get(path: str, kind: str) -> float:
                    n = len(server_ms)
                    async with session.get(base + path, allow_redirects=False) as r:
                        await r.read()
                        statuses[kind][r.status] = statuses[kind].get(r.status, 0) + 1
                    assert len(server_ms) == n + 1
                    return server_ms[-1]

                for kind, make in kinds.items():  # warm-up
                    for _ in range(5):
                        await get(make(), kind)
                statuses = {k: {} for k in kinds}
                for _ in range(sc.reps):
                    for kind, make in kinds.items():
                        times = [await get(make(), kind) for _ in range(sc.query_calls)]
                        per[kind].append(percentile(times, 0.99))
                        p50s = d.setdefault("p50_ms", {}).setdefault(kind, [])
                        p50s.append(round(percentile(times, 0.5), 2))
        finally:
            await runner.cleanup()
            await q.close()
    b.put("ui_frame_p99_ms", per["frame"], 2)
    b.put("ui_search_p99_ms", per["search"], 2)
    d["p50_ms"] = {k: summarize(v)["median"] for k, v in d.get("p50_ms", {}).items()}
    d["statuses"] = {k: {str(code): n for code, n in v.items()} for k, v in statuses.items()}
    d["calls_per_rep"] = sc.query_calls
    d["method"] = (
        "tracker serve's aiohttp application in the harness process on a loopback port; server time per "
        "request (a middleware outside the app's own, arrival to response ready); frame = /ui/frames/{id} "
        "of random frames across 24 hours; search = /ui/?q=<prefix of a random id, cut at a random length "
        "from the camera's name on> (first 50 matches; an exact id is a redirect); p99 per repetition, "
        "median of repetitions"
    )
