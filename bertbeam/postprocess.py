"""MergeWindows and Postprocess: window outputs back to one result row per document."""

from __future__ import annotations

from collections.abc import Iterator

import apache_beam as beam

from bertbeam import metrics
from bertbeam.config import ModelSpec
from bertbeam.records import WindowOutput, dead_letter
from bertbeam.tasks.base import Task, TaskInputError

DEAD_LETTER = "dead_letter"


class MergeWindows(beam.PTransform):
    """WindowOutput -> list[WindowOutput] per document, in window order.

    Documents that fit in one window take a fast path with no shuffle; only windows of
    chunked documents are grouped by document id.
    """

    def expand(self, outputs: beam.PCollection) -> beam.PCollection:
        single, multi = outputs | "SplitByWindowCount" >> beam.Partition(
            lambda o, _: int(o.window.n_windows > 1), 2)
        grouped = (
            multi
            | "KeyByDocument" >> beam.Map(lambda o: (o.window.doc_id, o))
            | "GroupWindows" >> beam.GroupByKey()
            | "OrderWindows" >> beam.MapTuple(
                lambda _, outs: sorted(outs, key=lambda o: o.window.index))
        )
        alone = single | "AsList" >> beam.Map(lambda o: [o])
        return (alone, grouped) | "Documents" >> beam.Flatten()


class _PostprocessFn(beam.DoFn):
    def __init__(self, spec: ModelSpec, task: Task):
        self._spec = spec
        self._task = task

    def setup(self) -> None:
        from bertbeam.models import load_context

        self._ctx = load_context(self._spec)

    def process(self, outputs: list[WindowOutput]) -> Iterator[object]:
        first = outputs[0].window
        failed = next((o.error for o in outputs if o.error is not None), None)
        if failed is None and len(outputs) != first.n_windows:
            failed = ("model_error", f"{len(outputs)} of {first.n_windows} windows came back")
        if failed is None:
            try:
                row = self._task.finish(self._ctx, outputs)
            except TaskInputError as exc:
                failed = ("bad_task_input", str(exc)[:500])
            except Exception as exc:
                failed = ("postprocess_error", f"{type(exc).__name__}: {exc}"[:500])
            else:
                metrics.inc(metrics.WRITTEN)
                yield {"id": first.doc_id, **row}
                return
        metrics.inc(metrics.DEAD_LETTERED)
        stage = "postprocess" if failed[0] in ("postprocess_error", "bad_task_input") else "model"
        yield beam.pvalue.TaggedOutput(
            DEAD_LETTER, dead_letter(first.doc_id, stage, failed[0], failed[1], first.text))


class Postprocess(beam.PTransform):
    """list[WindowOutput] (one document) -> result row dict (main) and dead-letter rows
    (``dead_letter``) for documents whose model step failed."""

    def __init__(self, *, model: ModelSpec, task: Task):
        super().__init__()
        self._fn = _PostprocessFn(model, task)

    def expand(self, docs: beam.PCollection) -> beam.pvalue.DoOutputsTuple:
        return docs | "Postprocess" >> beam.ParDo(self._fn).with_outputs(DEAD_LETTER, main="results")
