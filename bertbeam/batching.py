"""BatchByTokens: length-sorted batches cut by a padded-token budget."""

from __future__ import annotations

from collections.abc import Iterator

import apache_beam as beam
from apache_beam.transforms.window import GlobalWindows

from bertbeam import metrics
from bertbeam.config import BatchSpec
from bertbeam.records import Batch, Window


def padded_length(length: int, multiple: int) -> int:
    """``length`` rounded up to a multiple of ``multiple`` (tensor cores and SIMD like it)."""
    return -(-length // multiple) * multiple


def cut_batches(windows: list[Window], spec: BatchSpec) -> list[Batch]:
    """Sorts ``windows`` longest first and cuts them so that size x padded length <= budget.

    A window longer than the whole budget still gets a batch of its own.
    """
    ordered = sorted(windows, key=lambda w: w.length, reverse=True)
    batches: list[Batch] = []
    current: list[Window] = []
    current_len = 0
    for window in ordered:
        if not current:
            current, current_len = [window], padded_length(window.length, spec.pad_multiple)
            continue
        # Sorted descending, so the batch's padded length is fixed by its first window.
        if (len(current) + 1) * current_len > spec.token_budget or len(current) >= spec.max_batch_size:
            batches.append(Batch(current, current_len))
            current, current_len = [window], padded_length(window.length, spec.pad_multiple)
        else:
            current.append(window)
    if current:
        batches.append(Batch(current, current_len))
    return batches


class _BatchByTokensFn(beam.DoFn):
    def __init__(self, spec: BatchSpec):
        self._spec = spec
        self._buffer: list[Window] = []

    def start_bundle(self) -> None:
        self._buffer = []

    def process(self, window: Window) -> Iterator[Batch]:
        self._buffer.append(window)
        if len(self._buffer) >= self._spec.buffer_size:
            yield from self._flush()

    def finish_bundle(self) -> Iterator[object]:
        for batch in self._flush():
            yield GlobalWindows.windowed_value(batch)

    def _flush(self) -> Iterator[Batch]:
        windows, self._buffer = self._buffer, []
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

    def __init__(self, spec: BatchSpec | None = None):
        super().__init__()
        self._spec = spec or BatchSpec()

    def expand(self, windows: beam.PCollection) -> beam.PCollection:
        return windows | "BatchByTokens" >> beam.ParDo(_BatchByTokensFn(self._spec))
