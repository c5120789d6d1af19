"""``python -m bench --only profile``: where the workers' CPU goes.

Each worker (``tracker consume``, ``tracker project``, ``tracker replay``)
drains the pre-loaded records once under py-spy (sampling, non-blocking, GIL
holders only so that waiting on the network is not counted), and the collapsed
stacks are summarised: share of samples per function, inclusive and self.
Writes ``profile-<worker>.txt`` (the summary) and ``profile-<worker>.collapsed``
(for flamegraph tools) into the results folder.
"""

from __future__ import annotations

import shutil
import sys
from collections import Counter
from pathlib import Path
from typing import Any

_SKIP = (
    "<module>",
    "_run_module_as_main",
    "_run_code",
    "run (asyncio",
    "run_until_complete",
    "run_forever",
    "_run_once",
    "_run (asyncio",
)


def py_spy() -> str | None:
    exe = Path(sys.executable).parent / "py-spy"
    return str(exe) if exe.exists() else shutil.which("py-spy")


def wrap(argv: list[str], out: Path, rate: int = 250) -> list[str]:
    exe = py_spy()
    if exe is None:
        raise RuntimeError("py-spy is not installed (pip install '.[bench]')")
    return [
        exe,
        "record",
        "--format",
        "raw",
        "--rate",
        str(rate),
        "--nonblocking",
        "--gil",
        "-o",
        str(out),
        "--",
        *argv,
    ]


def _frame(f: str) -> str:
    # py-spy raw frames: "function (path/to/file.py:line)"
    name, _, rest = f.partition(" (")
    path = rest.rsplit(":", 1)[0]
    for marker in ("site-packages/", "/tracker/", "/projections/", "/bench/", "lib/python3"):
        if marker in path:
            path = path[path.index(marker) + (len(marker) if marker == "site-packages/" else 1) :]
            break
    return f"{name} ({path})"


def summarize(collapsed: Path, top: int = 30) -> tuple[str, dict[str, Any]]:
    incl: Counter[str] = Counter()
    self_: Counter[str] = Counter()
    total = 0
    for line in collapsed.read_text(errors="replace").splitlines():
        stack, _, num = line.rpartition(" ")
        if not num.isdigit():
            continue
        count = int(num)
        frames = [_frame(f) for f in stack.split(";") if f and not any(s in f for s in _SKIP)]
        if not frames:
            continue
        total += count
        for f in set(frames):
            incl[f] += count
        self_[frames[-1]] += count
    lines = [f"{total} samples (GIL held)", "", "inclusive %  self %  function"]
    total = max(total, 1)
    for fn, c in incl.most_common(top):
        lines.append(f"{100.0 * c / total:10.1f}  {100.0 * self_[fn] / total:6.1f}  {fn}")
    lines += ["", "top self time:"]
    for fn, c in self_.most_common(15):
        lines.append(f"{100.0 * c / total:6.1f}  {fn}")
    data = {
        "samples": total,
        "inclusive_pct": {fn: round(100.0 * c / total, 1) for fn, c in incl.most_common(top)},
        "self_pct": {fn: round(100.0 * c / total, 1) for fn, c in self_.most_common(15)},
    }
    return "\n".join(lines), data
