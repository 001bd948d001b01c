"""BertModelHandler: any bertbeam task as a Beam ``ModelHandler``, for ``RunInference`` users.

The handler reuses the pipeline's pieces: the same tokenizer windows (long texts are chunked
with a stride), the same length-sorted, token-budgeted batches, the task's own ``forward``
and ``finish``. So a prediction holds exactly the columns ``bertbeam embed`` / ``bertbeam
label`` write for that task (without ``id``).
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from bertbeam.batching import cut_batches
from bertbeam.config import BatchSpec, ModelSpec, TokenizeSpec
from bertbeam.records import Document, WindowOutput
from bertbeam.tasks.base import Task

Example = str | tuple[str, str]
"""A text, or a (question, context) pair for pair tasks."""


class _LoadedHandlerModel:
    """What ``load_model`` returns: RunInference keeps it in ``shared.Shared``, which needs a
    weak-referenceable object, not a tuple."""

    def __init__(self, loaded: Any, encode: Any):
        self.loaded = loaded
        self.encode = encode
        pad = loaded.tokenizer.pad_token_id
        self.pad_id = 0 if pad is None else int(pad)


class BertModelHandler(ModelHandler[Example, PredictionResult, _LoadedHandlerModel]):
    """A ``ModelHandler`` running a bertbeam task: ``str`` (or ``(question, context)`` for
    pair tasks) -> ``PredictionResult(example, inference=<the task's result dict>)``.

    The model loads on the worker (``load_model``), once per process, on the device and with
    the dtype that ``model`` resolves there. Each RunInference batch is tokenized in one call,
    long texts become overlapping windows (``tokenize``), and the windows run in length-sorted
    batches within ``batch.token_budget`` padded tokens under ``torch.inference_mode``.

    Args:
        task: the task, e.g. ``EmbedTask()``, ``ClassifyTask(top_k=3)``, ``ZeroShotTask(...)``.
        model: which checkpoint and how to run it; defaults to the embedded all-MiniLM-L6-v2.
        tokenize: window length, chunking and stride, as in the pipelines.
        batch: how a RunInference batch is cut into model batches (token budget, padding).
        min_batch_size: fewest examples per RunInference batch.
        max_batch_size: most examples per RunInference batch.
        max_batch_duration_secs: longest a streaming batch waits to fill.

    Example::

        from apache_beam.ml.inference.base import RunInference

        embeddings = texts | RunInference(BertModelHandler(EmbedTask()))
        # each element: PredictionResult(example=text, inference={"embedding": ..., ...})
    """

    def __init__(
        self,
        task: Task,
        *,
        model: ModelSpec | None = None,
        tokenize: TokenizeSpec | None = None,
        batch: BatchSpec | None = None,
        min_batch_size: int = 1,
        max_batch_size: int = 64,
        max_batch_duration_secs: int | None = None,
    ):
        if not isinstance(task, Task):
            raise TypeError(f"task must be a bertbeam Task such as EmbedTask(), got "
                            f"{type(task).__name__}: {task!r}.")
        for name, value, kind in (("model", model, ModelSpec), ("tokenize", tokenize, TokenizeSpec),
                                  ("batch", batch, BatchSpec)):
            if value is not None and not isinstance(value, kind):
                raise TypeError(f"{name} must be a {kind.__name__} or None, got {type(value).__name__}.")
        for name, value in (("min_batch_size", min_batch_size), ("max_batch_size", max_batch_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")
        if min_batch_size > max_batch_size:
            raise ValueError(f"min_batch_size ({min_batch_size}) must not exceed "
                             f"max_batch_size ({max_batch_size}).")
        super().__init__(min_batch_size=min_batch_size, max_batch_size=max_batch_size,
                         max_batch_duration_secs=max_batch_duration_secs)
        self._task = task
        self._model = model or ModelSpec()
        self._tokenize = tokenize or TokenizeSpec()
        self._batch = batch or BatchSpec()

    def load_model(self) -> _LoadedHandlerModel:
        """Loads tokenizer and model on this worker, on the device resolved here."""
        from bertbeam.models import check_task_fit, load_model
        from bertbeam.tokenization import window_encoder

        # The handler runs its batches one after another: all of the threads go to each one.
        loaded = load_model(dataclasses.replace(self._model, cpu_streams=1), self._task.model_class)
        check_task_fit(loaded.config, self._task.model_class, self._model.uri)
        encode = window_encoder(self._model, self._tokenize, keep_text=self._task.needs_text,
                                offsets=self._task.needs_offsets, task=self._task)
        return _LoadedHandlerModel(loaded, encode)

    def run_inference(
        self,
        batch: Sequence[Example],
        model: _LoadedHandlerModel,
        inference_args: dict[str, Any] | None = None,
    ) -> Iterable[PredictionResult]:
        """Runs the task on a batch of examples; one PredictionResult per example, in order.

        Raises:
            TypeError: an example is not a ``str`` (or a pair of ``str`` for pair tasks).
            RuntimeError: the model produced NaN/infinite values for an example.
        """
        from bertbeam.inference import forward_batch, window_outputs

        docs = [self._document(i, example) for i, example in enumerate(batch)]
        per_doc: dict[str, list[WindowOutput]] = defaultdict(list)
        for cut in cut_batches(list(model.encode(docs)), self._batch):
            outputs = forward_batch(model.loaded, self._task, cut.windows, cut.padded_length,
                                    model.pad_id)
            for out in window_outputs(self._task, cut.windows, outputs):
                per_doc[out.window.doc_id].append(out)
        return [
            PredictionResult(example, self._finish(model.loaded, per_doc[doc.id], example),
                             model_id=self._model.uri)
            for doc, example in zip(docs, batch, strict=True)
        ]

    def _document(self, index: int, example: Any) -> Document:
        if self._task.pair_input:
            if (not isinstance(example, tuple | list) or len(example) != 2
                    or not all(isinstance(x, str) for x in example)):
                raise TypeError(f"Task {self._task.name!r} takes (question, context) pairs of "
                                f"strings, got {type(example).__name__}: {example!r:.200}.")
            return Document(str(index), example[0], example[1])
        if not isinstance(example, str):
            raise TypeError(f"Task {self._task.name!r} takes str examples, got "
                            f"{type(example).__name__}: {example!r:.200}.")
        return Document(str(index), example)

    def _finish(self, loaded: Any, outputs: list[WindowOutput], example: Any) -> dict[str, Any]:
        outputs.sort(key=lambda o: o.window.index)
        failed = next((o.error for o in outputs if o.error is not None), None)
        if failed is not None:
            raise RuntimeError(f"Task {self._task.name!r} failed on example {example!r:.200}: "
                               f"{failed[0]}: {failed[1]}")
        return self._task.finish(loaded, outputs)

    def validate_inference_args(self, inference_args: dict[str, Any] | None) -> None:
        if inference_args:
            raise ValueError(f"BertModelHandler takes no inference_args; task options belong in "
                             f"the task. Got {sorted(inference_args)!r}.")

    def update_model_path(self, model_path: str | None = None) -> None:
        """Points the handler at a new checkpoint URI (RunInference's model updates)."""
        if model_path:
            self._model = dataclasses.replace(self._model, uri=model_path)

    def get_num_bytes(self, batch: Sequence[Example]) -> int:
        """UTF-8 bytes of the batch's texts."""
        return sum(len(part.encode("utf-8")) for example in batch
                   for part in ((example,) if isinstance(example, str) else example))

    def get_metrics_namespace(self) -> str:
        return "bertbeam"
