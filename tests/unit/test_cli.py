"""The ``tracker`` command's shape: a light start-up, the module entry point,
and every command printing through one helper."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import tracker

ROOT = Path(__file__).resolve().parents[2]
CLI = ROOT / "tracker" / "cli"

# Run in a fresh interpreter: what `tracker --version` imported on its way out.
PROBE = """
import json, sys
import tracker.cli
try:
    tracker.cli.main(["--version"])
except SystemExit as e:
    code = e.code
print(json.dumps({"code": code, "modules": sorted(sys.modules)}), file=sys.stderr)
"""


def test_version_imports_no_kafka_or_postgresql_client() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True
    )
    assert proc.stdout == f"tracker {tracker.__version__}\n"
    probe = json.loads(proc.stderr.splitlines()[-1])
    assert probe["code"] == 0
    heavy = {"aiokafka", "asyncpg", "aiohttp", "projections"}
    assert not heavy & {m.split(".")[0] for m in probe["modules"]}


def test_python_m_tracker_cli_is_the_command() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "tracker.cli", "--version"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (proc.returncode, proc.stdout) == (0, f"tracker {tracker.__version__}\n")
    proc = subprocess.run(
        [sys.executable, "-m", "tracker.cli", "nope"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2
    assert proc.stderr.splitlines()[-1].startswith("tracker: error: argument command: invalid choice: 'nope'")


def test_commands_print_through_the_output_helper() -> None:
    for path in sorted(CLI.glob("*.py")):
        if path.name == "output.py":
            continue
        source = path.read_text()
        assert "print(" not in source and "json.dumps" not in source, path.name
