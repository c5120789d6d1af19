"""``FrameTrackingQueries``: the read side, for the CLI, the HTTP API and scripts.

Every statement is parameterised and built once (``statements``). Each query
is served by an index or a rollup (``tests/integration/test_queries.py`` checks
the plans): the journey by ``frame_id`` indexes, windows by ``frame_timestamp``
partitions and indexes, statistics by the hourly rollups. The pool runs
read-only (``default_transaction_read_only``) and, where the migrations could
create it, as the ``tracker_read`` role.

The package: ``checks`` (parameter validation), ``statements`` (the SQL),
``shaping`` and ``journey`` (rows into JSON shapes), ``client`` (the class and
``connect()``). Import from ``tracker.queries``.
"""

from tracker.queries.checks import (
    MAX_HOURS,
    MAX_LIMIT,
    check_camera_id,
    check_frame_id,
    check_hours,
    check_limit,
    check_threshold,
)
from tracker.queries.client import FrameTrackingQueries
from tracker.queries.shaping import TraceLink

__all__ = [
    "MAX_HOURS",
    "MAX_LIMIT",
    "FrameTrackingQueries",
    "TraceLink",
    "check_camera_id",
    "check_frame_id",
    "check_hours",
    "check_limit",
    "check_threshold",
]
