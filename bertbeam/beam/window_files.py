"""WriteWindowFiles: results (or dead letters) of a windowed, unbounded PCollection written as
Parquet files per window, bundle by bundle, as they come: no waiting for a window to close."""

from __future__ import annotations

import datetime as dt
import hashlib
import time
from collections.abc import Iterator
from typing import Any

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq

from bertbeam.beam import latency
from bertbeam.beam.writing import parquet_options
from bertbeam.core import metrics
from bertbeam.core.records import rows_to_table
from bertbeam.filesystems import expand_glob, replacing, url_to_fs

WINDOW_FILE_GLOB = "{prefix}-*_*-*.parquet"


def _stamp(seconds: float) -> str:
    try:
        return dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    except (OverflowError, OSError, ValueError):  # the global window's ends
        return "min" if seconds < 0 else "max"


def window_file_name(prefix: str, window: Any, table: pa.Table) -> str:
    """``PREFIX-START_END-DIGEST.parquet``: the window's bounds (UTC) and a digest of the
    rows' ids (and of a dead letter's reason and message), so a bundle that runs again (a
    retry) writes the same file again, not a second one."""
    start, end = float(window.start), float(window.end)
    digest = hashlib.sha1()
    for name in ("id", "stage", "reason", "message", "preview"):
        if name in table.column_names:
            for value in table.column(name).to_pylist():
                digest.update(("" if value is None else str(value)).encode("utf-8", "replace"))
                digest.update(b"\x00")
    digest = digest.hexdigest()[:16]
    return f"{prefix}-{_stamp(start)}_{_stamp(end)}-{digest}.parquet"


class _WriteWindowFilesFn(beam.DoFn):
    def __init__(self, output: str, schema: pa.Schema, prefix: str, record_latency: bool):
        self._output = output.rstrip("/")
        self._schema = schema
        self._prefix = prefix
        self._record_latency = record_latency

    def start_bundle(self) -> None:
        self._held: dict[Any, list[Any]] = {}
        self._stamps: list[float] = []

    def process(self, element: Any, window: Any = beam.DoFn.WindowParam,
                timestamp: Any = beam.DoFn.TimestampParam) -> None:
        self._held.setdefault(window, []).append(element)
        if self._record_latency:
            rows = element.num_rows if isinstance(element, pa.RecordBatch) else 1
            self._stamps.extend([float(timestamp)] * rows)

    def finish_bundle(self) -> Iterator[Any]:
        for window, elements in self._held.items():
            batches = [e for e in elements if isinstance(e, pa.RecordBatch)]
            rows = [e for e in elements if not isinstance(e, pa.RecordBatch)]
            tables = [pa.Table.from_batches([b.select(self._schema.names)], schema=self._schema)
                      for b in batches if b.num_rows]
            if rows:
                tables.append(rows_to_table(rows, self._schema))
            if not tables:
                continue
            table = pa.concat_tables(tables)
            name = window_file_name(self._prefix, window, table)
            with replacing(f"{self._output}/{name}") as f:
                pq.write_table(table, f, **parquet_options(table.schema))
            metrics.inc(rows_counter(self._prefix), table.num_rows)
        if self._stamps:
            now = time.time()
            latency.record(now - stamp for stamp in self._stamps)
        self._held, self._stamps = {}, []
        return iter(())


class WriteWindowFiles(beam.PTransform):
    """Result record batches (or rows: dicts, ``beam.Row``s, DeadLetters) -> Parquet files
    ``OUTPUT/PREFIX-START_END-DIGEST.parquet`` with exactly ``schema``'s columns: one file per
    window per bundle, written when the bundle ends (a temporary file renamed into place, so
    a reader never sees half a file). Columns outside ``schema`` (a hidden one) are left out.

    Example::

        results | WriteWindowFiles("out", schema=schema, record_latency=True)
        dead | WriteWindowFiles("out", schema=DEAD_LETTER_SCHEMA, prefix="dead_letter")

    With ``record_latency``, each row's end-to-end latency (its timestamp to the write) is
    recorded (:mod:`bertbeam.beam.latency`).
    """

    def __init__(self, output: str, *, schema: pa.Schema, prefix: str = "results",
                 record_latency: bool = False):
        super().__init__()
        self._fn = _WriteWindowFilesFn(output, schema, prefix, record_latency)

    def expand(self, pcoll: beam.PCollection) -> beam.PCollection:
        return pcoll | "WriteWindowFiles" >> beam.ParDo(self._fn)


def rows_counter(prefix: str) -> str:
    """The counter of rows written into ``prefix`` files (``rows_written_results``...)."""
    return f"rows_written_{prefix}"


def window_files(output: str, prefix: str = "results", *, start: dt.datetime | None = None,
                 end: dt.datetime | None = None) -> list[str]:
    """URLs of the per-window ``prefix`` files written into ``output`` so far; with ``start``
    and/or ``end`` (aware datetimes), those of the windows that lie within them."""
    urls = expand_glob(f"{output.rstrip('/')}/{WINDOW_FILE_GLOB.format(prefix=prefix)}")
    if start is None and end is None:
        return urls
    kept = []
    for url in urls:
        bounds = window_bounds(url)
        if bounds is None:
            continue
        if (start is None or bounds[0] >= start) and (end is None or bounds[1] <= end):
            kept.append(url)
    return kept


def window_bounds(url: str) -> tuple[dt.datetime, dt.datetime] | None:
    """The (start, end) of the window a file of :class:`WriteWindowFiles` holds (UTC), from
    its name; ``None`` for the global window's or another file's."""
    name = url.rsplit("/", 1)[-1]
    try:
        start, end = name.split("-", 2)[1].split("_")
        return tuple(dt.datetime.strptime(s, "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC)
                     for s in (start, end))  # type: ignore[return-value]
    except (IndexError, ValueError):
        return None


def count_window_rows(output: str, prefix: str = "results") -> int:
    """Rows in the per-window ``prefix`` files of ``output`` (from their footers)."""
    total = 0
    for url in window_files(output, prefix):
        fs, path = url_to_fs(url)
        with fs.open(path, "rb") as f:
            total += pq.ParquetFile(f).metadata.num_rows
    return total
