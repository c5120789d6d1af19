"""The benchmark harness runs end to end at a tiny scale, so that it cannot rot
unnoticed. Nothing here is timed: the figures of a tiny run mean nothing, only
their presence is checked (targets are goals reported by ``make bench``, never
asserted)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest

from bench.report import missing_keys
from bench.scenarios import KEYS, NULLABLE
from tracker.adapters.kafka import make_admin
from tracker.config import Settings

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.integration

TEXT_KEYS = {"kafka_version", "postgres_version", "git_commit"}


def test_bench_tiny_writes_every_key(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "BENCH_SCALE"}
    env["BENCH_SCALE"] = "tiny"
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench", "--out", str(tmp_path), "--no-plot"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, f"bench exited {proc.returncode}:\n{stdout[-3000:]}\n{stderr[-5000:]}"
    result = json.loads((tmp_path / "latest.json").read_text())
    assert result["scale"] == "tiny"
    assert missing_keys(result) == []
    for key in KEYS:
        value = result[key.name]
        if value is None:
            # Only documented exceptions, each with a note saying why.
            assert key.name in NULLABLE, key.name
            assert result.get(f"{key.name}_note"), key.name
        elif key.name in TEXT_KEYS:
            assert isinstance(value, str) and value, key.name
        else:
            assert isinstance(value, int | float) and not isinstance(value, bool), (key.name, value)
            assert value == value and value >= 0, (key.name, value)  # a number, not NaN
    assert "pipeline_eps" in stdout  # the table
    # It cleaned up after itself: its databases and topics are named after its pid.
    dbs, topics = asyncio.run(_leftovers(proc.pid))
    assert not dbs, f"databases left behind: {dbs}"
    assert not topics, f"topics left behind: {topics}"


async def _leftovers(pid: int) -> tuple[list[str], list[str]]:
    settings = Settings.from_env()
    conn = await asyncpg.connect(settings.database.url.get())
    try:
        rows = await conn.fetch("SELECT datname FROM pg_database WHERE datname LIKE $1", f"bench\\_{pid}\\_%")
    finally:
        await conn.close()
    admin = make_admin(settings.kafka)
    await admin.start()
    try:
        topics = [t for t in await admin.list_topics() if t.startswith(f"bench-{pid}-")]
    finally:
        await admin.close()
    return [r[0] for r in rows], topics


async def test_the_query_data_set_agrees_with_a_fold_of_its_events(settings: Settings) -> None:
    """bench.querydata writes the projection tables directly: its rows and every
    rollup, the failure rollup included, are what the projection would make of
    the events it stores."""
    from bench import querydata
    from tests.integration.helpers import assert_same_projection, projection_vs_store

    info = await querydata.build(settings, 10_000, log=lambda *_: None)
    assert info["stored_events"] > 0 and info["failure_rollup_rows"] > 0
    assert_same_projection(*(await projection_vs_store(settings)))
