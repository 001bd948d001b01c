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
            offsets=task.needs_offsets)
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
