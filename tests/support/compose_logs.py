"""Checks of the log side of the container stack in compose/: Loki, promtail
shipping the containers' lines to it, the Grafana Loki datasource, and the
frame-search dashboard's logs panel, against each other and against the fields
the tracker's log lines really carry (``tracker.logs``).

Like the other compose checks (compose_checks.py), each returns a list of
problems; tests/unit/test_compose_logs.py runs them on the shipped files and
on broken copies. LogQL has no parser in Python: ``parse_logql`` reads the
subset the dashboard uses (a stream selector, then parser, line-filter, label-
filter and line_format stages) and refuses anything else, unbalanced quotes
and a selector that matches every stream (Loki refuses those too).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from tests.support.compose_stack import (
    COMPOSE_DIR,
    Problems,
    command_args,
    declared_ports,
    depends_targets,
    mount_source_for,
    services_of,
)

LOKI_FILE = COMPOSE_DIR / "loki" / "loki.yml"
PROMTAIL_FILE = COMPOSE_DIR / "promtail" / "promtail.yml"
FRAME_SEARCH_FILE = COMPOSE_DIR / "grafana" / "dashboards" / "frame-search.json"
LOKI_UID = "tracker-loki"
# Fields that would make one stream per frame (or per span): never labels.
HIGH_CARDINALITY = {"frame_id", "trace_id", "span_id", "camera_id"}


def log_fields() -> set[str]:
    """The fields ``tracker.logs`` adds to a line written inside a frame's context and a span."""
    from opentelemetry import trace

    from tracker.domain import Frame
    from tracker.logs import add_frame_and_trace
    from tracker.telemetry import frame_context

    frame = Frame.capture("cam-check", timestamp=datetime(2026, 1, 1, tzinfo=UTC))
    span = trace.NonRecordingSpan(trace.SpanContext(trace_id=1, span_id=1, is_remote=False))
    with frame_context(frame), trace.use_span(span):
        return set(add_frame_and_trace(None, "info", {}))


# ---- LogQL (the subset the dashboards use) -------------------------------------------

_STRING = r'"(?:[^"\\]|\\.)*"|`[^`]*`'
_MATCHER = re.compile(rf"\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*({_STRING})\s*(?:,|$)")
_LABEL_FILTER = re.compile(rf"^([A-Za-z_][A-Za-z0-9_]*)\s*(==|=~|!~|!=|>=|<=|=|>|<)\s*({_STRING}|-?[0-9.]+)$")
_LINE_FILTER = re.compile(rf"^(=|~|!=|!~)\s*({_STRING})$")
_PARSER = re.compile(
    r"^(json|logfmt)(\s+[A-Za-z_][A-Za-z0-9_]*\s*=\s*\"[^\"]*\"(\s*,\s*[A-Za-z_][A-Za-z0-9_]*\s*=\s*\"[^\"]*\")*)?$"
)
_LINE_FORMAT = re.compile(rf"^line_format\s+({_STRING})$")


@dataclass
class LogQuery:
    matchers: list[tuple[str, str, str]] = field(default_factory=list)
    parsers: list[str] = field(default_factory=list)
    label_filters: list[tuple[str, str, str]] = field(default_factory=list)
    line_filters: list[tuple[str, str]] = field(default_factory=list)


def _unquote(s: str) -> str:
    return s[1:-1]


def _split_pipeline(text: str) -> list[str]:
    """``text`` split at ``|`` outside strings; a ``|=``/``|~`` keeps its operator."""
    parts, cur, quote = [], "", ""
    for ch in text:
        if quote:
            cur += ch
            if ch == quote and not cur.endswith("\\" + quote):
                quote = ""
            continue
        if ch in '"`':
            quote = ch
            cur += ch
        elif ch == "|":
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    if quote:
        raise ValueError("unterminated string")
    parts.append(cur)
    return parts


def parse_logql(expr: str) -> LogQuery:
    """Read a log query (no metric queries); ValueError says what is wrong."""
    m = re.match(r"^\s*\{([^{}]*)\}(.*)$", expr, re.S)
    if not m:
        raise ValueError("no stream selector {...} at the start")
    q = LogQuery()
    body = m.group(1).strip()
    pos = 0
    while pos < len(body):
        mm = _MATCHER.match(body, pos)
        if not mm:
            raise ValueError(f"bad matcher at {body[pos:]!r}")
        q.matchers.append((mm.group(1), mm.group(2), _unquote(mm.group(3))))
        pos = mm.end()
    if not any(
        (op == "=" and value) or (op == "=~" and not re.fullmatch(value, "")) for _, op, value in q.matchers
    ):
        raise ValueError("the selector needs a matcher that does not match the empty value")
    rest = m.group(2).strip()
    if not rest:
        return q
    if not rest.startswith("|"):
        raise ValueError(f"expected | after the selector, got {rest[:20]!r}")
    for stage in _split_pipeline(rest)[1:]:
        stage = stage.strip()
        if not stage:
            raise ValueError("empty pipeline stage")
        if _PARSER.match(stage):
            q.parsers.append(stage.split()[0])
        elif lf := _LINE_FILTER.match(stage):
            q.line_filters.append((lf.group(1), _unquote(lf.group(2))))
        elif _LINE_FORMAT.match(stage):
            continue
        elif lb := _LABEL_FILTER.match(stage):
            value = lb.group(3)
            q.label_filters.append((lb.group(1), lb.group(2), _unquote(value) if value[0] in '"`' else value))
        else:
            raise ValueError(f"unknown pipeline stage {stage!r}")
    return q


# ---- the checks ------------------------------------------------------------------------


def _config_path(svc: dict[str, Any]) -> str | None:
    for arg in command_args(svc):
        if arg.startswith("-config.file="):
            return arg.split("=", 1)[1]
    return None


def check_log_shipping(compose: Any, loki: Any, promtail: Any) -> Problems:
    """Loki and promtail run pinned images with the configs from compose/, and
    promtail pushes this project's container logs to Loki's port, with no
    high-cardinality label."""
    problems: Problems = []
    services = services_of(compose)
    lsvc, psvc = services.get("loki"), services.get("promtail")
    if lsvc is None or psvc is None:
        return [f"no {name} service" for name, s in (("loki", lsvc), ("promtail", psvc)) if s is None]
    for name, svc, expected, cfg in (
        ("loki", lsvc, LOKI_FILE, loki),
        ("promtail", psvc, PROMTAIL_FILE, promtail),
    ):
        if not str(svc.get("image", "")).startswith(f"grafana/{name}:"):
            problems.append(f"{name}: image {svc.get('image')!r} is not grafana/{name}")
        path = _config_path(svc)
        src = mount_source_for(svc, path) if path else None
        if src is None or (COMPOSE_DIR / src).resolve() != expected.resolve():
            problems.append(
                f"{name}: -config.file {path!r} is not mounted from {expected.relative_to(COMPOSE_DIR)}"
            )
        if not isinstance(cfg, dict):
            problems.append(f"{name}: config is not a mapping")
    if problems:
        return problems
    port = int((loki.get("server") or {}).get("http_listen_port", 3100))
    if port not in declared_ports(lsvc):
        problems.append(f"loki: listens on {port}, which the service does not expose")
    if "loki" not in depends_targets(psvc):
        problems.append("promtail: does not depend on loki")
    clients = promtail.get("clients") or []
    if not clients:
        problems.append("promtail: no clients")
    for c in clients:
        u = urlsplit(str(c.get("url", "")))
        if (u.hostname, u.port, u.path) != ("loki", port, "/loki/api/v1/push"):
            problems.append(f"promtail: client {c.get('url')!r} is not loki:{port}/loki/api/v1/push")
    project = (compose or {}).get("name")
    jobs = promtail.get("scrape_configs") or []
    if not jobs:
        problems.append("promtail: no scrape_configs")
    for job in jobs:
        for sd in job.get("docker_sd_configs") or []:
            host = str(sd.get("host", ""))
            if not host.startswith("unix://") or mount_source_for(psvc, host[len("unix://") :]) is None:
                problems.append(f"promtail: docker host {host!r} is not a socket mounted into it")
            values = [v for f in sd.get("filters") or [] for v in f.get("values") or []]
            if f"com.docker.compose.project={project}" not in values:
                problems.append(f"promtail: job {job.get('job_name')} does not keep to project {project!r}")
        labels = {str(r.get("target_label")) for r in job.get("relabel_configs") or []}
        for stage in job.get("pipeline_stages") or []:
            labels.update((stage.get("labels") or {}).keys() if isinstance(stage, dict) else ())
        if labels & HIGH_CARDINALITY:
            problems.append(
                f"promtail: {sorted(labels & HIGH_CARDINALITY)} made labels (one stream per frame)"
            )
        if "service" not in labels:
            problems.append(f"promtail: job {job.get('job_name')} gives no service label")
    return problems


def check_logs_panel(datasources: Any, dashboard: Any, fields: set[str] | None = None) -> Problems:
    """A Loki datasource, and a logs panel on frame-search that queries it for the
    lines whose JSON field ``frame_id`` (the one ``tracker.logs`` writes) is the
    dashboard's frame_id variable."""
    problems: Problems = []
    fields = log_fields() if fields is None else fields
    entries = (datasources or {}).get("datasources") or []
    loki = next((d for d in entries if d.get("uid") == LOKI_UID), None)
    if loki is None or loki.get("type") != "loki":
        problems.append(f"no datasource {LOKI_UID!r} of type loki")
    derived = ((loki or {}).get("jsonData") or {}).get("derivedFields") or []
    if not any(
        d.get("datasourceUid") == "tracker-jaeger" and "trace_id" in str(d.get("matcherRegex"))
        for d in derived
    ):
        problems.append(f"{LOKI_UID}: no derived field from trace_id to Jaeger")
    panels = [p for p in (dashboard or {}).get("panels") or [] if p.get("type") == "logs"]
    if not panels:
        return [*problems, "frame-search: no logs panel"]
    for p in panels:
        ds = p.get("datasource") or {}
        if ds.get("uid") != LOKI_UID:
            problems.append(
                f"frame-search / {p.get('title')}: datasource {ds.get('uid')!r} is not {LOKI_UID}"
            )
        for t in p.get("targets") or []:
            try:
                q = parse_logql(str(t.get("expr", "")))
            except ValueError as e:
                problems.append(f"frame-search / {p.get('title')}: LogQL {t.get('expr')!r}: {e}")
                continue
            if "json" not in q.parsers:
                problems.append(f"frame-search / {p.get('title')}: no json stage (the lines are JSON)")
            on_frame = [f for f in q.label_filters if f[0] == "frame_id" and f[1] in ("=", "==")]
            if "frame_id" not in fields:
                problems.append("tracker.logs writes no frame_id field")
            if not on_frame or on_frame[0][2] not in ("${frame_id}", "$frame_id"):
                problems.append(
                    f"frame-search / {p.get('title')}: does not filter frame_id on the $frame_id variable"
                )
    return problems
