"""environment: what the figures were measured on and with — Kafka and
PostgreSQL versions (and PostgreSQL's settings), the workers' batch settings,
the machine, the packages, the commit of the workers' code. Taken first, before
the sources are pre-loaded."""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import re
import subprocess
import sys

import asyncpg

from bench import workers
from bench.infra import git_commit
from bench.scenarios.context import Bench
from bench.scenarios.registry import scenario
from bench.workers import ROOT


@scenario("environment", setup=True)
async def environment(b: Bench) -> None:
    d = b.detail("environment")
    facts = await asyncio.to_thread(_host_facts)
    conn = await asyncpg.connect(b.base.database.url.get())
    try:
        pg = str(await conn.fetchval("SHOW server_version"))
        d["postgres_settings"] = {
            r["name"]: r["setting"]
            for r in await conn.fetch(
                "SELECT name, setting FROM pg_settings WHERE name IN ('shared_buffers', "
                "'synchronous_commit', 'fsync', 'max_wal_size', 'work_mem', "
                "'max_parallel_workers_per_gather', 'wal_level')"
            )
        }
    finally:
        await conn.close()
    kafka, commit, model = facts["kafka"], facts["commit"], facts["cpu_model"]
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    from importlib.metadata import PackageNotFoundError, version

    pkgs: dict[str, str | None] = {}
    for p in ("aiokafka", "asyncpg", "fastavro", "quixstreams", "confluent-kafka", "psycopg2-binary"):
        try:
            pkgs[p] = version(p)
        except PackageNotFoundError:
            pkgs[p] = None
    b.figures.update(
        kafka_version=kafka,
        postgres_version=pg,
        partitions=b.base.topics.partitions,
        batch_max_records=b.base.batch.max_records,
        batch_timeout_ms=b.base.batch.timeout_ms,
        batch_linger_ms=b.base.batch.linger_ms,
        cpu_count=os.cpu_count() or 1,
        git_commit=commit,
    )
    d.update(
        code=("this checkout" if workers.CODE_ROOT == ROOT else "another checkout (--code)"),
        cpu_model=model,
        memory_gb=round(mem_gb, 1),
        python=platform.python_version(),
        packages=pkgs,
        replay_batch_size=5000,
        load_average=list(os.getloadavg()),
        topics_per_source=2,
    )


def _host_facts() -> dict[str, str]:
    """Kafka version (from the local stack), git commit of the workers' code, CPU model."""
    out = {"kafka": "unknown", "commit": "unknown", "cpu_model": ""}
    with contextlib.suppress(Exception):
        status = subprocess.run(
            [sys.executable, str(ROOT / "compose/local/stack.py"), "status"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout
        m = re.search(r"Kafka ([0-9][0-9.]*)", status)
        if m:
            out["kafka"] = m.group(1)
    out["commit"] = git_commit()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        m = re.search(r"model name\s*:\s*(.+)", f.read())
        out["cpu_model"] = m.group(1).strip() if m else ""
    return out
