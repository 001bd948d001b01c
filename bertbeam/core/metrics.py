"""Beam counters of the ``bertbeam`` namespace: their names, incrementing, reading them back."""

from __future__ import annotations

from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter

from bertbeam.core.tally import local_tally

NAMESPACE = "bertbeam"

READ = "documents_read"
WRITTEN = "documents_written"
DEAD_LETTERED = "documents_dead_lettered"
WINDOWS = "windows"
CHUNKED_DOCS = "documents_chunked"
TRUNCATED_DOCS = "documents_truncated"
BATCHES = "batches"
REAL_TOKENS = "real_tokens"
PADDED_TOKENS = "padded_tokens"
OOM_SPLITS = "oom_batch_splits"
CARRIED_FORWARD = "documents_carried_forward"

COUNTERS = (
    READ, WRITTEN, DEAD_LETTERED, WINDOWS, CHUNKED_DOCS, TRUNCATED_DOCS, BATCHES, REAL_TOKENS,
    PADDED_TOKENS, OOM_SPLITS, CARRIED_FORWARD,
)

_counters: dict[str, object] = {}


def inc(name: str, n: int = 1) -> None:
    """Adds ``n`` to the bertbeam counter ``name`` (a no-op for zero)."""
    if n:
        counter = _counters.get(name)
        if counter is None:
            counter = _counters[name] = Metrics.counter(NAMESPACE, name)
        counter.inc(int(n))
        tally = local_tally()
        if tally is not None:
            tally.add(name, int(n))


def query_counters(result: object) -> dict[str, int]:
    """Committed values of every bertbeam counter from a finished ``PipelineResult``."""
    values = dict.fromkeys(COUNTERS, 0)
    for c in result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["counters"]:
        value = c.committed if c.committed is not None else c.attempted
        values[c.key.metric.name] = values.get(c.key.metric.name, 0) + int(value or 0)
    return values
