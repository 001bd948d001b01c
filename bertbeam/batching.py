"""BatchByTokens: length-sorted batches cut by a padded-token budget."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import apache_beam as beam
import numpy as np

from bertbeam import metrics
from bertbeam.buffering import BufferedDoFn
from bertbeam.config import BatchSpec
from bertbeam.engine import GPU_PAD_MULTIPLE, Engine, EngineSpec
from bertbeam.records import Batch, Window


def padded_length(length: int, multiple: int) -> int:
    """``length`` rounded up to a multiple of ``multiple`` (tensor cores and SIMD like it)."""
    return -(-length // multiple) * multiple


def cut_batches(windows: list[Window], spec: BatchSpec) -> list[Batch]:
    """Sorts ``windows`` longest first and cuts them into batches of at most
    ``spec.token_budget`` padded tokens and ``spec.max_batch_size`` windows.

    Where to cut is solved exactly (a dynamic programme over the sorted lengths) for the
    least padded tokens plus ``spec.batch_overhead_tokens`` per batch: cutting only by count
    would put a 40-token and a 10-token window in one batch whenever both fit. A window
    longer than the whole budget still gets a batch of its own.
    """
    ordered = sorted(windows, key=lambda w: w.length, reverse=True)
    n = len(ordered)
    if n == 0:
        return []
    # Unresolved ``auto`` (a call outside a worker) keeps the GPU-safe rounding.
    multiple = GPU_PAD_MULTIPLE if spec.pad_multiple == "auto" else spec.pad_multiple
    padded = np.array([padded_length(w.length, multiple) for w in ordered], dtype=np.int64)
    # best[i]: least cost of batching ordered[i:]; cut[i]: end of the first batch in that plan.
    best = np.zeros(n + 1, dtype=np.int64)
    cut = np.zeros(n, dtype=np.int64)
    for i in range(n - 1, -1, -1):
        # Sorted descending, so a batch starting at i is padded to padded[i].
        size = max(1, min(spec.max_batch_size, spec.token_budget // int(padded[i]), n - i))
        sizes = np.arange(1, size + 1)
        costs = sizes * padded[i] + spec.batch_overhead_tokens + best[i + 1:i + size + 1]
        k = int(np.argmin(costs))
        best[i], cut[i] = costs[k], i + k + 1
    batches, i = [], 0
    while i < n:
        batches.append(Batch(ordered[i:cut[i]], int(padded[i])))
        i = int(cut[i])
    return batches


def device_batch_spec(spec: BatchSpec, engine: Engine | None) -> BatchSpec:
    """``spec`` with ``pad_multiple`` resolved for the engine's device (kept without one)."""
    if engine is None:
        return spec
    return replace(spec, pad_multiple=engine.pad_multiple(spec.pad_multiple))


class _BatchByTokensFn(BufferedDoFn):
    """Holds ``spec.buffer_size`` windows, then cuts them into length-sorted batches."""

    def __init__(self, spec: BatchSpec, engine: EngineSpec | None):
        super().__init__(spec.buffer_size)
        self._spec = spec
        self._engine_spec = engine

    def setup(self) -> None:
        # The padding depends on the device, which the engine decides on this worker.
        self._engine = Engine.acquire(self._engine_spec) if self._engine_spec else None

    def flush(self, windows: list[Window]) -> Iterator[Batch]:
        for batch in cut_batches(windows, device_batch_spec(self._spec, self._engine)):
            metrics.inc(metrics.BATCHES)
            metrics.inc(metrics.REAL_TOKENS, batch.real_tokens)
            metrics.inc(metrics.PADDED_TOKENS, batch.padded_tokens)
            yield batch


class BatchByTokens(beam.PTransform):
    """Window -> Batch: holds up to ``buffer_size`` windows, sorts them by length and cuts
    batches whose padded size (windows x longest, rounded up to ``pad_multiple``) stays
    within ``token_budget``.

    With ``engine`` (what ``InferDocuments`` passes), ``pad_multiple='auto'`` follows the
    device the engine runs on; without, ``auto`` pads to multiples of 8.

    Example::

        batches = windows | BatchByTokens(BatchSpec(token_budget=16384))
    """

    def __init__(self, spec: BatchSpec | None = None, *, engine: EngineSpec | None = None):
        super().__init__()
        self._spec = spec or BatchSpec()
        self._engine = engine

    def expand(self, windows: beam.PCollection[Window]) -> beam.PCollection[Batch]:
        return windows | "BatchByTokens" >> beam.ParDo(
            _BatchByTokensFn(self._spec, self._engine)).with_output_types(Batch)
