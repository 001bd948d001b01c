"""ChunkDocuments and Tokenize: Documents to chunks, chunks to packed model windows."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import apache_beam as beam

from bertbeam.beam.buffering import BufferedDoFn
from bertbeam.beam.windowing import PerWindowBuffer, keeps_windows
from bertbeam.config import RunSpec
from bertbeam.core.deadletter import DEAD_LETTER, emit
from bertbeam.core.engine import Engine, EngineSpec, engine_spec
from bertbeam.core.records import Document, DocumentChunk, WindowChunk
from bertbeam.core.task import Task


class _ChunkDocumentsFn(BufferedDoFn):
    def flush(self, docs: list[Document]) -> Iterator[DocumentChunk]:
        yield DocumentChunk.of(docs)


class ChunkDocuments(beam.PTransform):
    """Document -> DocumentChunk of up to ``size`` documents (those of one bundle), the
    columnar element every later stage works on.

    On windowed or unbounded input a chunk holds documents of one window, and one waits at
    most ``max_wait`` seconds for more documents (see ``windowing.PerWindowBuffer``).

    Example::

        chunks = docs | ChunkDocuments(256)
    """

    def __init__(self, size: int = 256, *, max_wait: float = 0.1):
        super().__init__()
        self._size = size
        self._max_wait = max_wait

    def expand(self, docs: beam.PCollection[Document]) -> beam.PCollection[DocumentChunk]:
        fn = _ChunkDocumentsFn(self._size)
        if keeps_windows(docs):  # streaming: one chunk per window, max_wait
            fn = PerWindowBuffer(fn, self._max_wait)
        return docs | "ChunkDocuments" >> beam.ParDo(fn).with_output_types(DocumentChunk)


class _TokenizeFn(beam.DoFn):
    """Tokenizes a chunk of documents in one tokenizer call of the engine."""

    def __init__(self, spec: EngineSpec):
        self._spec = spec

    def setup(self) -> None:
        self._engine = Engine.acquire(self._spec)

    def process(self, docs: DocumentChunk) -> Iterator[Any]:
        windows, dead = self._engine.encode(docs)
        for letter in dead:
            yield emit(letter)
        if windows is not None:
            yield windows


class Tokenize(beam.PTransform):
    """DocumentChunk -> WindowChunk (``windows``) and DeadLetter (``dead_letter``).

    A document longer than the window becomes several overlapping windows
    (``long_docs='chunk'``) or its first window (``'truncate'``). The windows of a chunk are
    packed: token ids (and offsets, for the tasks that need them) end to end in flat arrays.

    Example::

        tokenized = chunks | Tokenize(EmbedTask(), run=RunSpec())
        windows, bad = tokenized["windows"], tokenized["dead_letter"]
    """

    def __init__(self, task: Task, *, run: RunSpec | None = None):
        super().__init__()
        self._spec = engine_spec(task, run)

    def expand(self, docs: beam.PCollection[DocumentChunk]) -> beam.pvalue.DoOutputsTuple:
        return docs | "Tokenize" >> beam.ParDo(_TokenizeFn(self._spec)).with_output_types(
            WindowChunk).with_outputs(DEAD_LETTER, main="windows")
