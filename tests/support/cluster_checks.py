"""What every cluster fault test checks, and how it finds its way round the cluster.

Each scenario ends with :func:`final_checks`: both groups drained, then ``frame_events`` holds exactly
the published event ids (none lost, none twice) and the projections equal a fold of ``frame_events``.
Between scenarios :func:`wait_in_sync` makes sure every replica is back, so that one test's broker
still catching up is never the next test's second broker down.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from tests.integration.helpers import assert_same_projection, projection_vs_store, run_cli
from tests.integration.procs import Proc
from tracker.adapters.kafka import client_kwargs, make_admin
from tracker.adapters.postgres import connect
from tracker.config import Settings
from tracker.errors import TrackerError

from .cluster import Namespace

T = TypeVar("T")


def simulator(ns: Namespace, tmp: Path, *, seconds: float = 600, seed: str = "1") -> tuple[Proc, Path]:
    """``tracker simulate`` (2 cameras at 8 fps: about 150 events/s) as the publisher, writing the ids
    it published to a file when it ends: after ``seconds``, or when stopped (SIGTERM)."""
    ids = tmp / "published.txt"
    args = ["simulate", "--cameras", "2", "--fps", "8", "--duration", str(seconds)]
    args += ["--failure-rate", "0.1", "--seed", seed]
    sim = Proc(ns.publisher, *args, "--ids-out", str(ids), log=tmp / "simulate.log")
    sim.start()
    return sim, ids


async def ids_in_store(settings: Settings) -> Counter[str]:
    conn = await connect(settings.database)
    try:
        return Counter(str(r[0]) for r in await conn.fetch("SELECT event_id FROM frame_events"))
    finally:
        await conn.close()


async def stored(settings: Settings) -> int:
    try:
        conn = await connect(settings.database, timeout=3)
    except TrackerError:
        return -1
    try:
        return int(await conn.fetchval("SELECT count(*) FROM frame_events"))
    finally:
        await conn.close()


async def wait_stored(settings: Settings, at_least: int, timeout: float = 90) -> float:
    """Wait until ``at_least`` events are stored; how long it took."""
    t0 = time.monotonic()
    while await stored(settings) < at_least:
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"fewer than {at_least} events stored after {timeout}s")
        await asyncio.sleep(0.3)
    return time.monotonic() - t0


async def final_checks(
    ns: Namespace, published: list[str], name: str, recovery_s: float | None = None
) -> None:
    """Drain both groups, then: stored == published exactly; projection == fold."""
    await asyncio.to_thread(run_cli, ns.event_store, "consume", "--until-idle", "--metrics-port", "0")
    await asyncio.to_thread(run_cli, ns.projections, "project", "--until-idle", "--metrics-port", "0")
    store = await ids_in_store(ns.event_store)
    assert len(published) == len(set(published)) > 0
    lost, extra = set(published) - set(store), set(store) - set(published)
    twice = [i for i, n in store.items() if n > 1]
    print(
        f"\n[{name}] published {len(published)}, stored {sum(store.values())}, lost {len(lost)}, "
        f"unexpected {len(extra)}, twice {len(twice)}"
        + (f", recovered in {recovery_s:.1f}s" if recovery_s is not None else "")
    )
    assert not lost and not extra and not twice
    assert_same_projection(*(await projection_vs_store(ns.event_store)))


async def _admin_call(
    admin: Settings, call: Callable[[AIOKafkaAdminClient], Awaitable[T]], timeout: float = 30
) -> T:
    """``call`` on a fresh admin client, again while the errors are retriable: after a node died, the
    client's metadata may name it (the least loaded node, say) until the cluster has fenced it."""
    deadline = time.monotonic() + timeout
    while True:
        client = make_admin(admin.kafka)
        try:
            await client.start()
            return await call(client)
        except KafkaError as e:
            if not e.retriable or time.monotonic() > deadline:
                raise
        finally:
            await client.close()
        await asyncio.sleep(0.5)


async def describe(admin: Settings) -> list[dict[str, Any]]:
    """The partitions of the namespace's event topics: leader, replicas, isr."""
    topics = await _admin_call(admin, lambda c: c.describe_topics(list(admin.topics.events)))
    return [dict(p, topic=t["topic"]) for t in topics for p in t["partitions"]]


async def wait_in_sync(admin: Settings, timeout: float = 60) -> None:
    """Every partition of the namespace's topics has a leader and all three replicas in sync."""
    deadline = time.monotonic() + timeout
    while True:
        parts = await describe(admin)
        if parts and all(p["leader"] >= 0 and sorted(p["isr"]) == [1, 2, 3] for p in parts):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"replicas not back in sync within {timeout}s: {parts}")
        await asyncio.sleep(0.5)


async def busiest_leader(admin: Settings) -> tuple[int, int]:
    """The node leading the most records of the event topics, and how many it leads."""
    parts = await describe(admin)
    consumer = AIOKafkaConsumer(**client_kwargs(admin.kafka), group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        ends = await consumer.end_offsets([TopicPartition(p["topic"], p["partition"]) for p in parts])
    finally:
        await consumer.stop()
    load: Counter[int] = Counter()
    for p in parts:
        load[p["leader"]] += ends[TopicPartition(p["topic"], p["partition"])]
    return load.most_common(1)[0]


async def coordinator(admin: Settings, group: str, *, not_on: int | None = None, timeout: float = 30) -> int:
    """The node that coordinates ``group``; with ``not_on``, once that node no longer does."""
    deadline = time.monotonic() + timeout
    while True:
        node = await _admin_call(admin, lambda c: c.find_coordinator(group))
        if node != not_on or time.monotonic() > deadline:
            return node
        await asyncio.sleep(0.5)
