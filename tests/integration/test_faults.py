"""The bad day, for real: crashes, a database outage, a broker restart, a
rebalance, a slow database. Simulator and workers run as separate processes;
every scenario ends with the same two checks: frame_events holds exactly the
published event ids (none lost, none twice), and the projections equal a fold
of frame_events. Each prints what it published, stored and lost, and how long
recovery took (see the test output with -s).
"""

from __future__ import annotations

import asyncio
import random
import time
import urllib.request
from collections import Counter
from pathlib import Path

import asyncpg
import pytest

from tests.integration.conftest import stack, wait_for
from tests.integration.helpers import (
    assert_same_projection,
    free_port,
    projection_vs_store,
    read_topic,
    run_cli,
)
from tests.integration.procs import Proc
from tracker.adapters.kafka import topic_partitions
from tracker.codec import FrameEventCodec
from tracker.config import Settings

pytestmark = pytest.mark.faults


async def _ids_in_store(settings: Settings) -> Counter[str]:
    conn = await asyncpg.connect(settings.database.url.get())
    try:
        return Counter(str(r[0]) for r in await conn.fetch("SELECT event_id FROM frame_events"))
    finally:
        await conn.close()


async def _stored(settings: Settings) -> int:
    try:
        conn = await asyncpg.connect(settings.database.url.get(), timeout=2)
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return -1
    try:
        return int(await conn.fetchval("SELECT count(*) FROM frame_events"))
    finally:
        await conn.close()


async def final_checks(
    settings: Settings, ids_file: Path, name: str, recovery_s: float | None = None
) -> None:
    """Drain both groups, then: stored == published exactly; projection == fold."""
    run_cli(settings, "consume", "--until-idle", "--metrics-port", "0")
    run_cli(settings, "project", "--until-idle", "--metrics-port", "0")
    published = ids_file.read_text().split()
    stored = await _ids_in_store(settings)
    assert len(published) == len(set(published)) > 0
    lost = set(published) - set(stored)
    extra = set(stored) - set(published)
    twice = [i for i, n in stored.items() if n > 1]
    print(
        f"\n[{name}] published {len(published)}, stored {sum(stored.values())}, lost {len(lost)}, "
        f"unexpected {len(extra)}, twice {len(twice)}"
        + (f", recovered in {recovery_s:.1f}s" if recovery_s is not None else "")
    )
    assert not lost and not extra and not twice
    assert_same_projection(*(await projection_vs_store(settings)))


def simulator(settings: Settings, tmp: Path, seconds: float, **kw: str) -> tuple[Proc, Path]:
    ids = tmp / "published.txt"
    args = [
        "simulate",
        "--cameras",
        kw.get("cameras", "4"),
        "--fps",
        kw.get("fps", "20"),
        "--duration",
        str(seconds),
        "--failure-rate",
        "0.1",
        "--seed",
        kw.get("seed", "1"),
        "--ids-out",
        str(ids),
    ]
    if kw.get("fast"):
        args.append("--fast")
    return Proc(settings, *args, log=tmp / "simulate.log").start(), ids


async def test_crash_sigkill_both_workers_repeatedly(settings: Settings, tmp_path: Path) -> None:
    sim, ids = simulator(settings, tmp_path, 16)
    env = {"TRACKER_BATCH_MAX_RECORDS": "200", "TRACKER_INSTANCE_ID": "w1"}
    consumer = Proc(settings, "consume", "--metrics-port", "0", log=tmp_path / "c.log", **env).start()
    projector = Proc(settings, "project", "--metrics-port", "0", log=tmp_path / "p.log", **env).start()
    rng = random.Random(3)
    kills = {"consume": 0, "project": 0}
    while sim.alive():
        await asyncio.sleep(rng.uniform(0.8, 2.0))
        victim = rng.choice([consumer, projector])
        victim.kill()
        kills[victim.args[0]] += 1
        victim.start()
    assert await sim.wait() == 0
    await consumer.stop()
    await projector.stop()
    assert min(kills.values()) >= 5, kills
    print(f"\n[crash] SIGKILLs: {kills}")
    await final_checks(settings, ids, "crash")


async def test_database_outage_of_20_seconds(settings: Settings, tmp_path: Path) -> None:
    port = free_port()
    sim, ids = simulator(settings, tmp_path, 30, fps="10")
    consumer = Proc(settings, "consume", "--metrics-port", "0", log=tmp_path / "c.log").start()
    projector = Proc(settings, "project", "--metrics-port", "0", log=tmp_path / "p.log").start()
    api = Proc(settings, "serve", "--port", str(port), log=tmp_path / "api.log").start()

    def readyz() -> int:
        try:
            return urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5).status
        except urllib.error.HTTPError as e:
            return e.code
        except OSError:
            return -1

    await wait_for(lambda: _async(readyz() == 200), timeout=30)
    await wait_for(lambda: _positive(settings), timeout=30)
    await asyncio.sleep(2)
    before = await _committed(settings)
    stack("stop-postgres")
    try:
        t_down = time.monotonic()
        await asyncio.sleep(3)
        assert await asyncio.to_thread(readyz) == 503  # not ready while the database is down
        committed_during = await _committed(settings)
        await asyncio.sleep(max(0.0, 20 - (time.monotonic() - t_down)))
        # Nothing acknowledged to Kafka that is not in the database: at most the
        # batch that was already durable when the database went away.
        committed_end = await _committed(settings)
        assert committed_end == committed_during
        assert consumer.alive() and projector.alive()
    finally:
        stack("start-postgres")
    t_up = time.monotonic()
    await wait_for(lambda: _async(readyz() == 200), timeout=60)
    target = len(ids.read_text().split()) if not sim.alive() else 0
    assert await sim.wait() == 0
    published = len(ids.read_text().split())
    await wait_for(lambda: _at_least(settings, published), timeout=120)
    recovery = time.monotonic() - t_up
    for p in (consumer, projector, api):
        assert await p.stop() == 0
    assert before <= committed_during
    del target
    await final_checks(settings, ids, "database outage", recovery)


async def test_broker_restart(settings: Settings, tmp_path: Path) -> None:
    sim, ids = simulator(settings, tmp_path, 25, fps="10", seed="5")
    consumer = Proc(settings, "consume", "--metrics-port", "0", log=tmp_path / "c.log").start()
    projector = Proc(settings, "project", "--metrics-port", "0", log=tmp_path / "p.log").start()
    await wait_for(lambda: _positive(settings), timeout=30)
    await asyncio.sleep(2)
    stack("stop-kafka")
    try:
        await asyncio.sleep(5)
    finally:
        stack("start-kafka")
    t_up = time.monotonic()
    assert await sim.wait(120) == 0, (tmp_path / "simulate.log").read_text()[-2000:]
    published = len(ids.read_text().split())
    await wait_for(lambda: _at_least(settings, published), timeout=120)
    recovery = time.monotonic() - t_up
    for p in (consumer, projector):
        assert p.alive()
        assert await p.stop() == 0
    # The idempotent producer wrote no record twice, even across the restart.
    codec = FrameEventCodec()
    in_kafka = Counter()
    for topic in settings.topics.events:
        for m in await read_topic(settings, topic):
            in_kafka[codec.decode_record(m.value).record["event_id"]] += 1
    assert sum(in_kafka.values()) == len(in_kafka) == published
    await final_checks(settings, ids, "broker restart", recovery)


async def test_rebalance_kill_one_member_then_a_third_joins(settings: Settings, tmp_path: Path) -> None:
    sim, ids = simulator(settings, tmp_path, 24, fps="15", seed="9")
    a = Proc(settings, "consume", "--metrics-port", "0", log=tmp_path / "a.log").start()
    b = Proc(settings, "consume", "--metrics-port", "0", log=tmp_path / "b.log").start()
    await wait_for(lambda: _positive(settings), timeout=30)
    await asyncio.sleep(4)
    a.kill()  # its partitions move to b after the session timeout
    t_kill = time.monotonic()
    n0 = await _stored(settings)
    await wait_for(lambda: _grows(settings, n0), timeout=40)
    await asyncio.sleep(4)
    c = Proc(settings, "consume", "--metrics-port", "0", log=tmp_path / "c.log").start()
    assert await sim.wait() == 0
    published = len(ids.read_text().split())
    await wait_for(lambda: _at_least(settings, published), timeout=120)
    recovery = time.monotonic() - t_kill
    for p in (b, c):
        assert p.alive()
        assert await p.stop() == 0
    logs = (tmp_path / "b.log").read_text() + (tmp_path / "c.log").read_text()
    assert logs.count("partitions assigned") >= 3  # b: initial, after the kill, after c joined
    await final_checks(settings, ids, "rebalance", recovery)


async def test_slow_database_applies_back_pressure_with_flat_memory(
    settings: Settings, tmp_path: Path
) -> None:
    # A backlog first, then a database that takes 0.5 s per statement on frame_events.
    sim, ids = simulator(settings, tmp_path, 10, fps="30", cameras="8", seed="13", fast="1")
    assert await sim.wait() == 0
    sim2 = Proc(
        settings,
        "simulate",
        "--cameras",
        "8",
        "--fps",
        "30",
        "--duration",
        "10",
        "--fast",
        "--seed",
        "14",
        "--ids-out",
        str(tmp_path / "published2.txt"),
    ).start()
    assert await sim2.wait() == 0
    conn = await asyncpg.connect(settings.database.url.get())
    await conn.execute("""
        CREATE FUNCTION slow_down() RETURNS trigger LANGUAGE plpgsql AS
        $$ BEGIN PERFORM pg_sleep(0.5); RETURN NULL; END $$;
        CREATE TRIGGER slow_down BEFORE INSERT ON frame_events
            FOR EACH STATEMENT EXECUTE FUNCTION slow_down();""")
    consumer = Proc(
        settings, "consume", "--metrics-port", "0", log=tmp_path / "c.log", TRACKER_BATCH_MAX_RECORDS="500"
    ).start()
    samples = []
    for _ in range(30):
        await asyncio.sleep(0.5)
        samples.append(consumer.rss_mb())
    stored_slow = await _stored(settings)
    await conn.execute("DROP TRIGGER slow_down ON frame_events")
    await conn.close()
    await consumer.stop()
    backlog = len(ids.read_text().split()) + len((tmp_path / "published2.txt").read_text().split())
    warm = samples[6:]
    first, second = warm[: len(warm) // 2], warm[len(warm) // 2 :]
    print(
        f"\n[slow database] backlog {backlog} events, stored {stored_slow} while slow, "
        f"consumer RSS {min(warm):.0f}-{max(warm):.0f} MB"
    )
    # Still consuming, slowly, and not pulling the whole backlog into memory.
    assert 0 < stored_slow < backlog
    # Flat: no growth from the first half of the slow period to the second.
    assert max(second) - max(first) < 10, samples
    (tmp_path / "all.txt").write_text(ids.read_text() + (tmp_path / "published2.txt").read_text())
    await final_checks(settings, tmp_path / "all.txt", "slow database")


async def _committed(settings: Settings) -> int:
    from aiokafka import AIOKafkaConsumer

    tps = await topic_partitions(settings.kafka, settings.topics.events)
    c = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka.bootstrap,
        group_id=settings.groups.event_store,
        enable_auto_commit=False,
    )
    await c.start()
    try:
        return sum([await c.committed(tp) or 0 for tp in tps])
    finally:
        await c.stop()


async def _async(value: bool) -> bool:
    return value


async def _positive(settings: Settings) -> bool:
    return await _stored(settings) > 0


async def _at_least(settings: Settings, n: int) -> bool:
    return await _stored(settings) >= n


async def _grows(settings: Settings, n: int) -> bool:
    return await _stored(settings) > n
