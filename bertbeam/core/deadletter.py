"""The dead letter: a typed record of one input that could not be processed, built where the
failure happens, and the one table of reason codes that docs/reliability.md documents.

Every stage that can reject an input (read, validate, tokenize, model, postprocess) builds a
:class:`DeadLetter` itself, with its own stage and reason, and emits it on the output tagged
:data:`DEAD_LETTER`. It is a NamedTuple registered with Beam's ``RowCoder``, so dead-letter
PCollections carry a Beam schema (``beam.Select``, SqlTransform and BigQuery take them) and
it is written as is to ``dead_letter-*.parquet`` (:data:`DEAD_LETTER_SCHEMA`).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any, NamedTuple

import apache_beam as beam
import pyarrow as pa

from bertbeam.core import metrics

DEAD_LETTER = "dead_letter"
"""The tag of every transform's dead-letter output."""

PREVIEW_CHARS = 200
MESSAGE_CHARS = 500


class Stage(str, enum.Enum):
    """Where an input failed."""

    READ = "read"
    TOKENIZE = "tokenize"
    MODEL = "model"
    POSTPROCESS = "postprocess"
    SINK = "sink"


class Reason(str, enum.Enum):
    """Why an input failed: the ``reason`` column of the dead letter."""

    NULL_TEXT = "null_text"
    EMPTY_TEXT = "empty_text"
    NOT_A_STRING = "not_a_string"
    INVALID_UTF8 = "invalid_utf8"
    MISSING_ID = "missing_id"
    DUPLICATE_ID = "duplicate_id"
    UNREADABLE_FILE = "unreadable_file"
    MISSING_COLUMN = "missing_column"
    TOO_LONG = "too_long"
    TOKENIZE_ERROR = "tokenize_error"
    MODEL_ERROR = "model_error"
    OUT_OF_MEMORY = "out_of_memory"
    NAN_OUTPUT = "nan_output"
    BAD_TASK_INPUT = "bad_task_input"
    POSTPROCESS_ERROR = "postprocess_error"
    SINK_LIMIT = "sink_limit"


REASONS: Mapping[Reason, tuple[Stage, str]] = {
    Reason.NULL_TEXT: (Stage.READ, "the text (or question/context) is null"),
    Reason.EMPTY_TEXT: (Stage.READ, "empty, whitespace-only or control-characters-only text "
                                    "(tokenize stage: text the tokenizer turns into no tokens)"),
    Reason.NOT_A_STRING: (Stage.READ, "the text column holds a number, a list, a date, … (a wrong "
                                      "column type)"),
    Reason.INVALID_UTF8: (Stage.READ, "bytes that are not valid UTF-8 (lone surrogates included), "
                                      "in the text or the id"),
    Reason.MISSING_ID: (Stage.READ, "the id is null, blank or NaN"),
    Reason.DUPLICATE_ID: (Stage.READ, "the id was already used by an earlier row"),
    Reason.UNREADABLE_FILE: (Stage.READ, "a truncated or corrupt Parquet file or row group"),
    Reason.MISSING_COLUMN: (Stage.READ, "the row's file lacks the id or text column (a file "
                                        "of the glob with another schema)"),
    Reason.TOO_LONG: (Stage.TOKENIZE, "a QA question that leaves no room in the window for the "
                                      "context and the stride"),
    Reason.TOKENIZE_ERROR: (Stage.TOKENIZE, "the tokenizer failed on this document alone"),
    Reason.MODEL_ERROR: (Stage.MODEL, "the model failed on this row (a failing batch is bisected "
                                      "so only the offending rows go here)"),
    Reason.OUT_OF_MEMORY: (Stage.MODEL, "a single window that does not fit in GPU memory"),
    Reason.NAN_OUTPUT: (Stage.MODEL, "the model produced NaN or infinite values"),
    Reason.BAD_TASK_INPUT: (Stage.POSTPROCESS, "the row can't serve the task (fill-mask text "
                                               "without a mask token)"),
    Reason.POSTPROCESS_ERROR: (Stage.POSTPROCESS, "post-processing failed for this document"),
    Reason.SINK_LIMIT: (Stage.SINK, "the id or the kept text is over a field limit of the --sink "
                                    "collection (Milvus: ids of 1,024 bytes, texts of 65,535)"),
}
"""Reason -> (the stage that reports it, what it means); docs/reliability.md's table is this one."""


def preview(value: Any) -> str:
    """The first ``PREVIEW_CHARS`` characters of the offending value (a repr for non-strings)."""
    text = value if isinstance(value, str) else ("" if value is None else repr(value))
    return text[:PREVIEW_CHARS].encode("utf-8", "replace").decode("utf-8")


class DeadLetter(NamedTuple):
    """One input that could not be processed: which, where, why, and what it looked like.

    Example::

        DeadLetter.of("doc-7", Reason.NAN_OUTPUT, value=text)
    """

    id: str | None
    stage: str
    reason: str
    message: str
    preview: str

    @classmethod
    def of(cls, doc_id: Any, reason: Reason, message: str | None = None, *, value: Any = None,
           stage: Stage | None = None) -> DeadLetter:
        """A dead letter for ``doc_id``; the stage defaults to the one that reports ``reason``
        and the message to the reason's meaning."""
        default_stage, meaning = REASONS[reason]
        return cls(
            id=None if doc_id is None else str(doc_id),
            stage=(stage or default_stage).value,
            reason=reason.value,
            message=(message or meaning)[:MESSAGE_CHARS],
            preview=preview(value),
        )

    def tagged(self) -> beam.pvalue.TaggedOutput:
        """This dead letter on the :data:`DEAD_LETTER` output of a DoFn, counted in the
        ``documents_dead_lettered`` counter."""
        metrics.inc(metrics.DEAD_LETTERED)
        return beam.pvalue.TaggedOutput(DEAD_LETTER, self)


def emit(value: Any) -> Any:
    """What a DoFn yields for a stage's result: a DeadLetter on the dead-letter output
    (counted), anything else on the main output."""
    return value.tagged() if isinstance(value, DeadLetter) else value


beam.coders.registry.register_coder(DeadLetter, beam.coders.RowCoder)


class DeadLetterError(RuntimeError):
    """Raised for one input by ``BertModelHandler`` (RunInference users): carries the
    :class:`DeadLetter`, so ``with_exception_handling()`` reports the row with its reason."""

    def __init__(self, dead: DeadLetter):
        super().__init__(f"{dead.stage}/{dead.reason}: {dead.message} (input: {dead.preview!r})")
        self.dead_letter = dead


DEAD_LETTER_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=True),
        pa.field("stage", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("message", pa.string(), nullable=False),
        pa.field("preview", pa.string(), nullable=False),
    ]
)
"""The Arrow schema of ``dead_letter-*.parquet``: the fields of :class:`DeadLetter`."""
