"""Composite transforms: the whole flow for a task, over chunks (InferChunks) or documents
(InferDocuments)."""

from __future__ import annotations

import logging
from typing import Any

import apache_beam as beam
import pyarrow as pa

from bertbeam.beam.batching import BatchByTokens
from bertbeam.beam.inference import RunModel
from bertbeam.beam.postprocess import Postprocess
from bertbeam.beam.tokenization import ChunkDocuments, Tokenize
from bertbeam.beam.validation import ValidateDocuments
from bertbeam.beam.windowing import EVENT_TIME_FIELD, StampEventTime, keeps_windows, restamp_rows
from bertbeam.config import RunSpec
from bertbeam.core.deadletter import DEAD_LETTER, DeadLetter
from bertbeam.core.engine import engine_spec
from bertbeam.core.models import load_config
from bertbeam.core.records import Document, DocumentChunk, beam_row_type, table_rows, to_beam_row
from bertbeam.core.task import Task
from bertbeam.tasks import make_task
from bertbeam.tasks.embed import EmbedTask

_LOG = logging.getLogger(__name__)


class InferChunks(beam.PTransform):
    """DocumentChunk -> ``{"results": pa.RecordBatch, "dead_letter": DeadLetter}``: the
    columnar core every task pipeline runs (the ``bertbeam`` commands use it directly).

    Runs Tokenize | BatchByTokens | RunModel | Postprocess; result batches have the columns
    of :meth:`schema` (the task's, then the carried ones).

    Args:
        task: as for :class:`InferDocuments`.
        run: as for :class:`InferDocuments`.
        carry: as for :class:`InferDocuments`.
        config: the checkpoint's transformers config, when the caller has it (saves reading
            it again on the launcher).

    Example::

        out = chunks | InferChunks(EmbedTask(), run=RunSpec())
        out["results"]  # pa.RecordBatch of id, embedding, n_tokens, ...
    """

    def __init__(self, task: Task, *, run: RunSpec | None = None,
                 carry: list[pa.Field] | tuple[pa.Field, ...] = (), config: Any = None):
        super().__init__()
        self._carry = tuple(carry)
        self._spec = engine_spec(task, run)
        self._run = RunSpec(model=self._spec.model, tokenize=self._spec.tokenize,
                            batch=(run or RunSpec()).batch)
        self._config = config

    @property
    def task(self) -> Task:
        return self._spec.task

    @property
    def run(self) -> RunSpec:
        return self._run

    def schema(self) -> pa.Schema:
        """The Arrow schema of the results (reads the checkpoint's config on the launcher
        unless it was given)."""
        if self._config is None:
            self._config = load_config(self._spec.model)
        return with_carried(self.task.schema(self._config), self._carry)

    def expand(self, chunks: beam.PCollection[DocumentChunk]) -> dict[str, beam.PCollection]:
        task, run = self.task, self._run
        tokenized = chunks | "Tokenize" >> Tokenize(task, run=run)
        finished = (
            tokenized["windows"]
            | "BatchByTokens" >> BatchByTokens(run.batch, engine=self._spec)
            | "RunModel" >> RunModel(task, run=run)
            | "Postprocess" >> Postprocess(task, run=run, schema=self.schema())
        )
        return {"results": finished["results"],
                DEAD_LETTER: (tokenized[DEAD_LETTER], finished[DEAD_LETTER])
                | "DeadLetter" >> beam.Flatten().with_output_types(DeadLetter)}


class InferDocuments(beam.PTransform):
    """Document -> ``{"results": beam.Row, "dead_letter": DeadLetter}`` for any task.

    Runs ValidateDocuments | ChunkDocuments | :class:`InferChunks` | one row per document:
    documents travel in chunks between the stages, and become rows again at the end. Result
    rows carry the task's Beam schema (the columns of ``task.schema(config)``), so
    ``beam.Select``, SqlTransform and BigQuery take them as they are.

    Any windowing, bounded or unbounded (streaming): each result row keeps its document's
    window and timestamp, dead letters keep their document's window, ids are unique per
    window, and a partial batch waits at most ``run.batch.max_wait`` seconds.

    Args:
        task: the task, e.g. ``EmbedTask()`` or ``ClassifyTask(top_k=3)``.
        run: model, tokenize and batch options; by default the embedded model, with the
            window policy the task wants.
        validate: check documents (ids, texts, duplicate ids) first, with the dead-letter
            reasons of ``ReadDocuments``. ``ReadDocuments`` output is already checked: pass
            ``False`` after it.
        carry: Arrow fields of the columns carried from each Document's ``extra`` into its
            result row, after the task's columns (``reading.carried_fields`` reads them from
            the input files).

    Example::

        out = docs | InferDocuments(EmbedTask(), run=RunSpec())
        out["results"] | beam.Select("id", "embedding")
    """

    def __init__(self, task: Task, *, run: RunSpec | None = None, validate: bool = True,
                 carry: list[pa.Field] | tuple[pa.Field, ...] = ()):
        super().__init__()
        self._core = InferChunks(task, run=run, carry=carry)
        self._validate = validate

    @property
    def task(self) -> Task:
        return self._core.task

    @property
    def run(self) -> RunSpec:
        """The run options, with the window policy resolved for the task."""
        return self._core.run

    def schema(self) -> pa.Schema:
        """The Arrow schema of the result rows (reads the checkpoint's config on the launcher)."""
        return self._core.schema()

    def expand(self, docs: beam.PCollection[Document]) -> dict[str, beam.PCollection]:
        dead = []
        windowed = keeps_windows(docs)
        if windowed:
            # Each document's timestamp rides along as a hidden carried column (through the
            # duplicates' shuffle and the chunks, which travel at their earliest timestamp)
            # and is given back to its row.
            docs = docs | "StampEventTime" >> StampEventTime()
        if self._validate:
            checked = docs | "ValidateDocuments" >> ValidateDocuments(pairs=self.task.pair_input)
            docs = checked["documents"]
            dead.append(checked[DEAD_LETTER])
        schema = self.schema()
        core, to_rows = self._core, beam.FlatMap(_beam_rows, schema)
        run = core.run
        if windowed:
            core = InferChunks(self.task, run=run, carry=(*self._core._carry, EVENT_TIME_FIELD),
                               config=self._core._config)
            to_rows = restamp_rows(schema)
        inferred = (docs | "ChunkDocuments" >> ChunkDocuments(
                        run.tokenize.chunk_size, max_wait=run.batch.max_wait)
                    | "InferChunks" >> core)
        try:
            to_rows = to_rows.with_output_types(beam_row_type(schema))
        except TypeError as exc:
            # A carried column of a type Beam schemas lack (a date, a map): rows still flow,
            # as beam.Rows without a declared schema.
            _LOG.info("Results are not schema-aware: %s", exc)
        rows = inferred["results"] | "ToRows" >> to_rows
        if not dead:
            return {"results": rows, DEAD_LETTER: inferred[DEAD_LETTER]}
        return {"results": rows,
                DEAD_LETTER: (*dead, inferred[DEAD_LETTER])
                | "DeadLetter" >> beam.Flatten().with_output_types(DeadLetter)}


def _beam_rows(batch: pa.RecordBatch, schema: pa.Schema) -> list[beam.Row]:
    return [to_beam_row(row, schema) for row in table_rows(batch)]


def with_carried(schema: pa.Schema, carry: tuple[pa.Field, ...]) -> pa.Schema:
    """The task's result schema with the carried columns after its own; a carried column
    named like one of the task's is refused (it would overwrite a result)."""
    clash = [f.name for f in carry if f.name in schema.names]
    if clash:
        raise ValueError(f"Carried column {clash[0]!r} has the name of a result column; the "
                         f"results already have: {', '.join(schema.names)}.")
    for f in carry:
        schema = schema.append(f)
    return schema


class EmbedDocuments(InferDocuments):
    """Document -> embedding rows (``id, embedding, n_tokens, n_chunks, truncated, model``).

    Example::

        out = docs | EmbedDocuments(run=RunSpec(model=ModelSpec(uri="gs://models/minilm")))
    """

    def __init__(self, task: EmbedTask | None = None, *, run: RunSpec | None = None,
                 validate: bool = True, carry: list[pa.Field] | tuple[pa.Field, ...] = ()):
        super().__init__(task or EmbedTask(), run=run, validate=validate, carry=carry)


class LabelDocuments(InferDocuments):
    """Document -> label rows for one labeling task, by name or as a Task object.

    ``task`` is ``"classify"``, ``"ner"``, ``"qa"``, ``"fill-mask"`` or ``"zero-shot"`` (with
    the task's keyword options) or a Task instance. Output columns: see each task's schema.

    Example::

        out = docs | LabelDocuments("zero-shot", labels=("sports", "politics"))
        out = docs | LabelDocuments("classify", top_k=3, run=RunSpec(model=ModelSpec(uri=d)))
    """

    def __init__(self, task: str | Task, *, run: RunSpec | None = None, validate: bool = True,
                 carry: list[pa.Field] | tuple[pa.Field, ...] = (), **options: object):
        if isinstance(task, str):
            task = make_task(task, **options)
        elif options:
            raise TypeError(f"Options {sorted(options)} only apply when the task is given by name.")
        super().__init__(task, run=run, validate=validate, carry=carry)
