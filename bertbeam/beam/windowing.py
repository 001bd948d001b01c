"""Windows and timestamps through the stages that work on many elements at once: what lets the
same transforms run on windowed or unbounded input (streaming) as on a batch corpus.

Batch input (the global window, bounded) takes none of this: the stages keep their own
DoFns, so a batch pipeline runs exactly as before. Other input goes through:

- :class:`PerWindowBuffer`: a ``BufferedDoFn`` with one buffer per window, flushed when full,
  when its oldest element has waited ``max_wait`` seconds, and at the end of every bundle
  (nothing is held across bundles: no state, no timers; Beam's ``_WindowAwareBatchingDoFn``
  does the same). What a flush yields goes out in the window its elements came from.
- :class:`DropRepeatedIds`: on unbounded input, duplicate ids per window as documents arrive
  (the first is kept; bounded windowed input keeps ``ValidateDocuments``' shuffle, per window).
- the event time of each document, carried through the chunks as a hidden column
  (:data:`EVENT_TIME`) and given back to its result row (:class:`_RestampRowsFn`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import apache_beam as beam
import pyarrow as pa
from apache_beam.coders import BooleanCoder
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec
from apache_beam.transforms.window import BoundedWindow, GlobalWindows
from apache_beam.utils.timestamp import Timestamp
from apache_beam.utils.windowed_value import WindowedValue

from bertbeam.beam.buffering import BufferedDoFn
from bertbeam.core.deadletter import DEAD_LETTER, DeadLetter, Reason
from bertbeam.core.records import Document, table_rows, to_beam_row

EVENT_TIME = "__bertbeam_event_time"
"""The hidden carried column that holds a document's timestamp (microseconds) between
``InferDocuments``' first and last step on windowed input; it never reaches a result row."""

EVENT_TIME_FIELD = pa.field(EVENT_TIME, pa.int64())

MAX_LIVE_WINDOWS = 16
"""Buffers held at once by one :class:`PerWindowBuffer`; past it, the fullest is flushed
(many windows open at once: sliding windows, a late watermark)."""


def keeps_windows(pcoll: beam.PCollection) -> bool:
    """Whether ``pcoll``'s elements need their windows and timestamps kept by the stages that
    buffer: any windowing but the global window, and any unbounded input."""
    return not isinstance(pcoll.windowing.windowfn, GlobalWindows) or not pcoll.is_bounded


@dataclass
class _Held:
    since: float  # when the first element came in (the clock of PerWindowBuffer)
    timestamp: Timestamp  # the earliest element timestamp
    items: list[Any] = field(default_factory=list)
    weight: int = 0


class PerWindowBuffer(beam.DoFn):
    """``inner``'s buffering, one buffer per window: ``inner.flush`` gets elements of one
    window, and what it yields goes out in that window, at the earliest timestamp of those
    elements (dead letters included).

    A buffer is flushed when its weight reaches ``inner.capacity``, when its oldest element
    has waited ``max_wait`` seconds (checked as elements arrive), and at the end of the bundle.

    Example::

        beam.ParDo(PerWindowBuffer(_BatchByTokensFn(spec, engine), max_wait=0.1))
    """

    def __init__(self, inner: BufferedDoFn, max_wait: float, *,
                 clock: Callable[[], float] = time.monotonic):
        if max_wait < 0:
            raise ValueError(f"max_wait must be at least 0 seconds, got {max_wait!r}.")
        self._inner = inner
        self._max_wait = max_wait
        self._clock = clock

    def setup(self) -> None:
        self._inner.setup()

    def teardown(self) -> None:
        self._inner.teardown()

    def start_bundle(self) -> None:
        self._buffers: dict[BoundedWindow, _Held] = {}

    def process(self, element: Any, window: Any = beam.DoFn.WindowParam,
                timestamp: Any = beam.DoFn.TimestampParam) -> Iterator[Any]:
        now = self._clock()
        held = self._buffers.get(window)
        if held is None:
            held = self._buffers[window] = _Held(now, timestamp)
        held.items.append(element)
        held.weight += self._inner.weight(element)
        held.timestamp = min(held.timestamp, timestamp)
        if held.weight >= self._inner.capacity:
            yield from self._flush(window)
        for waited in [w for w, h in self._buffers.items() if now - h.since >= self._max_wait]:
            yield from self._flush(waited)
        if len(self._buffers) > MAX_LIVE_WINDOWS:
            yield from self._flush(max(self._buffers, key=lambda w: self._buffers[w].weight))

    def finish_bundle(self) -> Iterator[Any]:
        for window in list(self._buffers):
            yield from self._flush(window)

    def _flush(self, window: BoundedWindow) -> Iterator[Any]:
        held = self._buffers.pop(window)
        for out in self._inner.flush(held.items):
            if isinstance(out, beam.pvalue.TaggedOutput):
                yield beam.pvalue.TaggedOutput(
                    out.tag, WindowedValue(out.value, held.timestamp, (window,)))
            else:
                yield WindowedValue(out, held.timestamp, (window,))


class _FirstOfIdFn(beam.DoFn):
    """Keyed by id: the first document of an id in a window passes, later ones are dead
    letters (``duplicate_id``). The state lives as long as the window."""

    SEEN = ReadModifyWriteStateSpec("seen", BooleanCoder())

    def process(self, element: tuple[str, Document],
                seen: Any = beam.DoFn.StateParam(SEEN)) -> Iterator[Any]:  # noqa: B008
        doc_id, doc = element
        if seen.read():
            yield DeadLetter.of(doc_id, Reason.DUPLICATE_ID, (
                "an earlier document of this window has this id; the first is kept"),
                value=doc.text).tagged()
            return
        seen.write(True)
        yield doc


class DropRepeatedIds(beam.PTransform):
    """Document -> the first Document of each id per window (``documents``) and a DeadLetter
    for each later one (``dead_letter``, reason ``duplicate_id``), as they arrive: no
    waiting for the window to close.

    On a batch corpus ``ValidateDocuments`` keeps the document with the smallest text, the
    same on every run; in a stream there is no "every run", and the first to arrive is kept.
    The ids seen are held (keyed state) until their window expires: in the global window of
    an unbounded stream, for ever; window the input, or validate upstream and pass
    ``validate=False``.
    """

    def expand(self, docs: beam.PCollection[Document]) -> dict[str, beam.PCollection]:
        kept = (docs
                | "KeyById" >> beam.Map(lambda d: (d.id, d)).with_output_types(
                    tuple[str, Document])
                | "FirstOfId" >> beam.ParDo(_FirstOfIdFn()).with_outputs(
                    DEAD_LETTER, main="documents"))
        return {"documents": kept.documents, DEAD_LETTER: kept[DEAD_LETTER]}


class _StampFn(beam.DoFn):
    """Writes each document's timestamp into its hidden :data:`EVENT_TIME` column (a copy:
    the input element is not changed; anything else passes, for validation to report)."""

    def process(self, doc: Any, timestamp: Any = beam.DoFn.TimestampParam) -> Iterator[Any]:
        if not isinstance(doc, Document):
            yield doc
            return
        yield Document(doc.id, doc.text, doc.text_pair,
                       {**(doc.extra or {}), EVENT_TIME: int(timestamp.micros)})


class StampEventTime(beam.PTransform):
    """Document -> the same Document with its timestamp in the hidden column :data:`EVENT_TIME`
    (carried through the chunk stages like any carried column)."""

    def expand(self, docs: beam.PCollection[Document]) -> beam.PCollection[Document]:
        return docs | "StampEventTime" >> beam.ParDo(_StampFn())


class _RestampRowsFn(beam.DoFn):
    """A result record batch -> one ``beam.Row`` per document, in the window of the batch and
    at its document's own timestamp (from :data:`EVENT_TIME`, which the row leaves out)."""

    def __init__(self, schema: pa.Schema):
        self._schema = schema

    def process(self, batch: pa.RecordBatch, window: Any = beam.DoFn.WindowParam
                ) -> Iterator[WindowedValue]:
        for row in table_rows(batch):
            micros = row.pop(EVENT_TIME)
            yield WindowedValue(to_beam_row(row, self._schema), Timestamp(micros=micros),
                                (window,))


def restamp_rows(schema: pa.Schema) -> beam.ParDo:
    """The ParDo of :class:`_RestampRowsFn` (``schema``: the result rows', without the hidden
    column)."""
    return beam.ParDo(_RestampRowsFn(schema))
