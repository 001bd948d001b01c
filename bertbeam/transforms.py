"""Composite transforms: the whole Document -> result flow for a task."""

from __future__ import annotations

import apache_beam as beam

from bertbeam.batching import BatchByTokens
from bertbeam.config import RunSpec
from bertbeam.inference import RunModel
from bertbeam.postprocess import MergeWindows, Postprocess
from bertbeam.tasks.base import Task
from bertbeam.tasks.embed import EmbedTask
from bertbeam.tokenization import Tokenize

DEAD_LETTER = "dead_letter"


class InferDocuments(beam.PTransform):
    """Document -> ``{"results": row dicts, "dead_letter": dead-letter rows}`` for any task.

    Runs Tokenize | BatchByTokens | RunModel | MergeWindows | Postprocess with the task's
    model head and post-processing.

    Example::

        out = docs | InferDocuments(EmbedTask(), run=RunSpec())
        out["results"] | WriteResults("out/", schema=...)
    """

    def __init__(self, task: Task, *, run: RunSpec | None = None):
        super().__init__()
        self._task = task
        self._run = run or RunSpec()

    def expand(self, docs: beam.PCollection) -> dict[str, beam.PCollection]:
        task, run = self._task, self._run
        tokenized = docs | "Tokenize" >> Tokenize(
            model=run.model, tokenize=run.tokenize, keep_text=task.needs_text,
            offsets=task.needs_offsets, task=task)
        finished = (
            tokenized["windows"]
            | "BatchByTokens" >> BatchByTokens(run.batch, device=run.model.device)
            | "RunModel" >> RunModel(model=run.model, task=task)
            | "MergeWindows" >> MergeWindows()
            | "Postprocess" >> Postprocess(model=run.model, task=task)
        )
        dead = (tokenized[DEAD_LETTER], finished[DEAD_LETTER]) | "DeadLetter" >> beam.Flatten()
        return {"results": finished["results"], DEAD_LETTER: dead}


class EmbedDocuments(InferDocuments):
    """Document -> embedding rows (``id, embedding, n_tokens, n_chunks, truncated, model``).

    Example::

        out = docs | EmbedDocuments(run=RunSpec(model=ModelSpec(uri="gs://models/minilm")))
    """

    def __init__(self, task: EmbedTask | None = None, *, run: RunSpec | None = None):
        super().__init__(task or EmbedTask(), run=run)


class LabelDocuments(InferDocuments):
    """Document -> label rows for one labeling task, by name or as a Task object.

    ``task`` is ``"classify"``, ``"ner"``, ``"qa"``, ``"fill-mask"`` or ``"zero-shot"`` (with
    the task's keyword options) or a Task instance. Output columns: see each task's schema.

    Example::

        out = docs | LabelDocuments("zero-shot", labels=("sports", "politics"))
        out = docs | LabelDocuments("classify", top_k=3, run=RunSpec(model=ModelSpec(uri=d)))
    """

    def __init__(self, task: str | Task, *, run: RunSpec | None = None, **options: object):
        from bertbeam.tasks import make_task

        if isinstance(task, str):
            task = make_task(task, **options)
        elif options:
            raise TypeError(f"Options {sorted(options)} only apply when the task is given by name.")
        super().__init__(task, run=run)
