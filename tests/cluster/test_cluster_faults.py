"""Faults in a three-broker cluster (replication 3, min.insync.replicas=2, SASL/SCRAM over TLS), each
under load and each ending with the checks of tests/support/cluster_checks.py: frame_events holds
exactly the published event ids and the projections equal a fold of it. With -s, each prints what it
published, stored and lost, and how long recovery took.

The load (a simulator) runs until the fault is over and a few seconds more, then is stopped with
SIGTERM: it flushes what it queued and exits 0 only if every event was acknowledged.
"""

from __future__ import annotations

import asyncio
import random
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.integration.procs import Proc
from tests.support.cluster import NODES, ClusterStack, Namespace
from tests.support.cluster_checks import (
    busiest_leader,
    coordinator,
    describe,
    final_checks,
    simulator,
    stored,
    wait_in_sync,
    wait_stored,
)
from tracker import events as ev
from tracker.errors import BrokerError
from tracker.publisher import FramePublisher
from tracker.simulator import SimulationConfig, plan_frame

pytestmark = pytest.mark.cluster


def _workers(ns: Namespace, tmp: Path) -> tuple[Proc, Proc]:
    consumer = Proc(ns.event_store, "consume", "--metrics-port", "0", log=tmp / "c.log").start()
    projector = Proc(ns.projections, "project", "--metrics-port", "0", log=tmp / "p.log").start()
    return consumer, projector


async def _finish(
    ns: Namespace, sim: Proc, ids: Path, workers: tuple[Proc, ...], since: float
) -> tuple[list[str], float]:
    """Load for a few seconds more, then the simulator stops (it must not have failed), everything
    published is stored, the workers stop cleanly. How long since ``since`` it all took."""
    await asyncio.sleep(3)
    assert await sim.stop() == 0, sim.log_tail()
    published = ids.read_text().split()
    await wait_stored(ns.event_store, len(published), timeout=120)
    recovery = time.monotonic() - since
    for w in workers:
        assert w.alive(), w.log_tail()
        assert await w.stop() == 0, w.log_tail()
    return published, recovery


async def test_sigkill_the_leader_of_the_busiest_partitions(
    ns: Namespace, cluster_stack: ClusterStack, tmp_path: Path
) -> None:
    await wait_in_sync(ns.admin)
    sim, ids = simulator(ns, tmp_path, seed="3")
    workers = _workers(ns, tmp_path)
    await wait_stored(ns.event_store, 1, timeout=60)
    await asyncio.sleep(2)
    node, records = await busiest_leader(ns.admin)
    await asyncio.to_thread(cluster_stack.kill_node, node)
    t_kill = time.monotonic()
    # Fenced after broker.session.timeout.ms (4 s): its leaderships move, it leaves every ISR.
    deadline = t_kill + 30
    while True:
        parts = await describe(ns.admin)
        if not any(p["leader"] == node or node in p["isr"] for p in parts):
            break
        assert time.monotonic() < deadline, parts
        await asyncio.sleep(0.5)
    print(f"\n[SIGKILL] node {node} out of every ISR {time.monotonic() - t_kill:.1f}s after the kill")
    n0 = await stored(ns.event_store)
    await asyncio.sleep(2)
    assert await stored(ns.event_store) > n0  # still storing with two brokers of three
    await asyncio.to_thread(cluster_stack.start_node, node)
    published, recovery = await _finish(ns, sim, ids, workers, t_kill)
    await wait_in_sync(ns.admin)  # the restarted broker caught up
    await final_checks(ns, published, f"SIGKILL node {node}, leader of {records} records", recovery)


async def test_rolling_restart_one_broker_at_a_time(
    ns: Namespace, cluster_stack: ClusterStack, tmp_path: Path
) -> None:
    await wait_in_sync(ns.admin)
    sim, ids = simulator(ns, tmp_path, seed="5")
    workers = _workers(ns, tmp_path)
    await wait_stored(ns.event_store, 1, timeout=60)
    t0 = time.monotonic()
    took = []
    for node in NODES:
        t = time.monotonic()
        await asyncio.to_thread(cluster_stack.stop_node, node)  # controlled shutdown (SIGTERM)
        t1 = time.monotonic()
        await asyncio.to_thread(cluster_stack.start_node, node)
        t2 = time.monotonic()
        await wait_in_sync(ns.admin)  # never take the next one down before this one is back in sync
        t3 = time.monotonic()
        took.append(f"node {node}: stop {t1 - t:.1f}s, start {t2 - t1:.1f}s, sync {t3 - t2:.1f}s")
    print(f"\n[rolling restart] {'; '.join(took)}")
    published, recovery = await _finish(ns, sim, ids, workers, t0)
    await final_checks(ns, published, "rolling restart", recovery)


def _planned_events(frames: int, seed: int) -> list[ev.FrameEvent]:
    rng = random.Random(seed)
    cfg = SimulationConfig(cameras=2, fps=10, failure_rate=0.1, seed=seed)
    start = datetime.now(UTC)
    out: list[tuple[float, ev.FrameEvent]] = []
    for i in range(frames):
        out += plan_frame(rng, cfg, f"cam-{i % 2 + 1:03d}", i * 0.1, start, "processor/1")
    return [e for _, e in sorted(out, key=lambda te: te[0])]


async def test_two_brokers_down_no_write_is_acknowledged_and_none_is_lost(
    ns: Namespace, cluster_stack: ClusterStack
) -> None:
    """With one replica of three left (and no controller quorum), an acks=all write must not be
    acknowledged: the producer blocks, or fails loudly. Whatever was acknowledged is stored, once;
    what failed is published again, as a service would (the event store keeps one copy)."""
    await wait_in_sync(ns.admin)
    events = _planned_events(40, seed=11)
    before, during, after = events[:100], events[100:200], events[200:]
    acknowledged: list[str] = []
    async with FramePublisher(ns.publisher, producer_name="two-down") as pub:
        for e in before:
            await pub.publish(e, wait=False)
        await pub.flush()
        acknowledged += [e.event_id for e in before]
        down = [2, 3]
        for node in down:
            await asyncio.to_thread(cluster_stack.kill_node, node)
        t_down = time.monotonic()
        deliveries = [(e, await pub.send(e)) for e in during]
        await asyncio.sleep(8)
        confirmed = [e for e, d in deliveries if d.done() and d.exception() is None]
        failed = [e for e, d in deliveries if d.done() and d.exception() is not None]
        print(
            f"\n[two brokers down] {len(during)} sends in {time.monotonic() - t_down:.0f}s: "
            f"{len(confirmed)} acknowledged, {len(failed)} failed, "
            f"{len(during) - len(confirmed) - len(failed)} blocked"
        )
        assert not confirmed, "an acks=all write was acknowledged with one replica of three"
        t_up = time.monotonic()
        await asyncio.to_thread(cluster_stack.start_all)
        for e, d in deliveries:
            try:
                await asyncio.wait_for(d, 60)
            except BrokerError:
                await pub.publish(e)  # failed loudly: the service publishes it again
            acknowledged.append(e.event_id)
        for e in after:
            await pub.publish(e, wait=False)
        await pub.flush()
        acknowledged += [e.event_id for e in after]
    recovery = time.monotonic() - t_up
    await wait_in_sync(ns.admin)
    await final_checks(ns, acknowledged, "two brokers down", recovery)


async def test_group_coordinator_killed_mid_rebalance(
    ns: Namespace, cluster_stack: ClusterStack, tmp_path: Path
) -> None:
    await wait_in_sync(ns.admin)
    sim, ids = simulator(ns, tmp_path, seed="9")
    a = Proc(ns.event_store, "consume", "--metrics-port", "0", log=tmp_path / "a.log").start()
    await wait_stored(ns.event_store, 1, timeout=60)
    node = await coordinator(ns.admin, ns.admin.groups.event_store)
    b = Proc(ns.event_store, "consume", "--metrics-port", "0", log=tmp_path / "b.log").start()
    # The rebalance has begun once the first member gives its partitions up (its first join
    # revoked nothing: "partitions revoked: []").
    deadline = time.monotonic() + 30
    while "partitions revoked: ['" not in a.output():
        assert time.monotonic() < deadline, "no rebalance after a second member joined"
        await asyncio.sleep(0.1)
    await asyncio.to_thread(cluster_stack.kill_node, node)
    t_kill = time.monotonic()
    # Fenced after broker.session.timeout.ms (4 s): coordination moves with the leadership of the
    # group's __consumer_offsets partition.
    moved_to = await coordinator(ns.admin, ns.admin.groups.event_store, not_on=node)
    await asyncio.sleep(max(0.0, 5 - (time.monotonic() - t_kill)))
    await asyncio.to_thread(cluster_stack.start_node, node)
    published, recovery = await _finish(ns, sim, ids, (a, b), t_kill)
    print(f"\n[coordinator] node {node} killed mid-rebalance, coordination moved to node {moved_to}")
    assert moved_to != node
    logs = (tmp_path / "a.log").read_text() + (tmp_path / "b.log").read_text()
    assert logs.count("partitions assigned") >= 3  # a before b joined, then a and b
    await wait_in_sync(ns.admin)
    await final_checks(ns, published, "coordinator killed mid-rebalance", recovery)
