"""The scenarios, one module each. Each pre-loads its input first, measures only
what it names, repeats it, and uses databases (and, where it publishes, topics)
of its own.

A module registers its scenario (``registry.scenario``): its name, the keys of
the Key table (``keys``) it owns, and the function that runs it with the
harness context (``context.Bench``). ``ORDER`` is the order a run takes them in;
importing this package imports every module, which registers them in that order.
"""

from __future__ import annotations

import importlib

from bench.scenarios.context import Bench, Source
from bench.scenarios.keys import DERIVED, KEYS, NULLABLE, Key, check_target, derive
from bench.scenarios.registry import REGISTRY, Scenario, scenario

ORDER = (
    "environment",
    "limits",
    "baseline",
    "peers",
    "ingest",
    "freshness",
    "replay",
    "queries",
    "ui",
    "memory",
    "sdk",
    "scale",
    "soak",
    "anomaly",
    "profile",
)
for _name in ORDER:
    importlib.import_module(f"{__name__}.{_name}")

# A full run; and what runs only when --only names it.
SCENARIOS = tuple(s.name for s in REGISTRY.values() if not s.on_request)
EXTRA = tuple(s.name for s in REGISTRY.values() if s.on_request)

__all__ = [
    "DERIVED",
    "EXTRA",
    "KEYS",
    "NULLABLE",
    "ORDER",
    "REGISTRY",
    "SCENARIOS",
    "Bench",
    "Key",
    "Scenario",
    "Source",
    "check_target",
    "derive",
    "scenario",
]
