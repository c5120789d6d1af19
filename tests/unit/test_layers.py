"""The import contract (pyproject.toml, [tool.importlinter]) holds, and the
checker would notice a breach: a module importing from a layer above it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = shutil.which("lint-imports", path=str(Path(sys.executable).parent))

pytestmark = pytest.mark.skipif(LINT_IMPORTS is None, reason="import-linter is not installed (dev extra)")


def _lint(*args: str) -> subprocess.CompletedProcess[str]:
    assert LINT_IMPORTS is not None
    return subprocess.run(
        [LINT_IMPORTS, "--no-cache", *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def test_the_layer_contracts_hold() -> None:
    proc = _lint()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 broken" in proc.stdout


def test_a_breach_is_reported(tmp_path: Path) -> None:
    # The same checker with the layers upside down: the real imports breach it.
    config = tmp_path / "inverted.toml"
    config.write_text(
        "[tool.importlinter]\n"
        'root_packages = ["tracker"]\n'
        "[[tool.importlinter.contracts]]\n"
        'name = "inverted"\n'
        'type = "layers"\n'
        'layers = ["tracker.errors", "tracker.domain", "tracker.codec"]\n'
    )
    proc = _lint("--config", str(config))
    assert proc.returncode != 0
    assert "tracker.domain is not allowed to import tracker.errors" in proc.stdout
