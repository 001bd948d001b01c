"""Tokenize: Documents to model Windows, in large vectorized tokenizer calls."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import apache_beam as beam

from bertbeam.buffering import BufferedDoFn
from bertbeam.config import RunSpec
from bertbeam.deadletter import DEAD_LETTER, emit
from bertbeam.engine import Engine, EngineSpec, engine_spec
from bertbeam.records import Document, Window
from bertbeam.tasks.base import Task


class _TokenizeFn(BufferedDoFn):
    """Tokenizes documents ``chunk_size`` at a time, in one tokenizer call of the engine."""

    def __init__(self, spec: EngineSpec):
        super().__init__(spec.tokenize.chunk_size)
        self._spec = spec

    def setup(self) -> None:
        self._engine = Engine.acquire(self._spec)

    def flush(self, docs: list[Document]) -> Iterator[Any]:
        for out in self._engine.encode(docs):
            yield emit(out)


class Tokenize(beam.PTransform):
    """Document -> Window (``windows``) and DeadLetter (``dead_letter``).

    A document longer than the window becomes several overlapping windows
    (``long_docs='chunk'``) or its first window (``'truncate'``). Windows carry what the task
    needs later (offsets, text) and nothing more.

    Example::

        tokenized = docs | Tokenize(EmbedTask(), run=RunSpec())
        windows, bad = tokenized["windows"], tokenized["dead_letter"]
    """

    def __init__(self, task: Task, *, run: RunSpec | None = None):
        super().__init__()
        self._spec = engine_spec(task, run)

    def expand(self, docs: beam.PCollection[Document]) -> beam.pvalue.DoOutputsTuple:
        return docs | "Tokenize" >> beam.ParDo(_TokenizeFn(self._spec)).with_output_types(
            Window).with_outputs(DEAD_LETTER, main="windows")
