"""BatchByTokens: length-sorted batches cut by a padded-token budget."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import apache_beam as beam
import numpy as np

from bertbeam import metrics
from bertbeam.buffering import BufferedDoFn
from bertbeam.config import BatchSpec
from bertbeam.records import Batch, Window

GPU_PAD_MULTIPLE = 8


def resolve_pad_multiple(pad_multiple: int | str, device: str) -> int:
    """The rounding for ``BatchSpec.pad_multiple`` on this worker: ``auto`` is 8 where the
    model will run on a GPU and 1 on CPU; an explicit number is kept."""
    if pad_multiple != "auto":
        return int(pad_multiple)
    if device == "cpu":
        return 1
    import torch

    return GPU_PAD_MULTIPLE if torch.cuda.is_available() else 1


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


class _BatchByTokensFn(BufferedDoFn):
    """Holds ``spec.buffer_size`` windows, then cuts them into length-sorted batches."""

    def __init__(self, spec: BatchSpec, device: str):
        super().__init__(spec.buffer_size)
        self._spec = spec
        self._device = device

    def setup(self) -> None:
        # Decided here, on the worker, where it is known whether the model gets a GPU.
        multiple = resolve_pad_multiple(self._spec.pad_multiple, self._device)
        self._spec = replace(self._spec, pad_multiple=multiple)

    def flush(self, windows: list[Window]) -> Iterator[Batch]:
        for batch in cut_batches(windows, self._spec):
            metrics.inc(metrics.BATCHES)
            metrics.inc(metrics.REAL_TOKENS, batch.real_tokens)
            metrics.inc(metrics.PADDED_TOKENS, batch.padded_tokens)
            yield batch


class BatchByTokens(beam.PTransform):
    """Window -> Batch: holds up to ``buffer_size`` windows, sorts them by length and cuts
    batches whose padded size (windows x longest, rounded up to ``pad_multiple``) stays
    within ``token_budget``.

    Example::

        batches = windows | BatchByTokens(BatchSpec(token_budget=16384))
    """

    def __init__(self, spec: BatchSpec | None = None, *, device: str = "auto"):
        super().__init__()
        self._spec = spec or BatchSpec()
        self._device = device

    def expand(self, windows: beam.PCollection) -> beam.PCollection:
        return windows | "BatchByTokens" >> beam.ParDo(_BatchByTokensFn(self._spec, self._device))
