"""BertModelHandler: any bertbeam task as a Beam ``ModelHandler``, for ``RunInference`` users.

A thin adapter over the worker's engine (``bertbeam.core.engine``): the same validation, windows
(long texts are chunked with a stride), length-sorted token-budgeted batches, model outputs
and post-processing as ``bertbeam embed`` / ``bertbeam label``, so a prediction holds exactly
the columns those commands write for the task (without ``id``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any

from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from bertbeam.beam.validation import check_document
from bertbeam.config import RunSpec
from bertbeam.core.deadletter import DeadLetter, DeadLetterError, Reason
from bertbeam.core.engine import Engine, engine_spec
from bertbeam.core.models import check_task_fit
from bertbeam.core.records import Document, DocumentChunk
from bertbeam.core.task import Task

Example = str | tuple[str, str]
"""A text, or a (question, context) pair for pair tasks."""


def raise_dead_letter(result: PredictionResult) -> PredictionResult:
    """RunInference post-processing: raises :class:`DeadLetterError` for an example that
    failed, so ``with_exception_handling()`` reports it on its own (``failed_postprocessing``)."""
    if isinstance(result.inference, DeadLetter):
        raise DeadLetterError(result.inference)
    return result


class BertModelHandler(ModelHandler[Example, PredictionResult, Engine]):
    """A ``ModelHandler`` running a bertbeam task: ``str`` (or ``(question, context)`` for
    pair tasks) -> ``PredictionResult(example, inference=<the task's result dict>)``.

    The engine loads on the worker (``load_model``), once per process, on the device and
    with the dtype resolved there. Each RunInference batch is tokenized in one call, long
    texts become overlapping windows, and the windows run in length-sorted batches within
    ``run.batch.token_budget`` padded tokens under ``torch.inference_mode``.

    Failures are per example, never per batch: an example that is not a string, is empty,
    or fails in the tokenizer, the model (a failing batch is bisected) or post-processing
    raises :class:`~bertbeam.core.deadletter.DeadLetterError` in RunInference's post-processing
    step, so ``RunInference(handler).with_exception_handling()`` puts exactly that example in
    ``failed_postprocessing[0]`` with its dead-letter reason. ``inline_errors=True`` returns
    the :class:`~bertbeam.core.deadletter.DeadLetter` as the example's ``inference`` instead (for
    ``KeyedModelHandler``, which takes no handler with post-processing of its own).

    Args:
        task: the task, e.g. ``EmbedTask()``, ``ClassifyTask(top_k=3)``, ``ZeroShotTask(...)``.
        run: model, tokenize and batch options, as for ``InferDocuments``.
        min_batch_size, max_batch_size, max_batch_duration_secs: RunInference's batching.
        large_model, model_copies: RunInference's model sharing across processes.
        inline_errors: return dead letters as inferences instead of raising them.

    Example::

        from apache_beam.ml.inference.base import RunInference

        embeddings = texts | RunInference(BertModelHandler(EmbedTask()))
        # each element: PredictionResult(example=text, inference={"embedding": ..., ...})
    """

    def __init__(
        self,
        task: Task,
        *,
        run: RunSpec | None = None,
        min_batch_size: int = 1,
        max_batch_size: int = 64,
        max_batch_duration_secs: int | None = None,
        large_model: bool = False,
        model_copies: int | None = None,
        inline_errors: bool = False,
    ):
        spec = engine_spec(task, run)
        for name, value in (("min_batch_size", min_batch_size), ("max_batch_size", max_batch_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")
        if min_batch_size > max_batch_size:
            raise ValueError(f"min_batch_size ({min_batch_size}) must not exceed "
                             f"max_batch_size ({max_batch_size}).")
        super().__init__(min_batch_size=min_batch_size, max_batch_size=max_batch_size,
                         max_batch_duration_secs=max_batch_duration_secs,
                         large_model=large_model, model_copies=model_copies)
        # The handler runs its batches one after another: all of the threads go to each one.
        self._spec = dataclasses.replace(
            spec, model=dataclasses.replace(spec.model, cpu_streams=1))
        self._batch = (run or RunSpec()).batch
        self._inline_errors = inline_errors

    @property
    def task(self) -> Task:
        return self._spec.task

    def load_model(self) -> Engine:
        """The worker's engine: tokenizer and model, on the device resolved here."""
        engine = Engine.acquire(self._spec)
        check_task_fit(engine.config, self.task.model_class, engine.uri)
        return engine

    def run_inference(
        self,
        batch: Sequence[Example],
        model: Engine,
        inference_args: dict[str, Any] | None = None,
    ) -> Iterable[PredictionResult]:
        """One PredictionResult per example, in order; a failed example's inference is its
        DeadLetter (raised by the handler's post-processing unless ``inline_errors``)."""
        engine = model
        checked = [self._document(i, example) for i, example in enumerate(batch)]
        docs = [d for d in checked if isinstance(d, Document)]
        rows: dict[str, Any] = {d.id: d for d in checked if isinstance(d, DeadLetter)}
        if docs:
            results = engine.infer(DocumentChunk.of(docs), self._batch)
            rows.update((dead.id, dead) for dead in results.dead)
            rows.update((row.pop("id"), row) for row in results.rows())
        out = []
        for i, example in enumerate(batch):
            row = rows.get(str(i)) or DeadLetter.of(str(i), Reason.MODEL_ERROR,
                                                   "no result came back", value=example)
            if isinstance(row, DeadLetter):
                row = row._replace(id=None)
            out.append(PredictionResult(example, row, model_id=self._spec.model.uri))
        return out

    def _document(self, index: int, example: Any) -> Document | DeadLetter:
        pair = self.task.pair_input
        if pair:
            if (not isinstance(example, tuple | list) or len(example) != 2):
                return DeadLetter.of(str(index), Reason.NOT_A_STRING, (
                    f"task {self.task.name!r} takes (question, context) pairs of strings, got "
                    f"{type(example).__name__}"), value=example)
            return check_document(str(index), example[0], example[1], with_pair=True)
        return check_document(str(index), example)

    def get_postprocess_fns(self) -> Iterable[Any]:
        return [] if self._inline_errors else [raise_dead_letter]

    def validate_inference_args(self, inference_args: dict[str, Any] | None) -> None:
        if inference_args:
            raise ValueError(f"BertModelHandler takes no inference_args; task options belong in "
                             f"the task. Got {sorted(inference_args)!r}.")

    def update_model_path(self, model_path: str | None = None) -> None:
        """Points the handler at a new checkpoint URI (RunInference's model updates)."""
        if model_path:
            self._spec = dataclasses.replace(
                self._spec, model=dataclasses.replace(self._spec.model, uri=model_path))

    def get_num_bytes(self, batch: Sequence[Example]) -> int:
        """UTF-8 bytes of the batch's texts (non-text examples count as their repr)."""
        def size(part: Any) -> int:
            return len((part if isinstance(part, str) else repr(part)).encode("utf-8", "replace"))

        return sum(size(part) for example in batch
                   for part in (example if isinstance(example, tuple | list) else (example,)))

    def get_metrics_namespace(self) -> str:
        return "bertbeam"
