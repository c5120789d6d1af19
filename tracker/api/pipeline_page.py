"""The pipeline page: the figures of ``tracker status`` (events/s, lag per group
and partition, dead letters, rebuilds) and the last hour's failure rates per
camera and per stage, from the rollups."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tracker.api.html import DASH, Markup, fmt_time, join, render
from tracker.api.pages import layout


def _group(g: dict[str, Any]) -> Markup:
    rows = [
        render(
            '<tr><td>{t}</td><td class="num">{p}</td><td class="num">{e}</td><td class="num">{pos}</td>'
            '<td class="num lag">{lag}</td></tr>',
            t=p["topic"],
            p=p["partition"],
            e=p["end"],
            pos=DASH if p["position"] is None else p["position"],
            lag=DASH if p["lag"] is None else p["lag"],
        )
        for p in g["partitions"]
    ]
    return render(
        '<section class="group"><h3>{name}</h3><p><b class="eps">{eps}</b> events/s over the last minute · '
        "lag <b>{lag}</b> records · last progress {last}</p>"
        '<table class="lag"><thead><tr><th>topic</th><th class="num">partition</th><th class="num">end</th>'
        '<th class="num">position</th><th class="num">lag</th></tr></thead><tbody>{rows}</tbody></table>'
        "</section>",
        name=g["name"],
        eps=f"{g['events_per_s']:,.1f}",
        lag=g["lag"],
        last=fmt_time(g["last_checkpoint"]) if g["last_checkpoint"] else "never",
        rows=join(rows),
    )


def _rebuild(r: dict[str, Any] | None) -> Markup:
    if r is None:
        return render('<p id="rebuild">No rebuild yet.</p>')
    if r["status"] == "running":
        return render(
            '<p id="rebuild" class="running">Rebuild <b>running</b> into generation {g} from {src}: '
            "{n} events applied, {eps} events/s, lag {lag}, about {eta} s left.</p>",
            g=r["generation"],
            src=r["source"],
            n=r["events_applied"],
            eps=f"{r['events_per_s'] or 0:,.0f}",
            lag=r["lag_events"],
            eta=f"{r['eta_s'] or 0:.0f}",
        )
    return render(
        '<p id="rebuild">Last rebuild: <b>{st}</b> (generation {g}, from {src}, {at}).</p>',
        st=r["status"],
        g=r["generation"],
        src=r["source"],
        at=r["updated_at"],
    )


def _dead_letters(count: int, letters: Sequence[dict[str, Any]]) -> Markup:
    rows = [
        render(
            "<tr><td>{pos}</td><td>{src}</td><td>{cls}</td><td>{stage}</td><td>{key}</td>"
            '<td class="error">{msg}</td></tr>',
            pos=f"{d['dlq_partition']}:{d['dlq_offset']}",
            src=d["source"],
            cls=d["error_class"],
            stage=d["error_stage"],
            key=d["key"] or "",
            msg=d["error_message"],
        )
        for d in letters
    ]
    table = (
        render(
            '<table class="dlq"><thead><tr><th>DLQ position</th><th>from</th><th>error</th><th>stage</th>'
            "<th>key</th><th>message</th></tr></thead><tbody>{rows}</tbody></table>",
            rows=join(rows),
        )
        if rows
        else Markup("")
    )
    return render('<p><b id="dlq-size">{n}</b> dead letters in all.</p>{table}', n=count, table=table)


def _rates(cameras: Sequence[dict[str, Any]], stages: Sequence[dict[str, Any]]) -> Markup:
    def table(kind: str, rows: Sequence[dict[str, Any]], name: str, runs: str) -> Markup:
        body = [
            render(
                '<tr><td>{n}</td><td class="num">{runs}</td><td class="num">{failed}</td>'
                '<td class="num rate">{rate}</td></tr>',
                n=r[name],
                runs=r[runs],
                failed=r["states"]["failed"] + r["states"]["conflicted"] if "states" in r else r["failed"],
                rate=f"{100 * r['failure_rate']:.2f} %",
            )
            for r in rows
        ]
        return render(
            '<table class="rates" id="rates-{k}"><thead><tr><th>{k}</th><th class="num">{runs}</th>'
            '<th class="num">failed</th><th class="num">failure rate</th></tr></thead>'
            "<tbody>{b}</tbody></table>",
            k=kind,
            runs=runs,
            b=join(body),
        )

    return render(
        '<div class="columns">{a}{b}</div>',
        a=table("camera", cameras, "camera_id", "frames"),
        b=table("stage", stages, "stage", "runs"),
    )


def pipeline_main(
    status: dict[str, Any] | None,
    status_error: str,
    letters: Sequence[dict[str, Any]],
    cameras: Sequence[dict[str, Any]],
    stages: Sequence[dict[str, Any]],
) -> Markup:
    if status is None:
        figures = render('<p class="notice">Status unavailable: {e}</p>', e=status_error)
    else:
        figures = render(
            "<section><h2>Throughput and lag</h2>{store}{proj}"
            "<p>Projection generation {gen}.</p></section>"
            "<section><h2>Dead letters</h2>{dlq}</section>"
            "<section><h2>Rebuilds</h2>{rebuild}</section>",
            store=_group(status["event_store"]),
            proj=_group(status["projection"]),
            gen=status["projection_generation"],
            dlq=_dead_letters(status["dlq_records"], letters),
            rebuild=_rebuild(status["replay"]),
        )
    return render(
        '<main id="pipeline" data-live="1" data-interval="5000" data-poll="/ui/pipeline?part=main">'
        "<h1>Pipeline</h1>{figures}<section><h2>Failure rates, last hour</h2>{rates}</section></main>",
        figures=figures,
        rates=_rates(cameras, stages),
    )


def pipeline_page(main: Markup) -> Markup:
    return layout("Pipeline", main, active="pipeline")
