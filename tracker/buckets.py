"""Latency histogram buckets shared by the rollups and the percentile readers.

The rollups keep counts per bucket (not cumulative; the last bucket is +Inf).
A percentile read from them is interpolated inside its bucket, so its error is
at most that bucket's width. ``sql/002`` repeats the bounds as
``tracker_bucket_bounds()``; a test keeps the two equal.
"""

from __future__ import annotations

import bisect

BUCKET_BOUNDS_MS: tuple[float, ...] = (
    5,
    10,
    20,
    30,
    50,
    75,
    100,
    150,
    200,
    300,
    500,
    750,
    1000,
    2000,
    5000,
    10000,
)
N_BUCKETS = len(BUCKET_BOUNDS_MS) + 1


def bucket_index(ms: float) -> int:
    """Index of the bucket holding ``ms`` (upper bounds inclusive, like Prometheus ``le``)."""
    return bisect.bisect_left(BUCKET_BOUNDS_MS, ms)


def percentile_from_buckets(buckets: list[int], q: float) -> float | None:
    """Estimate a percentile (ms) by linear interpolation inside its bucket.

    In the +Inf bucket the estimate is the last finite bound (a lower bound).
    """
    total = sum(buckets)
    if total <= 0:
        return None
    rank = q * total
    seen = 0
    for i, n in enumerate(buckets):
        if n and seen + n >= rank:
            if i >= len(BUCKET_BOUNDS_MS):
                return float(BUCKET_BOUNDS_MS[-1])
            lo = 0.0 if i == 0 else BUCKET_BOUNDS_MS[i - 1]
            hi = BUCKET_BOUNDS_MS[i]
            return lo + (hi - lo) * (rank - seen) / n
        seen += n
    return float(BUCKET_BOUNDS_MS[-1])
