"""The wheel as a user gets it, not the editable checkout.

Built from this checkout the way a release is (``python -m build``: the sdist,
then the wheel from that sdist, so a file the sdist forgets is missing here
too), installed with its dependencies from the package index into a fresh
virtualenv outside the checkout, and run from a working directory outside the
checkout, so nothing can be imported from ``tracker/`` here by accident.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

import tracker
from tests.integration.helpers import env_for
from tracker.codec import FrameEventCodec
from tracker.config import Settings

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_FILES = sorted(p.name for p in (ROOT / "schemas").glob("*.avsc"))
SQL_FILES = sorted(p.name for p in (ROOT / "sql").glob("*.sql"))

# A warning of any kind in the build output fails the test (setuptools prints
# its deprecations between "!!" lines). The one harmless line: distutils says
# byte-compiling is off when PYTHONDONTWRITEBYTECODE is set.
_WARNING = re.compile(r"warn|deprecat|^\s*!!\s*$", re.IGNORECASE)
_HARMLESS = re.compile(r"byte-compiling is disabled")

# Runs in the new virtualenv: a real event through the installed codec, and the
# package data found through importlib.resources.
SNIPPET = """
import json
from datetime import UTC, datetime
from importlib import metadata, resources

import tracker
from tracker import events as ev
from tracker.codec import FrameEventCodec
from tracker.adapters.postgres import load_migrations

ts = datetime(2026, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)
common = dict(frame_id="cam-1-f1", camera_id="cam-1", frame_timestamp=ts, occurred_at=ts, producer="wheel")
events = [
    ev.FrameCaptured(**common, attributes={"width": "1920"}),
    ev.StageCompleted(**common, stage="detect", duration_ms=41.5),
    ev.StageFailed(**common, stage="analyze", duration_ms=3.0, error_type="E", error_message="m"),
]
codec = FrameEventCodec()


def names(package, suffix):
    return sorted(p.name for p in resources.files(package).iterdir() if p.name.endswith(suffix))


print(json.dumps({
    "file": tracker.__file__,
    "version": tracker.__version__,
    "dist_version": metadata.version("detektor-tracker"),
    "py_typed": resources.files("tracker").joinpath("py.typed").is_file(),
    "schemas": names("tracker.schemas", ".avsc"),
    "sql": names("tracker.sql", ".sql"),
    "migrations": [f"{m.version:03d}_{m.name}" for m in load_migrations()],
    "fingerprint": codec.current.fingerprint.hex(),
    "round_trips": [codec.decode(codec.encode(e)) == e for e in events],
}))
"""


@dataclass(frozen=True)
class Installed:
    wheel: Path
    build_output: str
    venv: Path
    workdir: Path

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    def run(self, *argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            list(argv),
            cwd=self.workdir,
            env=_outside(env if env is not None else dict(os.environ)),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, f"{' '.join(argv)} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}"
        return proc


def _outside(env: dict[str, str]) -> dict[str, str]:
    """No variable that could put the checkout on the new interpreter's path."""
    return {k: v for k, v in env.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    base = tmp_path_factory.mktemp("wheel")
    assert not base.resolve().is_relative_to(ROOT)
    dist = base / "dist"
    build = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(dist), str(ROOT)],
        cwd=base,
        env=_outside(dict(os.environ)),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, f"python -m build failed:\n{build.stdout}"
    wheels = sorted(dist.glob("*.whl"))
    assert len(wheels) == 1, wheels

    # No pip inside the new virtualenv (faster); this interpreter's pip installs
    # into it. Dependencies come from the index, through pip's own cache.
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    pip = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install",
         "--quiet", "--disable-pip-version-check", str(wheels[0])],
        cwd=base,
        env=_outside(dict(os.environ)),
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip
    assert pip.returncode == 0, f"pip install of the wheel failed:\n{pip.stdout}{pip.stderr}"
    workdir = base / "work"
    workdir.mkdir()
    return Installed(wheels[0], build.stdout, venv, workdir)


def test_build_prints_no_warning(installed: Installed) -> None:
    warnings = [
        line
        for line in installed.build_output.splitlines()
        if _WARNING.search(line) and not _HARMLESS.search(line)
    ]
    assert not warnings, "the build warns:\n" + "\n".join(warnings) + "\n\n" + installed.build_output


def test_wheel_carries_package_data_license_and_metadata(installed: Installed) -> None:
    with zipfile.ZipFile(installed.wheel) as whl:
        names = set(whl.namelist())
        dist_info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
        meta = whl.read(f"{dist_info}/METADATA").decode()
        license_text = whl.read(f"{dist_info}/licenses/LICENSE").decode()
    assert {"tracker/py.typed", "tracker/api/openapi.json"} <= names
    static = {p.relative_to(ROOT).as_posix() for p in (ROOT / "tracker/api/static").iterdir()}
    assert static == {
        "tracker/api/static/ui.css",
        "tracker/api/static/ui.js",
        "tracker/api/static/favicon.svg",
    }
    assert static <= names  # the web UI's files: served from the installed package
    assert {f"tracker/schemas/{n}" for n in SCHEMA_FILES} <= names
    assert {f"tracker/sql/{n}" for n in SQL_FILES} <= names
    headers = meta.split("\n\n", 1)[0].splitlines()
    assert f"Version: {tracker.__version__}" in headers
    assert "License-Expression: Apache-2.0" in headers
    assert "License-File: LICENSE" in headers
    assert not [h for h in headers if h.startswith(("License:", "Classifier: License"))]
    assert any(h.startswith("Requires-Dist: structlog") for h in headers)
    assert license_text == (ROOT / "LICENSE").read_text()
    assert "Apache License" in license_text and "END OF TERMS AND CONDITIONS" in license_text


def test_version(installed: Installed) -> None:
    out = installed.run(str(installed.venv / "bin" / "tracker"), "--version").stdout
    assert out == f"tracker {tracker.__version__}\n"


def test_codec_and_package_data_from_the_installed_wheel(installed: Installed) -> None:
    # -I: isolated mode, neither the working directory nor PYTHON* variables
    # reach sys.path.
    out = json.loads(installed.run(str(installed.python), "-I", "-c", SNIPPET).stdout)
    assert Path(out["file"]).resolve().is_relative_to(installed.venv.resolve())
    assert not Path(out["file"]).resolve().is_relative_to(ROOT)
    assert out["version"] == out["dist_version"] == tracker.__version__
    assert out["py_typed"] is True
    assert out["schemas"] == SCHEMA_FILES
    assert out["sql"] == SQL_FILES
    assert [f"{name}.sql" for name in out["migrations"]] == SQL_FILES
    assert out["fingerprint"] == FrameEventCodec().current.fingerprint.hex()
    assert out["round_trips"] == [True, True, True]


async def test_migrate_from_the_installed_wheel(installed: Installed, settings: Settings) -> None:
    tracker_bin = str(installed.venv / "bin" / "tracker")
    env = env_for(settings)
    names = [n.removesuffix(".sql") for n in SQL_FILES]

    # The fixture migrated this database from the checkout: the wheel's files
    # have the same checksums, so there is nothing to do.
    report = json.loads(installed.run(tracker_bin, "migrate", "--json", env=env).stdout)
    assert report["applied"] == [] and report["already_applied"] == len(SQL_FILES)

    # An empty schema: the wheel's migrations create everything.
    conn = await asyncpg.connect(settings.database.url.get())
    try:
        await conn.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
    finally:
        await conn.close()
    report = json.loads(installed.run(tracker_bin, "migrate", "--json", env=env).stdout)
    assert report["applied"] == names
    conn = await asyncpg.connect(settings.database.url.get())
    try:
        assert await conn.fetchval("SELECT count(*) FROM schema_migrations") == len(SQL_FILES)
        assert await conn.fetchval("SELECT to_regclass('frame_events') IS NOT NULL")
    finally:
        await conn.close()
