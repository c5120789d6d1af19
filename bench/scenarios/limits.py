"""limits: how fast the parts can go alone, in one process — aiokafka reading
the pre-loaded records and discarding them, the codec decoding them in memory,
COPY of the consumer's rows (``python -m bench.probes limits``)."""

from __future__ import annotations

from bench.infra import read_json_line
from bench.scenarios.context import Bench
from bench.scenarios.registry import scenario
from bench.workers import python_argv, worker_env


@scenario("limits", needs_source=True)
async def limits(b: Bench) -> None:
    assert b.src is not None
    reps = b.scale.reps
    async with b.stack.scratch("limits", topic_prefix=b.src.prefix) as s:
        w = b.stack.worker(
            "limits", python_argv("-m", "bench.probes", "limits", "--reps", str(reps)), worker_env(s)
        )
        await b.stack.drive([w], groups=[], total=0, timeout_s=b.scale.timeout_s)
        out = read_json_line(w.output())
    for kind, key in (
        ("consume", "limit_consume_eps"),
        ("decode", "limit_decode_eps"),
        ("copy", "limit_copy_rows_s"),
    ):
        b.put(key, [r["records"] / r["seconds"] for r in out[kind]], 0)
    b.detail("limits").update(
        records=b.src.events,
        copy_chunk_rows=out.get("copy_chunk_rows"),
        probe=w.summary(),
        method="one process: consume passes (no group, fetch settings of the consumer), then decode "
        "passes over the values in memory, then COPY passes (TRUNCATE between) of the rows the "
        "consumer builds",
    )
