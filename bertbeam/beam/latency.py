"""End-to-end latency of streamed rows: from a document's timestamp (the time its file was
found by a ``watch:``, a Pub/Sub message's publish time) to the moment its results row is
written.

The writer records each row's latency twice: in Beam's distribution ``bertbeam/latency_ms``
(what a Dataflow job page shows: count, mean, min, max) and, on a local run, in the tally
(:mod:`bertbeam.core.tally`) as counts per bucket of a fixed log-spaced histogram, from which
the launcher reads live quantiles (:func:`quantile`) of any stretch of time as the
difference of two readings.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Mapping

from apache_beam.metrics import Metrics

from bertbeam.core.metrics import NAMESPACE
from bertbeam.core.tally import local_tally

BUCKET_PREFIX = "latency_bucket_"
"""Tally names of the histogram: ``latency_bucket_<k>`` counts rows written within
``(EDGES[k-1], EDGES[k]]`` seconds of their timestamp (bucket 0: at most ``EDGES[0]``;
the last: over ``EDGES[-1]``)."""

EDGES: tuple[float, ...] = tuple(round(0.01 * 1.25 ** k, 6) for k in range(60))
"""Upper bounds of the buckets, seconds: 10 ms to about an hour and a half, 25% apart (a quantile read from
them is within 25% of the true value)."""

_distribution = None


def record(seconds: Iterable[float]) -> None:
    """Records the latencies of rows just written (seconds; a negative one, from a clock
    behind the timestamp's, counts as 0)."""
    global _distribution
    values = [max(0.0, s) for s in seconds]
    if not values:
        return
    if _distribution is None:
        _distribution = Metrics.distribution(NAMESPACE, "latency_ms")
    counts: dict[int, int] = {}
    for value in values:
        _distribution.update(int(value * 1000))
        k = bisect.bisect_left(EDGES, value)
        counts[k] = counts.get(k, 0) + 1
    tally = local_tally()
    if tally is not None:
        for k, n in counts.items():
            tally.add(f"{BUCKET_PREFIX}{k}", n)


def histogram(totals: Mapping[str, int]) -> list[int]:
    """Counts per bucket from tally totals (``len(EDGES) + 1`` of them)."""
    counts = [0] * (len(EDGES) + 1)
    for name, n in totals.items():
        if name.startswith(BUCKET_PREFIX):
            counts[int(name[len(BUCKET_PREFIX):])] += int(n)
    return counts


def quantile(counts: list[int], q: float) -> float | None:
    """The ``q`` quantile (0 to 1) of a histogram as the upper bound of the bucket it falls
    in (an over-estimate by at most 25%); ``None`` for an empty one, ``inf`` past the last
    edge."""
    total = sum(counts)
    if total <= 0:
        return None
    rank = max(1, math.ceil(q * total))
    seen = 0
    for k, n in enumerate(counts):
        seen += n
        if seen >= rank:
            return EDGES[k] if k < len(EDGES) else math.inf
    return math.inf
