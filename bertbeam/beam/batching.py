"""BatchByTokens: length-sorted batches cut by a padded-token budget."""

from __future__ import annotations

from collections.abc import Iterator

import apache_beam as beam

from bertbeam.beam.buffering import BufferedDoFn
from bertbeam.beam.windowing import PerWindowBuffer, keeps_windows
from bertbeam.config import BatchSpec
from bertbeam.core import metrics
from bertbeam.core.engine import Engine, EngineSpec
from bertbeam.core.records import BatchPlan, WindowChunk


class _BatchByTokensFn(BufferedDoFn):
    """Holds chunks of windows until ``spec.buffer_size`` windows are in, then plans
    length-sorted batches over all of them."""

    def __init__(self, spec: BatchSpec, engine: EngineSpec):
        super().__init__(spec.buffer_size)
        self._spec = spec
        self._engine_spec = engine

    def setup(self) -> None:
        # The padding depends on the device, which the engine decides on this worker.
        self._engine = Engine.acquire(self._engine_spec)

    def weight(self, chunk: WindowChunk) -> int:
        return len(chunk)

    def flush(self, chunks: list[WindowChunk]) -> Iterator[BatchPlan]:
        plan = self._engine.plan(WindowChunk.concat(chunks), self._spec)
        lengths = plan.windows.lengths
        metrics.inc(metrics.BATCHES, len(plan.batches))
        metrics.inc(metrics.REAL_TOKENS, int(lengths.sum()))
        metrics.inc(metrics.PADDED_TOKENS, sum(len(rows) * padded for rows, padded
                                                in zip(plan.batches, plan.padded, strict=True)))
        yield plan


class BatchByTokens(beam.PTransform):
    """WindowChunk -> BatchPlan: holds chunks until ``buffer_size`` windows are in, sorts the
    windows by length and cuts batches whose padded size (windows x longest, rounded up to
    ``pad_multiple``) stays within ``token_budget`` (on a CPU, within each stream's share of
    it: :meth:`Engine.batch_budget`).

    ``pad_multiple='auto'`` follows the device the engine runs on (8 on a GPU, 1 on a CPU).
    A document's windows stay in one plan, so its outputs meet again in Postprocess.

    Example::

        plans = windows | BatchByTokens(BatchSpec(token_budget=16384), engine=spec)
    """

    def __init__(self, spec: BatchSpec | None = None, *, engine: EngineSpec):
        super().__init__()
        self._spec = spec or BatchSpec()
        self._engine = engine

    def expand(self, windows: beam.PCollection[WindowChunk]) -> beam.PCollection[BatchPlan]:
        fn = _BatchByTokensFn(self._spec, self._engine)
        if keeps_windows(windows):  # streaming: one buffer per window, max_wait
            fn = PerWindowBuffer(fn, self._spec.max_wait)
        return windows | "BatchByTokens" >> beam.ParDo(fn).with_output_types(BatchPlan)
