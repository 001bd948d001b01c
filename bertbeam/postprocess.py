"""MergeWindows and Postprocess: window outputs back to one result row per document."""

from __future__ import annotations

from collections.abc import Iterator

import apache_beam as beam
from apache_beam.transforms.window import GlobalWindows
from apache_beam.utils.windowed_value import WindowedValue

from bertbeam import metrics
from bertbeam.config import ModelSpec
from bertbeam.records import WindowOutput, dead_letter
from bertbeam.tasks.base import Task, TaskInputError

DEAD_LETTER = "dead_letter"


def _in_window_order(outputs: list[WindowOutput]) -> list[WindowOutput]:
    return sorted(outputs, key=lambda o: o.window.index)


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
    """WindowOutput -> list[WindowOutput] per document, in window order.

    Without a shuffle: all windows of a document come from one input element, so the fused
    stage that tokenized it also runs them through the model in the same bundle. The windows
    of chunked documents wait here until the last one arrives; memory holds only documents
    whose windows straddle the batching buffer, and the local runner never has to
    materialize the corpus's outputs between stages.
    """

    def expand(self, outputs: beam.PCollection) -> beam.PCollection:
        return outputs | "MergeWindows" >> beam.ParDo(_MergeWindowsFn())


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
