"""Unbounded sources of Documents: Parquet files as they land in a directory or bucket
(``watch:GLOB``, through Beam's ``MatchContinuously``) and Pub/Sub messages
(``pubsub:projects/P/subscriptions/S``). Rows that cannot be documents go to the dead letter
with the reasons of the batch reader.

With a tombstone field (``tombstone=``), a row or message whose field is true is not a
document to compute but the deletion of its id: it comes out as a :func:`deletion`, a
Document with no text that :func:`is_deletion` tells apart, so that a deletion and a
document of the same id meet in ``DropRepeatedIds`` (one event per id per window, the first
kept) before :class:`SplitDeletions` sends the deletions their own way.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import apache_beam as beam
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from bertbeam.beam.reading import Columns, ListRowGroupsFn, ReadRowGroupFn
from bertbeam.beam.validation import check_document
from bertbeam.core import metrics
from bertbeam.core.deadletter import DEAD_LETTER, DeadLetter, Reason, emit
from bertbeam.core.records import Document
from bertbeam.filesystems import url_to_fs

WATCH = "watch:"
PUBSUB = "pubsub:"

DELETED = "deleted"
"""The output tag of :class:`SplitDeletions`: the ids whose deletion passed."""

_DELETION = "__bertbeam_deletion"
_TRUE_WORDS = frozenset({"true", "1", "yes", "y", "t"})


def deletion(doc_id: str) -> Document:
    """The event "delete ``doc_id``" as it travels with the documents until
    :class:`SplitDeletions`."""
    return Document(doc_id, "", extra={_DELETION: True})


def is_deletion(doc: Any) -> bool:
    return isinstance(doc, Document) and bool(doc.extra) and doc.extra.get(_DELETION) is True


def is_tombstone(value: Any) -> bool:
    """Whether a tombstone field's value marks a deletion: ``True``, a non-zero number, or
    the words true / 1 / yes (any case); null, false, 0 and anything else do not."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return value != 0
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return isinstance(value, str) and value.strip().lower() in _TRUE_WORDS


def tombstone_mask(column: pa.ChunkedArray | pa.Array) -> list[bool]:
    """:func:`is_tombstone` of every value of a Parquet column."""
    if pa.types.is_boolean(column.type):
        return pc.fill_null(column, False).to_pylist()
    return [is_tombstone(v) for v in column.to_pylist()]


@dataclass(frozen=True)
class StreamSource:
    """Where a streaming job's documents come from: ``kind`` and its location (a glob, or a
    Pub/Sub subscription path)."""

    kind: Literal["watch", "pubsub"]
    location: str

    @classmethod
    def parse(cls, value: str) -> StreamSource:
        """``watch:GLOB`` or ``pubsub:projects/P/subscriptions/S``; anything else is refused
        in one line."""
        if value.startswith(WATCH) and value[len(WATCH):].strip():
            return cls("watch", value[len(WATCH):])
        if value.startswith(PUBSUB):
            path = value[len(PUBSUB):]
            parts = path.split("/")
            if len(parts) == 4 and parts[0] == "projects" and parts[2] == "subscriptions" and all(parts):
                return cls("pubsub", path)
            raise ValueError(f"Invalid Pub/Sub input {value!r}: expected "
                             "'pubsub:projects/PROJECT/subscriptions/SUBSCRIPTION'.")
        raise ValueError(f"A streaming input is 'watch:GLOB' (Parquet files as they land) or "
                         f"'pubsub:projects/P/subscriptions/S', got {value!r}.")


class WatchDocuments(beam.PTransform):
    """Pipeline root -> Document (``documents``) and DeadLetter (``dead_letter``): every
    Parquet file matching ``pattern`` that is there or lands later, read once by the batch
    reader (row group by row group, the same checks and reasons), as it is found.

    A document's timestamp is the time its file was found. Files are matched every
    ``interval`` seconds by Beam's ``MatchContinuously`` (which remembers the paths it has
    seen: a file is read once even if it changes).

    Example::

        read = p | WatchDocuments("gs://bucket/incoming/*.parquet", Columns(text="body"))
    """

    def __init__(self, pattern: str, columns: Columns | None = None, *, interval: float = 2.0,
                 tombstone: str | None = None):
        super().__init__()
        if not interval > 0:
            raise ValueError(f"The watch interval must be a positive number of seconds, got {interval!r}.")
        self._pattern = pattern
        self._columns = columns or Columns()
        self._interval = interval
        self._tombstone = tombstone

    def expand(self, pbegin: beam.pvalue.PBegin) -> dict[str, beam.PCollection]:
        # this part of Beam only where it is used (start-up)
        from apache_beam.io.fileio import MatchContinuously

        read = (
            pbegin
            | "MatchContinuously" >> MatchContinuously(self._pattern, interval=self._interval)
            | "Paths" >> beam.Map(lambda m: m.path).with_output_types(str)
            | "ReadFiles" >> beam.ParDo(_ReadFileFn(self._columns, self._tombstone)).with_outputs(
                DEAD_LETTER, main="documents")
        )
        return {"documents": read.documents, DEAD_LETTER: read[DEAD_LETTER]}


class _ReadFileFn(beam.DoFn):
    """A file's row groups, one after the other, through the batch reader's steps. Duplicate
    ids are a matter of each window (``DropRepeatedIds`` downstream), not of the whole
    corpus as in a batch read: no id is known in advance to be repeated. (One DoFn, not
    two joined by a Flatten: the local runner holds a flattened stage back while the watch
    runs.)"""

    def __init__(self, columns: Columns, tombstone: str | None = None):
        self._groups = ListRowGroupsFn()
        self._read = ReadRowGroupFn(columns)
        self._id, self._tombstone = columns.id, tombstone

    def setup(self) -> None:
        self._groups.setup()
        self._read.setup()

    def process(self, url: str) -> Iterator[Any]:
        for group in self._groups.process(url):
            if isinstance(group, beam.pvalue.TaggedOutput):
                yield group
                continue
            gone = self._deleted_ids(*group) if self._tombstone else ()
            if not gone:
                yield from self._read.process(group, {})
                continue
            # The group's deletions, then its other rows: a row of a deleted id (its text may
            # be empty) is the deletion, whatever the reader makes of it.
            for doc_id in gone:
                yield deletion(doc_id)
            for out in self._read.process(group, {}):
                value = out.value if isinstance(out, beam.pvalue.TaggedOutput) else out
                if getattr(value, "id", None) not in gone:
                    yield out

    def _deleted_ids(self, url: str, group: int) -> dict[str, None]:
        """The ids (in row order) of the rows of row group ``group`` of ``url`` whose
        tombstone column is true; a file without the column deletes nothing."""
        fs, path = url_to_fs(url)
        try:
            with fs.open(path, "rb") as f:
                parquet = pq.ParquetFile(f)
                if self._tombstone not in parquet.schema_arrow.names:
                    return {}
                table = parquet.read_row_group(group, columns=[self._id, self._tombstone])
        except Exception:  # noqa: BLE001 - the reader reports an unreadable group row by row
            return {}
        ids = table.column(0).to_pylist()
        return {i: None for i, gone in zip(ids, tombstone_mask(table.column(1)), strict=True)
                if gone and isinstance(i, str) and i}


def message_document(data: bytes, attributes: dict[str, str] | None,
                     columns: Columns, tombstone: str | None = None) -> Document | DeadLetter:
    """The Document of one Pub/Sub message, or the DeadLetter saying why it cannot be one.

    A payload that is a JSON object gives the id, the text (and the pair) and the carried
    columns by name; any other payload is the text itself (UTF-8), with the id (and carried
    columns) taken from the message attributes. With ``tombstone``, a message whose field
    (in the JSON object or the attributes) is true is the :func:`deletion` of its id.
    """
    attributes = dict(attributes or {})
    payload = None
    if data.lstrip()[:1] == b"{":
        try:
            payload = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            return DeadLetter.of(attributes.get(columns.id), Reason.NOT_A_STRING, (
                "the message looks like JSON but does not parse"),
                value=data[:200].decode("utf-8", "replace"))
    if tombstone is not None:
        fields = {**attributes, **payload} if isinstance(payload, dict) else attributes
        if is_tombstone(fields.get(tombstone)):
            doc_id = fields.get(columns.id)
            if isinstance(doc_id, str) and doc_id:
                return deletion(doc_id)
            return DeadLetter.of(None, Reason.MISSING_ID, "a tombstone without an id",
                                 value=data[:200].decode("utf-8", "replace"))
    if isinstance(payload, dict):
        fields = {**attributes, **payload}
        missing = [c for c in (columns.text, columns.text_pair) if c and c not in fields]
        if missing:
            return DeadLetter.of(fields.get(columns.id), Reason.MISSING_COLUMN, (
                f"the message has no field {missing[0]!r}; it has: {', '.join(sorted(fields))}"),
                value=data[:200].decode("utf-8", "replace"))
        text, pair = fields[columns.text], fields.get(columns.text_pair) if columns.text_pair else None
    else:
        fields, text, pair = attributes, data, None
    checked = check_document(fields.get(columns.id), text, pair,
                             with_pair=columns.text_pair is not None)
    if isinstance(checked, Document) and columns.carry:
        checked.extra = {c: fields.get(c) for c in columns.carry}
    return checked


class _MessageDocumentFn(beam.DoFn):
    def __init__(self, columns: Columns, tombstone: str | None = None):
        self._columns, self._tombstone = columns, tombstone

    def process(self, message: Any) -> Iterator[Any]:
        metrics.inc(metrics.READ)
        yield emit(message_document(message.data, message.attributes, self._columns,
                                    self._tombstone))


class ReadPubSubDocuments(beam.PTransform):
    """Pipeline root -> Document (``documents``) and DeadLetter (``dead_letter``), one per
    Pub/Sub message of ``subscription`` (``projects/P/subscriptions/S``): see
    :func:`message_document` for how a message becomes a document. A document's timestamp is
    the message's publish time.

    Example::

        read = p | ReadPubSubDocuments("projects/p/subscriptions/docs", Columns(text="body"))
    """

    def __init__(self, subscription: str, columns: Columns | None = None, *,
                 tombstone: str | None = None):
        super().__init__()
        self._subscription = subscription
        self._columns = columns or Columns()
        self._tombstone = tombstone

    def expand(self, pbegin: beam.pvalue.PBegin) -> dict[str, beam.PCollection]:
        read = (pbegin
                | "ReadFromPubSub" >> beam.io.ReadFromPubSub(
                    subscription=self._subscription, with_attributes=True)
                | "ToDocuments" >> beam.ParDo(
                    _MessageDocumentFn(self._columns, self._tombstone)).with_outputs(
                    DEAD_LETTER, main="documents"))
        return {"documents": read.documents, DEAD_LETTER: read[DEAD_LETTER]}


class _SplitDeletionsFn(beam.DoFn):
    def process(self, doc: Any) -> Iterator[Any]:
        if is_deletion(doc):
            yield beam.pvalue.TaggedOutput(DELETED, doc.id)
        else:
            yield doc


class SplitDeletions(beam.PTransform):
    """Documents and deletions (after ``DropRepeatedIds``) -> ``{"documents": the Documents,
    "deleted": the ids to delete}``, each in its window."""

    def expand(self, docs: beam.PCollection) -> dict[str, beam.PCollection]:
        out = docs | "SplitDeletions" >> beam.ParDo(_SplitDeletionsFn()).with_outputs(
            DELETED, main="documents")
        return {"documents": out.documents, DELETED: out[DELETED]}

