"""baseline: the naive consumer — decode, INSERT in its own transaction and
commit the offset, per record (``python -m bench.naive``), over a prefix of
the pre-loaded records."""

from __future__ import annotations

from bench.scenarios.context import Bench
from bench.scenarios.registry import scenario
from bench.workers import python_argv, worker_env


@scenario("baseline", needs_source=True)
async def baseline(b: Bench) -> None:
    assert b.src is not None
    n = min(b.scale.naive_records, b.src.events)
    vals, runs = [], []
    for _ in range(b.scale.reps):
        async with b.stack.scratch("naive", topic_prefix=b.src.prefix) as s:
            await b.ensure_event_partitions(s, b.src.days)
            w = b.stack.worker("naive", python_argv("-m", "bench.naive", "--limit", str(n)), worker_env(s))
            p = await b.stack.drive([w], groups=[s.event_store_group], total=n, timeout_s=b.scale.timeout_s)
            rate, info = p.rate()
            vals.append(rate)
            runs.append({**info, "worker": w.summary(), "machine": b.stack.last_cpu})
    b.put("naive_eps", vals, 0)
    b.detail("baseline").update(records=n, runs=runs)
