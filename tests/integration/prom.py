"""A real Prometheus for integration tests.

``find_prometheus()`` locates Debian's ``prometheus`` package (``prometheus`` and
``promtool``) and installs it with apt-get when it is missing and we are root;
otherwise it raises :class:`PrometheusUnavailable` with what to do.

Installing the package may start (or enable) a system ``prometheus`` service on
port 9090. We never touch it: :class:`PrometheusServer` runs a private instance
on a free loopback port, with its own configuration and ``--storage.tsdb.path``
in a temporary folder, exemplar storage enabled and a 1 s scrape interval.

The PromQL this repository ships (dashboards and alert rules) is collected by
tests/integration/shipped_promql.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

# `scrape_protocols` (content negotiation, OpenMetrics first) exists from 2.49 on.
# Older versions already ask for OpenMetrics first by default.
SCRAPE_PROTOCOLS_SINCE = (2, 49)
SCRAPE_PROTOCOLS = ["OpenMetricsText1.0.0", "OpenMetricsText0.0.1", "PrometheusText0.0.4"]


class PrometheusUnavailable(RuntimeError):
    """Prometheus is not installed and cannot be installed here."""


class PromQLError(RuntimeError):
    """The Prometheus HTTP API refused a query (parse or execution error)."""


@dataclass(frozen=True)
class PrometheusTools:
    prometheus: str
    promtool: str
    version: tuple[int, int, int]
    version_text: str

    @property
    def supports_scrape_protocols(self) -> bool:
        return self.version[:2] >= SCRAPE_PROTOCOLS_SINCE


def _locate(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidate = Path("/usr/bin") / name
    return str(candidate) if candidate.is_file() and os.access(candidate, os.X_OK) else None


def _apt_install() -> None:
    """apt-get install prometheus (refreshing the package lists if that fails once)."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    # Wait for another apt/dpkg run instead of failing on its lock.
    lock = ["-o", "DPkg::Lock::Timeout=300"]
    cmd = ["apt-get", *lock, "install", "-y", "--no-install-recommends", "prometheus"]
    first = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, check=False)
    if first.returncode == 0:
        return
    subprocess.run(
        ["apt-get", *lock, "update"], env=env, capture_output=True, text=True, timeout=900, check=False
    )
    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, check=False)
    if second.returncode != 0:
        raise PrometheusUnavailable(
            "`apt-get install -y prometheus` failed:\n" + (second.stderr or second.stdout)[-2000:]
        )


def find_prometheus(install: bool = True) -> PrometheusTools:
    """Debian's prometheus and promtool; installed with apt-get when missing (as root)."""
    prom, tool = _locate("prometheus"), _locate("promtool")
    if (prom is None or tool is None) and install:
        if not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("apt-get") is None:
            raise PrometheusUnavailable(
                "prometheus/promtool not found and this process cannot install them "
                "(needs root and apt-get). Install Debian's package: "
                "`sudo apt-get install -y prometheus` (it provides /usr/bin/prometheus and "
                "/usr/bin/promtool; the system service it may start on :9090 is not used)."
            )
        _apt_install()
        prom, tool = _locate("prometheus"), _locate("promtool")
    if prom is None or tool is None:
        raise PrometheusUnavailable(
            f"prometheus ({prom or 'missing'}) or promtool ({tool or 'missing'}) not found after install"
        )
    out = subprocess.run([prom, "--version"], capture_output=True, text=True, timeout=60, check=False)
    text = (out.stdout or out.stderr).strip()
    m = re.search(r"version (\d+)\.(\d+)\.(\d+)", text)
    if not m:
        raise PrometheusUnavailable(f"cannot read the version of {prom}: {text!r}")
    version = (int(m.group(1)), int(m.group(2)), int(m.group(3)))
    return PrometheusTools(prom, tool, version, text.splitlines()[0])


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrometheusServer:
    """A private Prometheus: own port, own TSDB folder, our scrape targets.

    ``jobs`` maps a job name to its ``host:port`` targets; ``rule_files`` are
    loaded as they are (absolute paths or globs). ``admin_api`` enables the TSDB
    admin endpoints (:meth:`delete_series`).
    """

    def __init__(
        self,
        tools: PrometheusTools,
        workdir: Path,
        jobs: Mapping[str, Sequence[str]],
        rule_files: Sequence[str] = (),
        scrape_interval: str = "1s",
        admin_api: bool = False,
    ) -> None:
        self.tools = tools
        self.admin_api = admin_api
        self.workdir = workdir
        self.jobs = dict(jobs)
        self.rule_files = list(rule_files)
        self.scrape_interval = scrape_interval
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "prometheus.log"
        self._proc: subprocess.Popen[bytes] | None = None

    def config(self) -> dict[str, Any]:
        glob_cfg: dict[str, Any] = {
            "scrape_interval": self.scrape_interval,
            "scrape_timeout": self.scrape_interval,
            "evaluation_interval": self.scrape_interval,
        }
        if self.tools.supports_scrape_protocols:
            glob_cfg["scrape_protocols"] = SCRAPE_PROTOCOLS
        return {
            "global": glob_cfg,
            "rule_files": self.rule_files,
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": list(targets)}]}
                for job, targets in self.jobs.items()
            ],
        }

    def start(self, timeout: float = 30.0) -> PrometheusServer:
        cfg = self.workdir / "prometheus.yml"
        cfg.write_text(yaml.safe_dump(self.config(), sort_keys=False), encoding="utf-8")
        data = self.workdir / "data"
        data.mkdir(exist_ok=True)
        log = self.log_path.open("wb")
        self._proc = subprocess.Popen(
            [
                self.tools.prometheus,
                f"--config.file={cfg}",
                f"--storage.tsdb.path={data}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--enable-feature=exemplar-storage",
                "--storage.tsdb.retention.time=1h",
                "--log.level=warn",
                *(["--web.enable-admin-api"] if self.admin_api else []),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"prometheus exited {self._proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as r:
                    if r.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"prometheus not ready within {timeout}s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self._proc is None or self._proc.poll() is not None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(10)

    def __enter__(self) -> PrometheusServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")[-chars:]
        except OSError:
            return ""

    # ---- HTTP API -----------------------------------------------------------

    def api(self, path: str, **params: Any) -> Any:
        """/api/v1/<path> (POST for queries, else GET); returns `data`, raises
        PromQLError with Prometheus's message."""
        url = f"{self.url}/api/v1/{path}"
        form = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
        if path.startswith("query"):
            req = urllib.request.Request(
                url, data=form.encode(), headers={"Content-Type": "application/x-www-form-urlencoded"}
            )
        else:
            req = urllib.request.Request(f"{url}?{form}" if form else url)
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                payload = json.load(r)
        except urllib.error.HTTPError as e:
            try:
                payload = json.loads(e.read())
            except ValueError:
                raise PromQLError(f"{path}: HTTP {e.code}") from None
            raise PromQLError(f"{payload.get('errorType')}: {payload.get('error')}") from None
        if payload.get("status") != "success":
            raise PromQLError(f"{payload.get('errorType')}: {payload.get('error')}")
        return payload["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """Instant query; the result as a list (a scalar becomes one element)."""
        data = self.api("query", query=expr, time=at)
        if data["resultType"] in ("scalar", "string"):
            return [{"value": data["result"]}]
        return list(data["result"])

    def query_exemplars(self, expr: str, start: float, end: float) -> list[dict[str, Any]]:
        return list(self.api("query_exemplars", query=expr, start=start, end=end))

    def delete_series(self, match: str) -> None:
        """Delete every sample of the series ``match`` selects (admin API); the
        queries that follow no longer see them, at any evaluation time."""
        form = urllib.parse.urlencode({"match[]": match}).encode()
        req = urllib.request.Request(f"{self.url}/api/v1/admin/tsdb/delete_series", data=form, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                if r.status not in (200, 204):
                    raise PromQLError(f"delete_series {match}: HTTP {r.status}")
        except urllib.error.HTTPError as e:
            raise PromQLError(f"delete_series {match}: HTTP {e.code} {e.read()[:500]!r}") from None

    def active_targets(self) -> list[dict[str, Any]]:
        return list(self.api("targets", state="active")["activeTargets"])

    def rule_groups(self) -> list[dict[str, Any]]:
        return list(self.api("rules")["groups"])
