"""profile (only with ``--only profile``): each worker drains the pre-loaded
records under py-spy; ``profile-<worker>.txt`` in the results folder says
where its CPU goes (``bench.profile``)."""

from __future__ import annotations

import sys

from bench import profile as prof
from bench.infra import log
from bench.scenarios.context import Bench
from bench.scenarios.registry import scenario
from bench.workers import tracker_argv, worker_env


@scenario("profile", needs_source=True, on_request=True)
async def profile(b: Bench) -> None:
    assert b.src is not None
    out_dir = b.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    d = b.detail("profile")
    for name in ("consume", "project", "pipeline", "replay"):
        async with b.stack.scratch(f"profile-{name}", topic_prefix=b.src.prefix) as s:
            raw = out_dir / f"profile-{name}.collapsed"
            if name == "replay":
                argv = tracker_argv("replay", "--source", "topics", "--json")
                groups: list[str] = []
            elif name == "pipeline":
                argv = tracker_argv("consume", "--inline-projection", "--until-idle", "--metrics-port", "0")
                groups = [s.groups.event_store]
            else:
                argv = tracker_argv(name, "--until-idle", "--metrics-port", "0")
                groups = [s.groups.event_store if name == "consume" else s.groups.projections]
            w = b.stack.worker(f"profile-{name}", prof.wrap(argv, raw), worker_env(s))
            p = await b.stack.drive(
                [w], groups=groups, total=b.src.events if groups else 0, timeout_s=b.scale.timeout_s
            )
            text, data = prof.summarize(raw)
            (out_dir / f"profile-{name}.txt").write_text(text + "\n")
            d[name] = {"rate_under_profiler": p.rate()[0] if groups else None, **data}
            log(f"profile of {name} ({b.src.events:,} events): {out_dir / f'profile-{name}.txt'}")
            print(f"\n== {name}\n" + "\n".join(text.splitlines()[:25]), file=sys.stderr)
