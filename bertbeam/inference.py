"""RunModel: one forward pass per batch on the worker's engine, compact per-window outputs."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import Any

import apache_beam as beam
from apache_beam.transforms.window import GlobalWindows

from bertbeam.config import RunSpec
from bertbeam.engine import Engine, EngineSpec, engine_spec
from bertbeam.memory import HeapTrimmer
from bertbeam.records import Batch, WindowOutput
from bertbeam.tasks.base import Task


class _RunModelFn(beam.DoFn):
    """Keeps batches in flight: on a GPU one, whose kernels run asynchronously while the
    stages upstream tokenize and batch the next; on a CPU ``streams`` of them, each on a
    thread of the engine's pool. Outputs leave in batch order, once the batch behind them is
    launched."""

    def __init__(self, spec: EngineSpec):
        self._spec = spec

    def setup(self) -> None:
        self._engine = Engine.acquire(self._spec)
        self._in_flight = max(1, self._engine.streams)
        self._trimmer = HeapTrimmer() if self._engine.device.type == "cpu" else None

    def start_bundle(self) -> None:
        self._pending: deque[Any] = deque()

    def process(self, batch: Batch) -> Iterator[WindowOutput]:
        self._pending.append(self._engine.submit(batch))
        while len(self._pending) > self._in_flight:
            yield from self._fetch_oldest()

    def finish_bundle(self) -> Iterator[Any]:
        while self._pending:
            for out in self._fetch_oldest():
                yield GlobalWindows.windowed_value(out)

    def _fetch_oldest(self) -> list[WindowOutput]:
        outputs = self._engine.fetch(self._pending.popleft())
        if self._trimmer is not None:
            self._trimmer.maybe_trim()
        return outputs


class RunModel(beam.PTransform):
    """Batch -> WindowOutput: runs the task's model on each batch.

    The engine (model and tokenizer) is loaded once per worker process and shared by its
    threads, on the device chosen there; the model runs under ``torch.inference_mode``. A
    window that fails carries its DeadLetter (``WindowOutput.error``) to Postprocess.

    Example::

        outputs = batches | RunModel(EmbedTask(), run=RunSpec())
    """

    def __init__(self, task: Task, *, run: RunSpec | None = None):
        super().__init__()
        self._fn = _RunModelFn(engine_spec(task, run))

    def expand(self, batches: beam.PCollection[Batch]) -> beam.PCollection[WindowOutput]:
        return batches | "RunModel" >> beam.ParDo(self._fn).with_output_types(WindowOutput)
