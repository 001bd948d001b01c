"""Postprocess: model outputs back to result columns, one Arrow record batch per chunk."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import apache_beam as beam
import pyarrow as pa

from bertbeam.config import RunSpec
from bertbeam.core import metrics
from bertbeam.core.deadletter import DEAD_LETTER
from bertbeam.core.engine import Engine, EngineSpec, engine_spec
from bertbeam.core.records import OutputChunk
from bertbeam.core.task import Task


class _PostprocessFn(beam.DoFn):
    def __init__(self, spec: EngineSpec, schema: pa.Schema):
        self._spec = spec
        self._schema = schema

    def setup(self) -> None:
        self._engine = Engine.acquire(self._spec)

    def process(self, out: OutputChunk) -> Iterator[Any]:
        results = self._engine.postprocess(out)
        for letter in results.dead:
            yield letter.tagged()
        if len(results):
            metrics.inc(metrics.WRITTEN, len(results))
            yield results.record_batch(self._schema)


class Postprocess(beam.PTransform):
    """OutputChunk -> result ``pa.RecordBatch`` (``results``: the columns of ``schema``, one
    row per document) and DeadLetter (``dead_letter``) for the documents that failed.

    ``schema`` is the Arrow schema of result rows (``task.schema(config)``, with any carried
    columns after the task's). A long document's windows are merged here: they all ran in
    the plan that holds the chunk that tokenized it.

    Example::

        out = outputs | Postprocess(EmbedTask(), run=RunSpec(), schema=schema)
    """

    def __init__(self, task: Task, *, schema: pa.Schema, run: RunSpec | None = None):
        super().__init__()
        self._fn = _PostprocessFn(engine_spec(task, run), schema)

    def expand(self, outputs: beam.PCollection[OutputChunk]) -> beam.pvalue.DoOutputsTuple:
        return outputs | "Postprocess" >> beam.ParDo(self._fn).with_output_types(
            pa.RecordBatch).with_outputs(DEAD_LETTER, main="results")
