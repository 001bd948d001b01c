"""ValidateDocuments: the checks every document passes before it reaches the model, with the
reason codes of the dead letter. The read path (``ReadDocuments``) applies the same checks."""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Iterator
from typing import Any

import apache_beam as beam

from bertbeam.beam.windowing import DropRepeatedIds
from bertbeam.core.deadletter import DEAD_LETTER, DeadLetter, Reason, emit
from bertbeam.core.records import Document


class Unconvertible:
    """A Parquet value Arrow could not turn into Python (a date out of range, …)."""

    def __init__(self, error: str):
        self.error = error

    def __repr__(self) -> str:
        return f"<unconvertible value: {self.error}>"


def id_key(raw: Any) -> str | None:
    """The string id of a row, or None when it has none: null, blank, NaN, bytes that are not
    UTF-8 (valid UTF-8 bytes are decoded, so results join to a binary id column)."""
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError:
            return None
    if raw is None or isinstance(raw, Unconvertible) or (isinstance(raw, str) and not raw.strip()):
        return None
    if isinstance(raw, float) and math.isnan(raw):
        return None
    return raw if isinstance(raw, str) else str(raw)


def text_or_reason(value: Any) -> tuple[str | None, Reason | None]:
    """The text, or ``(None, reason)`` when the value cannot be a model input."""
    if value is None:
        return None, Reason.NULL_TEXT
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            return None, Reason.INVALID_UTF8
    if not isinstance(value, str):
        return None, Reason.NOT_A_STRING
    if not value.strip() or not any(unicodedata.category(c)[0] not in "CZ" for c in value):
        return None, Reason.EMPTY_TEXT
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return None, Reason.INVALID_UTF8  # lone surrogates
    return value, None


def check_document(raw_id: Any, text: Any, pair: Any = None, *,
                   with_pair: bool = False) -> Document | DeadLetter:
    """A valid Document, or the read-stage DeadLetter saying why the row cannot be one."""
    doc_id = id_key(raw_id)
    if doc_id is None:
        if isinstance(raw_id, bytes):
            return DeadLetter.of(None, Reason.INVALID_UTF8, f"the id {raw_id[:100]!r} is not "
                                 "valid UTF-8", value=text)
        return DeadLetter.of(raw_id if isinstance(raw_id, str) else None, Reason.MISSING_ID,
                             value=text)
    text_value, reason = text_or_reason(text)
    pair_value = None
    if reason is None and with_pair:
        pair_value, reason = text_or_reason(pair)
    if reason is not None:
        return DeadLetter.of(doc_id, reason, value=text)
    return Document(doc_id, text_value, pair_value)


class _ValidateFn(beam.DoFn):
    def __init__(self, with_pair: bool | None):
        self._with_pair = with_pair

    def process(self, doc: Any) -> Iterator[Any]:
        if not isinstance(doc, Document):
            yield DeadLetter.of(None, Reason.NOT_A_STRING, (
                f"expected a bertbeam Document, got {type(doc).__name__}"), value=doc).tagged()
            return
        with_pair = doc.text_pair is not None if self._with_pair is None else self._with_pair
        checked = check_document(doc.id, doc.text, doc.text_pair, with_pair=with_pair)
        if isinstance(checked, Document):
            checked.extra = doc.extra
        yield emit(checked)


class _DuplicatesFn(beam.DoFn):
    """Of the documents sharing an id, keeps one (the smallest text, then pair: the same one on
    every run) and dead-letters the others as ``duplicate_id``."""

    def process(self, element: tuple[str, list[Document]]) -> Iterator[Any]:
        doc_id, docs = element
        ordered = sorted(docs, key=lambda d: (d.text, d.text_pair or ""))
        yield ordered[0]
        for doc in ordered[1:]:
            yield DeadLetter.of(doc_id, Reason.DUPLICATE_ID, (
                f"{len(docs)} documents have this id; one is kept"), value=doc.text).tagged()


class ValidateDocuments(beam.PTransform):
    """Document -> valid Document (``documents``) and DeadLetter (``dead_letter``).

    A document needs an id (not null or blank) and a text (or question and context) that is a
    string with something besides whitespace and control characters, valid UTF-8; of
    documents sharing an id one is kept. The reason codes are those of ``ReadDocuments``
    (``missing_id``, ``null_text``, ``empty_text``, ``not_a_string``, ``invalid_utf8``,
    ``duplicate_id``).

    Finding duplicates needs the ids of the whole input: the ids go through a combine, and
    only the documents whose id is used more than once are shuffled (``dedupe=False`` skips
    it when the source guarantees unique ids). On windowed input ids are unique per window;
    on unbounded input the first document of an id to arrive in its window is kept, as it
    arrives (``windowing.DropRepeatedIds``), where the shuffle would wait for the window to
    close.

    Example::

        checked = docs | ValidateDocuments()
        good, bad = checked["documents"], checked["dead_letter"]
    """

    def __init__(self, *, dedupe: bool = True, pairs: bool | None = None):
        super().__init__()
        self._dedupe = dedupe
        self._pairs = pairs

    def expand(self, docs: beam.PCollection) -> dict[str, beam.PCollection]:
        checked = docs | "Check" >> beam.ParDo(_ValidateFn(self._pairs)).with_outputs(
            DEAD_LETTER, main="documents")
        if not self._dedupe:
            return {"documents": checked.documents, DEAD_LETTER: checked[DEAD_LETTER]}
        if not checked.documents.is_bounded:
            first = checked.documents | "DropRepeatedIds" >> DropRepeatedIds()
            dead = (checked[DEAD_LETTER], first[DEAD_LETTER]) | "DeadLetters" >> beam.Flatten()
            return {"documents": first["documents"], DEAD_LETTER: dead}
        duplicated = (
            checked.documents
            | "Ids" >> beam.Map(lambda d: (d.id, 1))
            | "CountIds" >> beam.CombinePerKey(sum)
            | "Duplicated" >> beam.Filter(lambda kv: kv[1] > 1)
        )
        split = checked.documents | "SplitDuplicates" >> beam.ParDo(
            _SplitDuplicatesFn(), duplicated=beam.pvalue.AsDict(duplicated)).with_outputs(
            "duplicated", main="unique")
        resolved = (
            split.duplicated
            | "GroupDuplicates" >> beam.GroupByKey()
            | "KeepOne" >> beam.ParDo(_DuplicatesFn()).with_outputs(DEAD_LETTER, main="kept")
        )
        documents = (split.unique, resolved.kept) | "Documents" >> beam.Flatten()
        dead = (checked[DEAD_LETTER], resolved[DEAD_LETTER]) | "DeadLetters" >> beam.Flatten()
        return {"documents": documents, DEAD_LETTER: dead}


class _SplitDuplicatesFn(beam.DoFn):
    def process(self, doc: Document, duplicated: dict[str, int]) -> Iterator[Any]:
        if doc.id in duplicated:
            yield beam.pvalue.TaggedOutput("duplicated", (doc.id, doc))
        else:
            yield doc
