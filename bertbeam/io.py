"""ReadDocuments and WriteResults: Parquet in, Parquet out, through fsspec.

All paths go through fsspec (local, ``gs://`` via gcsfs, ``memory://``, ...): one
filesystem layer for inputs, outputs and models, so that every location accepts the same
URLs. ``gcsfs`` honours ``STORAGE_EMULATOR_HOST``.

Sinks write each bundle to a temporary file under ``DIR/.temp-<run>/`` and a single
finalize step renames the committed files to ``DIR/<prefix>-NNNNN-of-NNNNN.parquet`` and
removes files of earlier runs: a retried bundle's lost attempt is never renamed, so
retries cannot duplicate rows.
"""

from __future__ import annotations

import logging
import unicodedata
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.transforms.window import GlobalWindows

from bertbeam import metrics
from bertbeam.records import Document, dead_letter, rows_to_table

_LOG = logging.getLogger(__name__)

DEAD_LETTER = "dead_letter"
READ_BATCH_ROWS = 4096


class InputError(ValueError):
    """The input glob or its columns cannot be read as asked."""


def _fs(url: str) -> tuple[Any, str]:
    import fsspec

    return fsspec.core.url_to_fs(url)


def _join(fs: Any, root: str, name: str) -> str:
    return fs.unstrip_protocol(f"{root.rstrip('/')}/{name}")


def expand_glob(pattern: str) -> list[str]:
    """Sorted full URLs of the files matching ``pattern``."""
    fs, path = _fs(pattern)
    matches = fs.glob(path) if any(c in path for c in "*?[") else ([path] if fs.exists(path) else [])
    return sorted(fs.unstrip_protocol(m) for m in matches if not fs.isdir(m))


@dataclass(frozen=True)
class Columns:
    """Which input columns hold the id and the text (or the question and its context)."""

    id: str = "id"
    text: str = "text"
    text_pair: str | None = None

    @property
    def names(self) -> list[str]:
        return [c for c in (self.id, self.text, self.text_pair) if c is not None]


def check_input(pattern: str, columns: Columns) -> list[str]:
    """Launcher-side check: the glob matches files and the first one has the columns."""
    files = expand_glob(pattern)
    if not files:
        raise InputError(f"Input {pattern!r} matches no files.")
    fs, path = _fs(files[0])
    try:
        with fs.open(path, "rb") as f:
            names = pq.ParquetFile(f).schema_arrow.names
    except Exception as exc:
        raise InputError(f"Input file {files[0]!r} is not readable Parquet: {exc}") from exc
    missing = [c for c in columns.names if c not in names]
    if missing:
        raise InputError(
            f"Input {files[0]!r} has no column {missing[0]!r}; its columns are: {', '.join(names)}."
        )
    return files


def _text_or_reason(value: Any) -> tuple[str | None, str | None]:
    """The text, or (None, reason code) when the value cannot be a model input."""
    if value is None:
        return None, "null_text"
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            return None, "invalid_utf8"
    if not isinstance(value, str):
        return None, "not_a_string"
    if not value.strip() or not any(unicodedata.category(c)[0] not in "CZ" for c in value):
        return None, "empty_text"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return None, "invalid_utf8"  # lone surrogates
    return value, None


class _ListRowGroupsFn(beam.DoFn):
    def process(self, url: str) -> Iterator[Any]:
        fs, path = _fs(url)
        try:
            with fs.open(path, "rb") as f:
                n = pq.ParquetFile(f).num_row_groups
        except Exception as exc:
            metrics.inc(metrics.READ)
            metrics.inc(metrics.DEAD_LETTERED)
            yield beam.pvalue.TaggedOutput(
                DEAD_LETTER, dead_letter(None, "read", "unreadable_file", f"{type(exc).__name__}: {exc}", url))
            return
        for group in range(n):
            yield url, group


class _ReadRowGroupFn(beam.DoFn):
    def __init__(self, columns: Columns):
        self._columns = columns

    def process(self, element: tuple[str, int]) -> Iterator[Any]:
        url, group = element
        fs, path = _fs(url)
        cols = self._columns
        try:
            with fs.open(path, "rb") as f:
                table = pq.ParquetFile(f).read_row_group(group, columns=cols.names)
        except Exception as exc:
            metrics.inc(metrics.READ)
            metrics.inc(metrics.DEAD_LETTERED)
            yield beam.pvalue.TaggedOutput(DEAD_LETTER, dead_letter(
                None, "read", "unreadable_file", f"row group {group}: {type(exc).__name__}: {exc}", url))
            return
        for batch in table.to_batches(max_chunksize=READ_BATCH_ROWS):
            yield from self._documents(batch)

    def _documents(self, batch: pa.RecordBatch) -> Iterator[Any]:
        cols = self._columns
        ids = batch.column(cols.id).to_pylist()
        texts = _as_python(batch.column(cols.text))
        pairs = _as_python(batch.column(cols.text_pair)) if cols.text_pair else None
        metrics.inc(metrics.READ, len(ids))
        for i, raw_id in enumerate(ids):
            text, reason = _text_or_reason(texts[i])
            pair = None
            if reason is None and pairs is not None:
                pair, reason = _text_or_reason(pairs[i])
            if raw_id is None or (isinstance(raw_id, str) and not raw_id.strip()):
                reason = "missing_id"
            if reason is not None:
                metrics.inc(metrics.DEAD_LETTERED)
                yield beam.pvalue.TaggedOutput(DEAD_LETTER, dead_letter(
                    raw_id, "read", reason, _REASON_MESSAGES[reason], texts[i]))
                continue
            yield Document(str(raw_id), text, pair)


_REASON_MESSAGES = {
    "null_text": "the text is null",
    "empty_text": "the text is empty, whitespace or control characters only",
    "not_a_string": "the text is not a string",
    "invalid_utf8": "the text is not valid UTF-8",
    "missing_id": "the id is null or empty",
}


def _as_python(column: pa.Array) -> list[Any]:
    """Python values of a column; strings with invalid UTF-8 come back as bytes."""
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        try:
            return column.to_pylist()
        except (UnicodeDecodeError, pa.ArrowException):
            return column.cast(pa.binary()).to_pylist()
    return column.to_pylist()


class ReadDocuments(beam.PTransform):
    """Pipeline root -> Document (main) and dead-letter rows (``dead_letter``).

    Reads a Parquet glob in Arrow record batches, one row group per work item, so large
    files spread over workers. Rows without a usable id or text go to the dead letter.

    Example::

        read = p | ReadDocuments("gs://bucket/corpus/*.parquet", Columns(id="id", text="body"))
        docs, bad = read["documents"], read["dead_letter"]
    """

    def __init__(self, pattern: str, columns: Columns | None = None):
        super().__init__()
        self._pattern = pattern
        self._columns = columns or Columns()

    def expand(self, pbegin: beam.pvalue.PBegin) -> dict[str, beam.PCollection]:
        groups = (
            pbegin
            | "Pattern" >> beam.Create([self._pattern])
            | "ExpandGlob" >> beam.FlatMap(expand_glob)
            | "ListRowGroups" >> beam.ParDo(_ListRowGroupsFn()).with_outputs(DEAD_LETTER, main="groups")
        )
        read = (
            groups.groups
            | "SpreadRowGroups" >> beam.Reshuffle()
            | "ReadRowGroups" >> beam.ParDo(_ReadRowGroupFn(self._columns)).with_outputs(
                DEAD_LETTER, main="documents")
        )
        dead = (groups.dead_letter, read.dead_letter) | "ReadDeadLetter" >> beam.Flatten()
        return {"documents": read.documents, DEAD_LETTER: dead}


class _WriteShardFn(beam.DoFn):
    def __init__(self, temp_dir: str, prefix: str, schema: pa.Schema, rows_per_file: int):
        self._temp_dir = temp_dir
        self._prefix = prefix
        self._schema = schema
        self._rows_per_file = rows_per_file
        self._rows: list[dict] = []

    def start_bundle(self) -> None:
        self._rows = []

    def process(self, row: dict) -> Iterator[str]:
        self._rows.append(row)
        if len(self._rows) >= self._rows_per_file:
            yield self._write()

    def finish_bundle(self) -> Iterator[Any]:
        if self._rows:
            yield GlobalWindows.windowed_value(self._write())

    def _write(self) -> str:
        rows, self._rows = self._rows, []
        table = rows_to_table(rows, self._schema)
        fs, root = _fs(self._temp_dir)
        fs.makedirs(root, exist_ok=True)
        path = f"{root.rstrip('/')}/{self._prefix}-{uuid.uuid4().hex}.parquet"
        with fs.open(path, "wb") as f:
            pq.write_table(table, f, compression="zstd")
        return fs.unstrip_protocol(path)


class _FinalizeFn(beam.DoFn):
    def __init__(self, output_dir: str, temp_dir: str, prefix: str, schema: pa.Schema):
        self._output_dir = output_dir
        self._temp_dir = temp_dir
        self._prefix = prefix
        self._schema = schema

    def process(self, temp_files: list[str]) -> Iterator[str]:
        fs, root = _fs(self._output_dir)
        _, temp_root = _fs(self._temp_dir)
        sources = sorted(_fs(p)[1] for p in temp_files)
        if not sources:
            # An empty result still gets one file, so readers always find the schema.
            fs.makedirs(temp_root, exist_ok=True)
            empty = f"{temp_root.rstrip('/')}/{self._prefix}-empty.parquet"
            with fs.open(empty, "wb") as f:
                pq.write_table(self._schema.empty_table(), f)
            sources = [empty]
        n = len(sources)
        finals = [f"{root.rstrip('/')}/{self._prefix}-{i:05d}-of-{n:05d}.parquet" for i in range(n)]
        stale = set(fs.glob(f"{root.rstrip('/')}/{self._prefix}-*.parquet")) - set(finals)
        for src, dst in zip(sources, finals, strict=True):
            if fs.exists(src):  # a retried finalize finds earlier moves done
                fs.mv(src, dst)
        for path in stale:
            fs.rm(path)
        if fs.exists(temp_root):
            fs.rm(temp_root, recursive=True)
        for dst in finals:
            yield fs.unstrip_protocol(dst)


class WriteResults(beam.PTransform):
    """row dict -> final file URL: writes rows with an explicit Arrow schema to
    ``DIR/<prefix>-NNNNN-of-NNNNN.parquet``, atomically per file, replacing earlier runs' files.

    Example::

        results | WriteResults("out/", schema=EmbedTask().schema(config))
    """

    def __init__(self, output_dir: str, *, schema: pa.Schema, prefix: str = "results",
                 rows_per_file: int = 20000):
        super().__init__()
        self._output_dir = output_dir
        self._schema = schema
        self._prefix = prefix
        self._rows_per_file = rows_per_file
        fs, root = _fs(output_dir)
        self._temp_dir = _join(fs, root, f".temp-{prefix}-{uuid.uuid4().hex[:12]}")

    def expand(self, rows: beam.PCollection) -> beam.PCollection:
        return (
            rows
            | "WriteShards" >> beam.ParDo(
                _WriteShardFn(self._temp_dir, self._prefix, self._schema, self._rows_per_file))
            | "CollectShards" >> beam.combiners.ToList()
            | "Finalize" >> beam.ParDo(
                _FinalizeFn(self._output_dir, self._temp_dir, self._prefix, self._schema))
        )


def count_rows(output_dir: str, prefix: str) -> int:
    """Rows in the finalized ``prefix`` files of ``output_dir`` (from Parquet footers)."""
    fs, root = _fs(output_dir)
    total = 0
    for path in fs.glob(f"{root.rstrip('/')}/{prefix}-*-of-*.parquet"):
        with fs.open(path, "rb") as f:
            total += pq.ParquetFile(f).metadata.num_rows
    return total


def read_table(output_dir: str, prefix: str = "results", columns: list[str] | None = None) -> pa.Table:
    """All finalized ``prefix`` files of ``output_dir`` as one Arrow table."""
    fs, root = _fs(output_dir)
    tables = []
    for path in sorted(fs.glob(f"{root.rstrip('/')}/{prefix}-*-of-*.parquet")):
        with fs.open(path, "rb") as f:
            tables.append(pq.read_table(f, columns=columns))
    return pa.concat_tables(tables) if tables else pa.table({})
