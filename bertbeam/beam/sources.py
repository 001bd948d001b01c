"""Unbounded sources of Documents: Parquet files as they land in a directory or bucket
(``watch:GLOB``, through Beam's ``MatchContinuously``) and Pub/Sub messages
(``pubsub:projects/P/subscriptions/S``). Rows that cannot be documents go to the dead letter
with the reasons of the batch reader."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import apache_beam as beam

from bertbeam.beam.reading import Columns, ListRowGroupsFn, ReadRowGroupFn
from bertbeam.beam.validation import check_document
from bertbeam.core import metrics
from bertbeam.core.deadletter import DEAD_LETTER, DeadLetter, Reason, emit
from bertbeam.core.records import Document

WATCH = "watch:"
PUBSUB = "pubsub:"


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

    def __init__(self, pattern: str, columns: Columns | None = None, *, interval: float = 2.0):
        super().__init__()
        if not interval > 0:
            raise ValueError(f"The watch interval must be a positive number of seconds, got {interval!r}.")
        self._pattern = pattern
        self._columns = columns or Columns()
        self._interval = interval

    def expand(self, pbegin: beam.pvalue.PBegin) -> dict[str, beam.PCollection]:
        # this part of Beam only where it is used (start-up)
        from apache_beam.io.fileio import MatchContinuously

        read = (
            pbegin
            | "MatchContinuously" >> MatchContinuously(self._pattern, interval=self._interval)
            | "Paths" >> beam.Map(lambda m: m.path).with_output_types(str)
            | "ReadFiles" >> beam.ParDo(_ReadFileFn(self._columns)).with_outputs(
                DEAD_LETTER, main="documents")
        )
        return {"documents": read.documents, DEAD_LETTER: read[DEAD_LETTER]}


class _ReadFileFn(beam.DoFn):
    """A file's row groups, one after the other, through the batch reader's steps. Duplicate
    ids are a matter of each window (``DropRepeatedIds`` downstream), not of the whole
    corpus as in a batch read: no id is known in advance to be repeated. (One DoFn, not
    two joined by a Flatten: the local runner holds a flattened stage back while the watch
    runs.)"""

    def __init__(self, columns: Columns):
        self._groups = ListRowGroupsFn()
        self._read = ReadRowGroupFn(columns)

    def setup(self) -> None:
        self._groups.setup()
        self._read.setup()

    def process(self, url: str) -> Iterator[Any]:
        for group in self._groups.process(url):
            if isinstance(group, beam.pvalue.TaggedOutput):
                yield group
            else:
                yield from self._read.process(group, {})


def message_document(data: bytes, attributes: dict[str, str] | None,
                     columns: Columns) -> Document | DeadLetter:
    """The Document of one Pub/Sub message, or the DeadLetter saying why it cannot be one.

    A payload that is a JSON object gives the id, the text (and the pair) and the carried
    columns by name; any other payload is the text itself (UTF-8), with the id (and carried
    columns) taken from the message attributes.
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
    def __init__(self, columns: Columns):
        self._columns = columns

    def process(self, message: Any) -> Iterator[Any]:
        metrics.inc(metrics.READ)
        yield emit(message_document(message.data, message.attributes, self._columns))


class ReadPubSubDocuments(beam.PTransform):
    """Pipeline root -> Document (``documents``) and DeadLetter (``dead_letter``), one per
    Pub/Sub message of ``subscription`` (``projects/P/subscriptions/S``): see
    :func:`message_document` for how a message becomes a document. A document's timestamp is
    the message's publish time.

    Example::

        read = p | ReadPubSubDocuments("projects/p/subscriptions/docs", Columns(text="body"))
    """

    def __init__(self, subscription: str, columns: Columns | None = None):
        super().__init__()
        self._subscription = subscription
        self._columns = columns or Columns()

    def expand(self, pbegin: beam.pvalue.PBegin) -> dict[str, beam.PCollection]:
        read = (pbegin
                | "ReadFromPubSub" >> beam.io.ReadFromPubSub(
                    subscription=self._subscription, with_attributes=True)
                | "ToDocuments" >> beam.ParDo(_MessageDocumentFn(self._columns)).with_outputs(
                    DEAD_LETTER, main="documents"))
        return {"documents": read.documents, DEAD_LETTER: read[DEAD_LETTER]}
