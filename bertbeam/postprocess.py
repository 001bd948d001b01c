"""MergeWindows and Postprocess: window outputs back to one result row per document."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import apache_beam as beam
from apache_beam.transforms.window import GlobalWindows
from apache_beam.utils.windowed_value import WindowedValue

from bertbeam import metrics
from bertbeam.config import RunSpec
from bertbeam.deadletter import DEAD_LETTER, DeadLetter
from bertbeam.engine import Engine, EngineSpec, engine_spec
from bertbeam.records import WindowOutput, beam_row_type, to_beam_row
from bertbeam.tasks.base import Task


def _in_window_order(outputs: list[WindowOutput]) -> list[WindowOutput]:
    return sorted(outputs, key=lambda o: o.window.index)


_LOG = logging.getLogger(__name__)


class _MergeWindowsFn(beam.DoFn):
    """Holds the windows of chunked documents until all of a document's windows are in."""

    def start_bundle(self) -> None:
        self._open: dict[str, list[WindowOutput]] = {}

    def process(self, output: WindowOutput) -> Iterator[list[WindowOutput]]:
        window = output.window
        if window.n_windows == 1:
            yield [output]
            return
        got = self._open.setdefault(window.doc_id, [])
        got.append(output)
        if len(got) == window.n_windows:
            del self._open[window.doc_id]
            yield _in_window_order(got)

    def finish_bundle(self) -> Iterator[WindowedValue]:
        # Not reached from Tokenize | BatchByTokens | RunModel, which emit every window of
        # a document in the bundle that read it. A document cut short anyway still comes
        # out (Postprocess dead-letters it: "k of n windows came back"), never vanishes.
        open_docs, self._open = self._open, {}
        for outputs in open_docs.values():
            yield GlobalWindows.windowed_value(_in_window_order(outputs))


class MergeWindows(beam.PTransform):
    """WindowOutput -> list[WindowOutput] per document.

    Without a shuffle: all windows of a document come from one input element, so the fused
    stage that tokenized it also runs them through the model in the same bundle. The windows
    of chunked documents wait here until the last one arrives; memory holds only documents
    whose windows straddle the batching buffer, and the local runner never has to
    materialize the corpus's outputs between stages.
    """

    def expand(self, outputs: beam.PCollection[WindowOutput]) -> beam.PCollection:
        return outputs | "MergeWindows" >> beam.ParDo(_MergeWindowsFn())


class _PostprocessFn(beam.DoFn):
    def __init__(self, spec: EngineSpec, schema: Any):
        self._spec = spec
        self._schema = schema

    def setup(self) -> None:
        self._engine = Engine.acquire(self._spec)

    def process(self, outputs: list[WindowOutput]) -> Iterator[Any]:
        row = self._engine.postprocess(outputs)
        if isinstance(row, DeadLetter):
            yield row.tagged()
        else:
            metrics.inc(metrics.WRITTEN)
            yield to_beam_row(row, self._schema)


class Postprocess(beam.PTransform):
    """list[WindowOutput] (one document) -> result ``beam.Row`` (``results``, with the
    task's Beam schema) and DeadLetter (``dead_letter``) for documents that failed.

    ``schema`` is the task's Arrow schema of result rows (``task.schema(config)``).

    Example::

        out = merged | Postprocess(EmbedTask(), run=RunSpec(), schema=schema)
    """

    def __init__(self, task: Task, *, schema: Any, run: RunSpec | None = None):
        super().__init__()
        self._fn = _PostprocessFn(engine_spec(task, run), schema)
        try:
            self._row_type = beam_row_type(schema)
        except TypeError as exc:
            # A carried column of a type Beam schemas lack (a date, a map): rows still flow,
            # as beam.Rows without a declared schema.
            _LOG.info("Results are not schema-aware: %s", exc)
            self._row_type = None

    def expand(self, docs: beam.PCollection) -> beam.pvalue.DoOutputsTuple:
        pardo = beam.ParDo(self._fn)
        if self._row_type is not None:
            pardo = pardo.with_output_types(self._row_type)
        return docs | "Postprocess" >> pardo.with_outputs(DEAD_LETTER, main="results")
