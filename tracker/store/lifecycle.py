"""Lifecycle checks on stored events: valid records that are illegal for their frame.

Such events are stored and flagged (``frame_events.lifecycle_flag``), never
dropped: the event store keeps what happened, the flag says it should not have.
The check is by occurrence time, not arrival order, so an event that merely
arrives late is not flagged.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, MutableMapping
from typing import Any

from tracker.domain import TERMINAL_EVENT_TYPES

TERMINAL = TERMINAL_EVENT_TYPES

CONFLICTING_TERMINAL = "conflicting_terminal"
DUPLICATE_TERMINAL = "duplicate_terminal"
AFTER_TERMINAL = "after_terminal"


def flag_batch(
    batch: Iterable[MutableMapping[str, Any]],
    stored_terminals: Mapping[str, list[tuple[str, str, int]]],
) -> int:
    """Set ``rec["lifecycle_flag"]`` on each record of ``batch`` that breaks its frame's lifecycle.

    ``stored_terminals`` maps frame id to ``(event_id, event_type, occurred_at_us)``
    of terminal events already in the store. Returns how many records were flagged.
    """
    terminals: dict[str, list[tuple[str, str, int]]] = {k: list(v) for k, v in stored_terminals.items()}
    batch = list(batch)
    for rec in batch:
        if rec["event_type"] in TERMINAL:
            terminals.setdefault(rec["frame_id"], []).append(
                (rec["event_id"], rec["event_type"], rec["occurred_at"])
            )
    flagged = 0
    for rec in batch:
        seen = terminals.get(rec["frame_id"])
        if not seen:
            continue
        flag = None
        others = [t for t in seen if t[0] != rec["event_id"]]
        if rec["event_type"] in TERMINAL:
            if any(t[1] != rec["event_type"] for t in others):
                flag = CONFLICTING_TERMINAL
            elif others:
                flag = DUPLICATE_TERMINAL
        else:
            first_terminal = min(t[2] for t in seen)
            if rec["occurred_at"] > first_terminal:
                flag = AFTER_TERMINAL
        if flag:
            rec["lifecycle_flag"] = flag
            flagged += 1
    return flagged
