"""Checks of the Prometheus config and the Grafana provisioning in compose/
against the compose services they scrape, query and are mounted into (see
tests/support/compose_checks.py for the whole list and the command).
"""

from __future__ import annotations

import posixpath
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tests.support.compose_stack import (
    COMPOSE_DIR,
    DATASOURCES_FILE,
    PROMETHEUS_FILE,
    Problems,
    cli_flag,
    command_args,
    listening_ports,
    mount_source_for,
    services_of,
)

# The values Prometheus 2.55 accepts in `scrape_protocols` (an unknown one stops
# it from starting). PrometheusText1.0.0 only exists from 3.0 on.
PROMETHEUS_2_SCRAPE_PROTOCOLS = {
    "PrometheusProto",
    "OpenMetricsText0.0.1",
    "OpenMetricsText1.0.0",
    "PrometheusText0.0.4",
}
DATASOURCE_UIDS = {
    "tracker-pg": "grafana-postgresql-datasource",
    "tracker-prom": "prometheus",
    "tracker-jaeger": "jaeger",
}


def check_prometheus(prom: Any, compose: Any, base: Path = COMPOSE_DIR) -> Problems:
    problems: Problems = []
    if not isinstance(prom, dict) or not prom.get("scrape_configs"):
        return ["prometheus.yml has no scrape_configs"]
    services = services_of(compose)
    protocols = (prom.get("global") or {}).get("scrape_protocols") or []
    for p in protocols:
        if p not in PROMETHEUS_2_SCRAPE_PROTOCOLS:
            problems.append(f"scrape_protocols: {p!r} is unknown to Prometheus 2.x")
    if protocols and not str(protocols[0]).startswith("OpenMetrics"):
        problems.append("scrape_protocols: OpenMetrics is not preferred (exemplars are lost)")
    jobs = [j.get("job_name") for j in prom["scrape_configs"]]
    if len(jobs) != len(set(jobs)):
        problems.append(f"duplicate job names: {jobs}")
    for job in prom["scrape_configs"]:
        targets = [t for sc in job.get("static_configs") or [] for t in sc.get("targets") or []]
        if not targets:
            problems.append(f"job {job.get('job_name')}: no targets")
        for target in targets:
            host, _, port = str(target).rpartition(":")
            if host not in services:
                problems.append(f"job {job.get('job_name')}: {host!r} is not a compose service")
            elif not port.isdigit() or int(port) not in listening_ports(services[host]):
                problems.append(
                    f"job {job.get('job_name')}: {host} does not listen on {port}; "
                    f"it listens on {sorted(listening_ports(services[host]))}"
                )

    # The Prometheus container must read this very file and its rules folder.
    psvc = services.get("prometheus")
    if psvc is None:
        return [*problems, "no prometheus service"]
    if "--enable-feature=exemplar-storage" not in command_args(psvc):
        problems.append("prometheus: exemplar storage not enabled")
    config_path = cli_flag(psvc, "--config.file")
    if config_path is None:
        problems.append("prometheus: no --config.file in its command")
        return problems
    source = mount_source_for(psvc, config_path)
    if source is None or (base / source).resolve() != PROMETHEUS_FILE.resolve():
        problems.append(f"prometheus: {config_path} is not mounted from prometheus/prometheus.yml")
    for pattern in prom.get("rule_files") or []:
        rule_dir = posixpath.join(posixpath.dirname(config_path), posixpath.dirname(pattern))
        src = mount_source_for(psvc, rule_dir)
        if src is None or not (base / src).is_dir():
            problems.append(f"prometheus: rule_files {pattern!r}: {rule_dir} is not mounted")
    return problems


def check_grafana(datasources: Any, dashboards: Any, compose: Any) -> Problems:
    problems: Problems = []
    services = services_of(compose)
    entries = (datasources or {}).get("datasources") or []
    by_uid = {d.get("uid"): d for d in entries}
    for uid, kind in DATASOURCE_UIDS.items():
        if uid not in by_uid:
            problems.append(f"datasource {uid!r} missing")
        elif by_uid[uid].get("type") != kind:
            problems.append(f"datasource {uid!r} has type {by_uid[uid].get('type')!r}, not {kind!r}")
    for d in entries:
        url = str(d.get("url", ""))
        parts = urlsplit(url if "://" in url else "//" + url)
        if parts.hostname not in services:
            problems.append(f"datasource {d.get('uid')}: host {parts.hostname!r} is no service")
        elif parts.port and parts.port not in listening_ports(services[parts.hostname]):
            problems.append(f"datasource {d.get('uid')}: {parts.hostname} does not listen on {parts.port}")
    prom = by_uid.get("tracker-prom") or {}
    dests = (prom.get("jsonData") or {}).get("exemplarTraceIdDestinations") or []
    if not dests:
        problems.append("tracker-prom: no exemplarTraceIdDestinations")
    for dest in dests:
        target = by_uid.get(dest.get("datasourceUid"))
        if target is None or target.get("type") != "jaeger":
            problems.append(
                f"tracker-prom: exemplar destination {dest.get('datasourceUid')!r} "
                "is not the Jaeger datasource"
            )
        if dest.get("name") != "trace_id":
            problems.append(f"tracker-prom: exemplar label {dest.get('name')!r} is not trace_id")
    pg = by_uid.get("tracker-pg") or {}
    pg_json = pg.get("jsonData") or {}
    if (pg_json.get("database") or pg.get("database")) != "tracker":
        problems.append("tracker-pg: database is not tracker")
    if not (pg.get("secureJsonData") or {}).get("password"):
        problems.append("tracker-pg: no password in secureJsonData")

    gsvc = services.get("grafana")
    if gsvc is None:
        return [*problems, "no grafana service"]
    src = mount_source_for(gsvc, "/etc/grafana/provisioning/datasources/datasources.yml")
    if src is None or (COMPOSE_DIR / src).resolve() != DATASOURCES_FILE.resolve():
        problems.append("grafana: provisioning folder is not mounted from grafana/provisioning")
    for provider in (dashboards or {}).get("providers") or [{}]:
        path = (provider.get("options") or {}).get("path")
        src = mount_source_for(gsvc, str(path)) if path else None
        if src is None or not (COMPOSE_DIR / src).is_dir():
            problems.append(f"grafana: dashboard path {path!r} is not a mounted folder")
    return problems
