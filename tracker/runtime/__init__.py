"""The worker runtime: what every long-running consumer-group worker is built on.

- :mod:`tracker.runtime.worker`: :class:`KafkaWorker` (lifecycle, the loop,
  outages, rebalances, lag, signals) and :class:`WorkerStats`.
- :mod:`tracker.runtime.write_behind`: :class:`WriteBehind`, one batch written
  while the next is fetched; the workers and the rebuild share it.
"""

from tracker.runtime.worker import Batch, KafkaWorker, WorkerStats, on_stop_signals
from tracker.runtime.write_behind import WriteBehind

__all__ = ["Batch", "KafkaWorker", "WorkerStats", "WriteBehind", "on_stop_signals"]
