"""baseline: the naive consumer (``python -m bench.naive``) — decode and INSERT
each record in its own transaction — over a prefix of the pre-loaded records,
with offsets committed by aiokafka's default auto-commit (``naive_eps``, what a
straightforward consumer does) and synchronously per record
(``naive_commit_each_eps``)."""

from __future__ import annotations

from typing import Any

from bench.infra import read_json_line
from bench.scenarios.context import Bench
from bench.scenarios.registry import scenario
from bench.workers import python_argv, worker_env


@scenario("baseline", needs_source=True)
async def baseline(b: Bench) -> None:
    assert b.src is not None
    n = min(b.scale.naive_records, b.src.events)
    detail: dict[str, Any] = {"records": n}
    for commit, key in (("auto", "naive_eps"), ("each", "naive_commit_each_eps")):
        vals, runs = [], []
        for _ in range(b.scale.reps):
            async with b.stack.scratch(f"naive-{commit}", topic_prefix=b.src.prefix) as s:
                await b.ensure_event_partitions(s, b.src.days)
                argv = python_argv("-m", "bench.naive", "--limit", str(n), "--commit", commit)
                w = b.stack.worker(f"naive-{commit}", argv, worker_env(s))
                p = await b.stack.drive(
                    [w], groups=[s.groups.event_store], total=n, timeout_s=b.scale.timeout_s
                )
                out = read_json_line(w.output())
                stored = await b.fetchval(s, "SELECT count(*) FROM frame_events")
                if stored != n:
                    raise RuntimeError(f"naive consumer ({commit} commit) stored {stored} rows of {n}")
                offsets_rate, info = p.rate()
                # Auto-commit moves the group's offsets only every few seconds, so
                # the in-process rate (first record to last INSERT) is the figure;
                # the offsets-polled rate is kept beside it.
                vals.append(out["records"] / out["seconds"] if commit == "auto" else offsets_rate)
                runs.append(
                    {
                        **info,
                        **out,
                        "offsets_rate": offsets_rate,
                        "worker": w.summary(),
                        "machine": b.stack.last_cpu,
                    }
                )
        b.put(key, vals, 0)
        detail[f"{commit}_commit_runs"] = runs
    detail["method"] = (
        "naive_eps: in-process rate, first record to the last INSERT, offsets by aiokafka auto-commit "
        "(default interval); naive_commit_each_eps: records committed between the first and the last "
        "offset commit seen (polled), one synchronous commit per record"
    )
    b.detail("baseline").update(detail)
