"""The registry of scenarios. Each module of ``bench.scenarios`` registers its
scenario when it is imported: its name, the function that runs it with the
harness context (``Bench``), and when it runs; the keys it writes are the Key
table's keys of that scenario. The package imports the modules in run order,
which is the registry's order."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bench.scenarios.keys import KEYS

if TYPE_CHECKING:
    from bench.scenarios.context import Bench

Run = Callable[["Bench"], Awaitable[None]]


@dataclass(frozen=True)
class Scenario:
    name: str
    keys: tuple[str, ...]  # the Key table's keys of this scenario (the ratios derived from them included)
    run: Run
    needs_source: bool  # reads the pre-loaded records
    setup: bool  # facts about the run: taken first, before the pre-load, once (not timed, not rerun)
    on_request: bool  # not part of a full run: only when --only names it


REGISTRY: dict[str, Scenario] = {}


def scenario(
    name: str,
    *,
    needs_source: bool = False,
    setup: bool = False,
    on_request: bool = False,
) -> Callable[[Run], Run]:
    """Register the decorated function as scenario ``name``."""

    def register(run: Run) -> Run:
        if name in REGISTRY:
            raise ValueError(f"scenario {name} registered twice")
        keys = tuple(k.name for k in KEYS if k.scenario == name)
        REGISTRY[name] = Scenario(name, keys, run, needs_source, setup, on_request)
        return run

    return register
