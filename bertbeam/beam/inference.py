"""RunModel: the model over every batch of a plan, on the worker's engine."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import Any

import apache_beam as beam
from apache_beam.transforms.window import GlobalWindows

from bertbeam.beam.windowing import keeps_windows
from bertbeam.config import RunSpec
from bertbeam.core.engine import Engine, EngineSpec, engine_spec
from bertbeam.core.records import BatchPlan, OutputChunk
from bertbeam.core.task import Task


class _RunModelFn(beam.DoFn):
    """Keeps one plan in flight: its batches run (on a GPU as queued kernels, on a CPU on the
    engine's ``streams`` threads) while the stages upstream read, tokenize and plan the next
    chunk; a plan's outputs leave once the plan behind it is submitted, document by
    document as the batches holding their last windows come back.

    ``hold=0`` (windowed or unbounded input) collects each plan before the next element:
    its outputs keep the plan's window and timestamp, and nothing waits for a next plan."""

    def __init__(self, spec: EngineSpec, hold: int = 1):
        self._spec = spec
        self._hold = hold

    def setup(self) -> None:
        self._engine = Engine.acquire(self._spec)

    def start_bundle(self) -> None:
        self._pending: deque[tuple[BatchPlan, Any]] = deque()

    def process(self, plan: BatchPlan) -> Iterator[OutputChunk]:
        self._pending.append((plan, self._engine.submit(plan)))
        while len(self._pending) > self._hold:
            yield from self._collect_oldest()

    def finish_bundle(self) -> Iterator[Any]:
        while self._pending:
            for out in self._collect_oldest():
                yield GlobalWindows.windowed_value(out)

    def _collect_oldest(self) -> Iterator[OutputChunk]:
        # In parts: documents leave as the batch holding their last window comes back.
        return self._engine.collect_parts(*self._pending.popleft())


class RunModel(beam.PTransform):
    """BatchPlan -> OutputChunk: runs the task's model on each batch of each plan.

    The engine (model and tokenizer) is loaded once per worker process and shared by its
    threads, on the device chosen there; the model runs under ``torch.inference_mode``. A
    window that fails gets its DeadLetter in ``OutputChunk.errors``, for Postprocess.

    Example::

        outputs = plans | RunModel(EmbedTask(), run=RunSpec())
    """

    def __init__(self, task: Task, *, run: RunSpec | None = None):
        super().__init__()
        self._spec = engine_spec(task, run)

    def expand(self, plans: beam.PCollection[BatchPlan]) -> beam.PCollection[OutputChunk]:
        fn = _RunModelFn(self._spec, hold=0 if keeps_windows(plans) else 1)
        return plans | "RunModel" >> beam.ParDo(fn).with_output_types(OutputChunk)
