"""peers: the same records into ``frame_events`` by other tools — Quix Streams
with its PostgreSQL sink (``bench.peer_quix``), and Kafka Connect with the
Debezium JDBC sink (``bench.peer_connect``, not at the tiny scale)."""

from __future__ import annotations

import importlib.util
from typing import Any

from bench.infra import read_json_line
from bench.scenarios.context import Bench
from bench.scenarios.registry import scenario
from bench.workers import python_argv, worker_env


@scenario("peers", needs_source=True)
async def peers(b: Bench) -> None:
    assert b.src is not None
    n = b.scale.quix_records or b.src.events
    n = min(n, b.src.events)
    vals, runs = [], []
    if importlib.util.find_spec("quixstreams") is None:
        b.figures["peer_quix_eps"] = None
        b.notes["peer_quix_eps"] = "quixstreams is not installed (pip install '.[bench]')"
    else:
        for _ in range(b.scale.reps):
            async with b.stack.scratch("quix", topic_prefix=b.src.prefix) as s:
                await b.ensure_event_partitions(s, b.src.days)
                w = b.stack.worker(
                    "quix",
                    python_argv("-m", "bench.peer_quix", "--limit", str(n)),
                    worker_env(s, PYTHONWARNINGS="ignore"),
                )
                p = await b.stack.drive(
                    [w], groups=[s.groups.event_store], total=n, timeout_s=b.scale.timeout_s
                )
                out = read_json_line(w.output())
                stored = await b.fetchval(s, "SELECT count(*) FROM frame_events")
                if stored != n:
                    raise RuntimeError(f"quix peer stored {stored} rows of {n}")
                vals.append(out["records"] / out["seconds"])
                runs.append(
                    {
                        **out,
                        "offsets_rate": p.rate()[0],
                        "worker": w.summary(),
                        "machine": b.stack.last_cpu,
                    }
                )
        b.put("peer_quix_eps", vals, 0)
    connect_runs = await _peer_connect(b)
    b.detail("peers").update(
        records=n,
        quix_runs=runs,
        method="in-process: first record deserialized to the end of app.run(count=N), i.e. after the "
        "final checkpoint has written and committed everything; the offsets-polled rate is alongside",
        connect_runs=connect_runs,
        connect_method="Kafka Connect standalone + Debezium JDBC sink (defaults but for the table, its "
        "key, upsert, no schema evolution) reading a JSON copy of the first N records (finished rows "
        "with their Connect schema: no decoding or validation on Connect's side); timed from the "
        "first row visible in the table to the N-th (count(*) polled every 0.25 s)",
    )


async def _peer_connect(b: Bench) -> list[dict[str, Any]]:
    assert b.src is not None
    if b.scale.connect_records < 0:
        b.figures["peer_connect_eps"] = None
        b.notes["peer_connect_eps"] = f"not run at scale {b.scale.name} (a JVM and ~100 MB of jars)"
        return []
    n = min(b.scale.connect_records or b.src.events, b.src.events)
    json_prefix = f"{b.src.prefix}.connect-json"
    vals, runs = [], []
    for _ in range(b.scale.reps):
        async with b.stack.scratch("connect", topic_prefix=b.src.prefix) as s:
            await b.ensure_event_partitions(s, b.src.days)
            w = b.stack.worker(
                "connect",
                python_argv("-m", "bench.peer_connect", "--limit", str(n), "--json-prefix", json_prefix),
                worker_env(s),
            )
            await b.stack.drive([w], groups=[], total=n, timeout_s=b.scale.timeout_s)
            if w.returncode != 0:
                raise RuntimeError(f"connect peer exited {w.returncode}: {w.log_tail(20)}")
            out = read_json_line(w.output())
            stored = await b.fetchval(s, "SELECT count(*) FROM frame_events")
            if stored != n:
                raise RuntimeError(f"connect peer stored {stored} rows of {n}")
            vals.append(out["rate"])
            runs.append({**out, "worker": w.summary(), "machine": b.stack.last_cpu})
    b.put("peer_connect_eps", vals, 0)
    b.notes["peer_connect_eps"] = (
        "Kafka Connect reads a JSON copy of the records (finished rows with their schema): it does no "
        "Avro decoding or validation, which our consumer and the Quix peer do"
    )
    return runs
