"""The web UI's pages as HTML: search, frame, pipeline and login.

Each function takes what the read side returned and gives markup built with
``tracker.api.html.render`` (every value escaped). No inline script, style or
event handler: ``static/ui.js`` and ``static/ui.css`` are the only code, so the
Content-Security-Policy can be ``script-src 'self'``. A section that updates
live (a frame still in flight, the pipeline) is one ``<main>`` carrying
``data-poll`` (its own URL with ``?part=main``); ui.js re-reads it and swaps it
in until ``data-live`` turns ``0``.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from tracker.api.gantt import gantt
from tracker.api.html import DASH, Markup, esc, fmt_ms, fmt_time, join, path_part, render, safe_url
from tracker.queries.shaping import describe_anomaly

FINAL_STATES = ("completed", "failed", "conflicted")


def layout(title: str, main: Markup, *, active: str = "") -> Markup:
    def nav(href: str, name: str, key: str) -> Markup:
        cls = ' class="active"' if key == active else ""
        return render('<a href="{href}"' + cls + ">{name}</a>", href=href, name=name)

    return render(
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        "<title>{title} · detektor-tracker</title>"
        '<link rel="icon" href="/ui/static/favicon.svg" type="image/svg+xml">'
        '<link rel="stylesheet" href="/ui/static/ui.css">'
        '<script src="/ui/static/ui.js" defer></script></head>'
        '<body><header class="top"><span class="brand">detektor-tracker</span>'
        "<nav>{search}{pipeline}</nav></header>{main}</body></html>",
        title=title,
        search=nav("/ui/", "Search", "search"),
        pipeline=nav("/ui/pipeline", "Pipeline", "pipeline"),
        main=main,
    )


def frame_href(frame_id: str) -> str:
    return "/ui/frames/" + path_part(frame_id)


def state_badge(state: str | None) -> Markup:
    return render(
        '<span class="state {s}">{label}</span>', s=state or "unknown", label=state or "not projected"
    )


# ---- search ------------------------------------------------------------------


def frames_table(frames: Sequence[dict[str, Any]], *, slow: bool = False) -> Markup:
    if not frames:
        return render('<p class="empty">No frames.</p>')
    head = "<th>stage taking longest</th>" if slow else "<th>error</th>"
    rows = []
    for f in frames:
        extra = (
            render(
                "<td>{st} {ms}</td>", st=f.get("slowest_stage") or DASH, ms=fmt_ms(f.get("slowest_stage_ms"))
            )
            if slow
            else render(
                "<td>{err}</td>",
                err=f"{f['error_type']} in {f.get('error_stage') or '?'}" if f.get("error_type") else "",
            )
        )
        rows.append(
            render(
                '<tr><td><a class="frame-link" href="{href}">{fid}</a></td><td>{cam}</td>'
                '<td>{ts}</td><td>{state}</td><td class="num">{total}</td>{extra}</tr>',
                href=frame_href(f["frame_id"]),
                fid=f["frame_id"],
                cam=f["camera_id"],
                ts=fmt_time(f["frame_timestamp"]),
                state=state_badge(f["state"]),
                total=fmt_ms(f["total_processing_time_ms"]),
                extra=extra,
            )
        )
    return render(
        '<table class="frames"><thead><tr><th>frame</th><th>camera</th><th>captured</th>'
        '<th>state</th><th class="num">total</th>' + head + "</tr></thead><tbody>{rows}</tbody></table>",
        rows=join(rows),
    )


def search_page(
    *,
    q: str = "",
    camera: str = "",
    since: str = "",
    until: str = "",
    heading: str = "",
    results: Markup | None = None,
    notice: str = "",
    suggestions: Sequence[str] = (),
) -> Markup:
    did_you_mean = Markup("")
    if suggestions:
        did_you_mean = render(
            '<p class="suggest">Close ids: {links}</p>',
            links=join(
                (render('<a href="{h}">{fid}</a>', h=frame_href(s), fid=s) for s in suggestions), ", "
            ),
        )
    main = render(
        '<main id="search"><h1>Find a frame</h1>'
        '<form class="search" method="get" action="/ui/"><label>Frame id, prefix or trace id '
        '<input type="search" name="q" value="{q}" required maxlength="256" autofocus '
        'placeholder="cam-001-2026…"></label><button type="submit">Find</button></form>'
        '<form class="search" method="get" action="/ui/"><label>Camera '
        '<input type="text" name="camera" value="{camera}" required maxlength="128"></label>'
        '<label>from (UTC) <input type="datetime-local" step="1" name="since" value="{since}"></label>'
        '<label>to (UTC) <input type="datetime-local" step="1" name="until" value="{until}"></label>'
        '<button type="submit">List</button></form>'
        '<p class="quick">Last hour: <a id="slowest" href="/ui/?list=slow">slowest frames</a> · '
        '<a id="failed" href="/ui/?list=failed">failed frames</a></p>'
        "{notice}{did_you_mean}{heading}{results}</main>",
        q=q,
        camera=camera,
        since=since,
        until=until,
        notice=render('<p class="notice">{n}</p>', n=notice) if notice else Markup(""),
        did_you_mean=did_you_mean,
        heading=render("<h2>{h}</h2>", h=heading) if heading else Markup(""),
        results=results or Markup(""),
    )
    return layout("Search", main, active="search")


# ---- one frame -----------------------------------------------------------------


def _links(j: dict[str, Any], grafana_url: str) -> Markup:
    fid = j["frame_id"]
    trace = j.get("trace")
    links = []
    if trace:
        links.append(
            render(
                '<a id="trace-link" href="{u}" rel="noreferrer">Trace in Jaeger</a>', u=safe_url(trace["url"])
            )
        )
    dash = f"{grafana_url.rstrip('/')}/d/detektor-frame-search/frame-search?var-frame_id={path_part(fid)}"
    links.append(
        render(
            '<a id="grafana-link" href="{u}" rel="noreferrer">Logs and dashboard in Grafana</a>',
            u=safe_url(dash),
        )
    )
    links.append(render('<a id="api-link" href="{u}">API JSON</a>', u="/api/v1/frames/" + path_part(fid)))
    return render('<nav class="links">{l}</nav>', l=join(links, " · "))


def _header(j: dict[str, Any]) -> Markup:
    ts = j.get("timestamps") or {}
    err = j.get("error")
    error = (
        render(
            '<dt>error</dt><dd id="frame-error"><b>{t}</b> in {st}: <span class="message">{m}</span></dd>',
            t=err["type"],
            st=err.get("stage") or "?",
            m=err.get("message") or "",
        )
        if err
        else Markup("")
    )
    return render(
        '<dl class="header"><dt>state</dt><dd id="frame-state">{state}</dd>'
        '<dt>camera</dt><dd id="frame-camera"><a href="{cam_href}">{cam}</a></dd>'
        '<dt>captured at</dt><dd>{captured}</dd><dt>total time</dt><dd id="frame-total">{total}</dd>'
        "{error}</dl>",
        state=state_badge(j.get("state")),
        cam_href="/ui/?camera=" + path_part(j["camera_id"]),
        cam=j["camera_id"],
        captured=fmt_time(ts.get("captured_at") or j.get("frame_timestamp")),
        total=fmt_ms(j.get("total_processing_time_ms")),
        error=error,
    )


def _verdict(ms: float | None, p50: float | None, p95: float | None) -> Markup:
    if ms is None or p95 is None or p50 is None:
        return render('<td class="verdict unknown">no baseline</td>')
    if ms > p95:
        return render('<td class="verdict above-p95">slower than p95</td>')
    if ms > p50:
        return render('<td class="verdict above-p50">slower than median</td>')
    return render('<td class="verdict normal">normal</td>')


_NO_BASELINE: dict[str, Any] = {"p50_ms": None, "p95_ms": None, "count": 0}


def _normal(j: dict[str, Any], base: dict[str, Any] | None) -> Markup:
    """Each stage beside that hour's p50/p95 of the same stage on this frame's
    camera (the verdict), and on every camera; the total beside the camera's."""
    if base is None:
        return render('<p class="empty">No rollup for this hour yet.</p>')
    on_camera = {s["stage"]: s for s in base["camera_stages"]}
    everywhere = {s["stage"]: s for s in base["stages"]}
    row = (
        '<td class="num">{ms}</td><td class="num p50">{p50}</td><td class="num p95">{p95}</td>'
        '<td class="num runs">{n}</td>{v}'
        '<td class="num all-cameras p50-all">{p50_all}</td><td class="num all-cameras p95-all">{p95_all}</td>'
    )

    def cells(ms: float | None, b: dict[str, Any], all_cameras: dict[str, Any] | None) -> dict[str, Any]:
        return {
            "ms": fmt_ms(ms),
            "p50": fmt_ms(b["p50_ms"]),
            "p95": fmt_ms(b["p95_ms"]),
            "n": b["count"],
            "v": _verdict(ms, b["p50_ms"], b["p95_ms"]),
            "p50_all": fmt_ms(all_cameras["p50_ms"]) if all_cameras else "",
            "p95_all": fmt_ms(all_cameras["p95_ms"]) if all_cameras else "",
        }

    total = j.get("total_processing_time_ms")
    rows = [
        render(
            '<tr class="total"><td>total</td><td></td>' + row + "</tr>", **cells(total, base["camera"], None)
        )
    ]
    for s in j.get("stages") or []:
        stage = s["stage"]
        rows.append(
            render(
                '<tr class="stage" data-stage="{st}" data-attempt="{a}"><td>{st}</td><td>{a}</td>'
                + row
                + "</tr>",
                st=stage,
                a=s["attempt"],
                **cells(
                    s["duration_ms"], on_camera.get(stage, _NO_BASELINE), everywhere.get(stage, _NO_BASELINE)
                ),
            )
        )
    return render(
        '<table id="normal" class="normal"><thead><tr><th rowspan="2">what</th><th rowspan="2">attempt</th>'
        '<th class="num" rowspan="2">this frame</th>'
        '<th class="group" colspan="4">camera <span class="camera">{c}</span>, this hour</th>'
        '<th class="group all-cameras" colspan="2">every camera, this hour</th></tr>'
        '<tr><th class="num">p50</th><th class="num">p95</th><th class="num">runs</th><th>verdict</th>'
        '<th class="num all-cameras">p50</th><th class="num all-cameras">p95</th></tr></thead>'
        "<tbody>{rows}</tbody></table>"
        '<p class="hint">Hour {hour}, from the hourly rollups: the total against camera {c}\'s frames '
        "and each stage against that stage's runs on camera {c} in that hour (the verdict); each "
        "stage's runs on every camera beside. Percentiles are interpolated inside histogram buckets.</p>",
        rows=join(rows),
        c=base["camera_id"],
        hour=fmt_time(base["hour"]),
    )


def _events(j: dict[str, Any], trace_url: Any) -> Markup:
    rows = []
    for e in j.get("events") or []:
        link = trace_url(e.get("trace_id"))
        stage = e.get("stage") or ""
        if stage and (e.get("attempt") or 1) > 1:
            stage += f" #{e['attempt']}"
        err = f"{e['error_type']}: {e.get('error_message') or ''}" if e.get("error_type") else ""
        rows.append(
            render(
                '<tr class="{cls}"><td>{t}</td><td class="num">{d}</td><td>{type}</td><td>{stage}</td>'
                '<td class="num">{dur}</td><td class="error">{err}</td><td>{flag}</td><td>{prod}</td>'
                "<td>{trace}</td></tr>",
                cls="anomaly" if e.get("lifecycle_flag") else "",
                t=fmt_time(e["occurred_at"]),
                d="" if e.get("since_previous_ms") is None else "+" + fmt_ms(e["since_previous_ms"]),
                type=e["event_type"],
                stage=stage,
                dur=fmt_ms(e.get("duration_ms")) if e.get("duration_ms") is not None else "",
                err=err,
                flag=e.get("lifecycle_flag") or "",
                prod=e.get("producer") or "",
                trace=render('<a class="trace" href="{u}" rel="noreferrer">trace</a>', u=safe_url(link.url))
                if link
                else "",
            )
        )
    return render(
        '<table id="events" class="events"><thead><tr><th>occurred</th><th class="num">since previous</th>'
        '<th>event</th><th>stage</th><th class="num">duration</th><th>error</th><th>anomaly</th>'
        "<th>producer</th><th>trace</th></tr></thead><tbody>{rows}</tbody></table>",
        rows=join(rows),
    )


def _anomalies(j: dict[str, Any]) -> Markup:
    flags = j.get("anomalies") or []
    if not flags:
        return render('<p id="anomalies" class="empty">None: the events follow the lifecycle.</p>')
    items = []
    for flag in flags:
        which = [
            e["event_type"] + (f" {e['stage']}" if e.get("stage") else "")
            for e in j["events"]
            if e.get("lifecycle_flag") == flag
        ]
        items.append(render("<li><b>{f}</b>: {w}</li>", f=flag, w=", ".join(which)))
    return render('<ul id="anomalies" class="anomalies">{i}</ul>', i=join(items))


def _detected(j: dict[str, Any]) -> Markup:
    found = j.get("detected_anomalies") or []
    if not found:
        return render(
            '<p id="detected" class="empty">None: the learned detector found nothing abnormal here.</p>'
        )
    items = [render("<li>{d}</li>", d=describe_anomaly(a)) for a in found]
    return render('<ul id="detected" class="anomalies">{i}</ul>', i=join(items))


def frame_main(
    j: dict[str, Any], base: dict[str, Any] | None, *, now: datetime, grafana_url: str, trace_url: Any
) -> Markup:
    live = j.get("state") not in FINAL_STATES
    return render(
        '<main id="frame" data-live="{live}" data-poll="{poll}" data-state="{state}">'
        '<h1>Frame <code id="frame-id">{fid}</code></h1>{header}{links}'
        "{live_note}<section><h2>Timeline</h2>{gantt}</section>"
        "<section><h2>Is this normal?</h2>{normal}</section>"
        "<section><h2>Detected anomalies</h2>{detected}</section>"
        "<section><h2>Lifecycle anomalies</h2>{anomalies}</section>"
        "<section><h2>Events</h2>{events}</section></main>",
        live="1" if live else "0",
        poll=frame_href(j["frame_id"]) + "?part=main",
        state=j.get("state") or "",
        fid=j["frame_id"],
        header=_header(j),
        links=_links(j, grafana_url),
        live_note=render('<p class="live">In flight: this page follows it until it ends.</p>')
        if live
        else "",
        gantt=gantt(j, now),
        normal=_normal(j, base),
        detected=_detected(j),
        anomalies=_anomalies(j),
        events=_events(j, trace_url),
    )


def frame_page(main: Markup, frame_id: str) -> Markup:
    return layout(f"Frame {frame_id}", main)


# ---- login ---------------------------------------------------------------------


def login_page(next_path: str, *, wrong: bool = False) -> Markup:
    main = render(
        '<main id="login"><h1>Sign in</h1><p>This tracker needs its API token.</p>{wrong}'
        '<form method="post" action="/ui/login"><input type="hidden" name="next" value="{next}">'
        '<label>Token <input type="password" name="token" required autofocus></label>'
        '<button type="submit">Sign in</button></form></main>',
        wrong=render('<p class="notice">Wrong token.</p>') if wrong else "",
        next=next_path,
    )
    return layout("Sign in", main)


def error_page(title: str, message: str) -> Markup:
    return layout(title, render('<main><h1>{t}</h1><p class="notice">{m}</p></main>', t=title, m=message))


__all__ = ["FINAL_STATES", "Markup", "esc", "frame_main", "frame_page", "layout", "login_page", "search_page"]
