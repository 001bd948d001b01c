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

from bertbeam import metrics
from bertbeam.buffering import BufferedDoFn
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
    """Launcher-side check: the glob matches files and the first readable one has the columns.

    Unreadable files are left to the pipeline, which reports their rows in the dead letter;
    only a glob whose files are all unreadable fails here.
    """
    files = expand_glob(pattern)
    if not files:
        raise InputError(f"Input {pattern!r} matches no files.")
    errors = []
    for url in files:
        fs, path = _fs(url)
        try:
            with fs.open(path, "rb") as f:
                names = pq.ParquetFile(f).schema_arrow.names
        except Exception as exc:
            errors.append(f"{url}: {exc}")
            continue
        missing = [c for c in columns.names if c not in names]
        if missing:
            raise InputError(
                f"Input {url!r} has no column {missing[0]!r}; its columns are: {', '.join(names)}."
            )
        return files
    raise InputError(f"No file of {pattern!r} is readable Parquet; first error: {errors[0]}")


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


def _read_dead_letter(doc_id: Any, reason: str, message: str, value: Any = None) -> Any:
    """Counts one input unit as read and dead-lettered, and returns its tagged dead-letter row."""
    metrics.inc(metrics.READ)
    metrics.inc(metrics.DEAD_LETTERED)
    return beam.pvalue.TaggedOutput(DEAD_LETTER, dead_letter(doc_id, "read", reason, message, value))


def _id_key(raw: Any) -> str | None:
    """The string id of a row, or None when it has none (null or blank)."""
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return None
    return raw if isinstance(raw, str) else str(raw)


def _read_group(url: str, group: int, columns: list[str]) -> pa.Table:
    fs, path = _fs(url)
    with fs.open(path, "rb") as f:
        return pq.ParquetFile(f).read_row_group(group, columns=columns)


class _ListRowGroupsFn(beam.DoFn):
    def process(self, url: str) -> Iterator[Any]:
        fs, path = _fs(url)
        try:
            with fs.open(path, "rb") as f:
                n = pq.ParquetFile(f).num_row_groups
        except Exception as exc:
            # The footer is unreadable, so the number of rows lost is unknown: one unit.
            yield _read_dead_letter(None, "unreadable_file", f"{type(exc).__name__}: {exc}", url)
            return
        for group in range(n):
            yield url, group


class _RowGroupIdsFn(beam.DoFn):
    """(url, group) -> (id, position) for every row with an id; reads the id column only."""

    def __init__(self, id_column: str):
        self._id_column = id_column

    def process(self, element: tuple[str, int]) -> Iterator[tuple[str, tuple]]:
        url, group = element
        try:
            ids = _read_group(url, group, [self._id_column]).column(0).to_pylist()
        except Exception:
            ids = []  # the main read reports this row group
        for row, raw in enumerate(ids):
            key = _id_key(raw)
            if key is not None:
                yield key, (url, group, row)


class _FirstPosition(beam.CombineFn):
    """(earliest position, count) of an id across the corpus."""

    def create_accumulator(self) -> tuple[Any, int]:
        return None, 0

    def add_input(self, acc: tuple[Any, int], position: tuple) -> tuple[Any, int]:
        first, count = acc
        return (position if first is None or position < first else first), count + 1

    def merge_accumulators(self, accs: Any) -> tuple[Any, int]:
        firsts = [a[0] for a in accs if a[0] is not None]
        return (min(firsts) if firsts else None), sum(a[1] for a in accs)

    def extract_output(self, acc: tuple[Any, int]) -> tuple[Any, int]:
        return acc


class _ReadRowGroupFn(beam.DoFn):
    def __init__(self, columns: Columns):
        self._columns = columns

    def process(self, element: tuple[str, int], duplicates: dict[str, tuple]) -> Iterator[Any]:
        url, group = element
        try:
            table = _read_group(url, group, self._columns.names)
        except Exception as exc:
            yield from self._lost_group(url, group, exc)
            return
        row = 0
        for batch in table.to_batches(max_chunksize=READ_BATCH_ROWS):
            yield from self._documents(batch, url, group, row, duplicates)
            row += batch.num_rows

    def _lost_group(self, url: str, group: int, exc: Exception) -> Iterator[Any]:
        """Reports every row of an unreadable row group: by id when the ids can still be read,
        else one id-less row per row the footer says the group holds."""
        message = f"row group {group} of {url}: {type(exc).__name__}: {exc}"[:500]
        try:
            ids = _read_group(url, group, [self._columns.id]).column(0).to_pylist()
        except Exception:
            fs, path = _fs(url)
            with fs.open(path, "rb") as f:
                ids = [None] * pq.ParquetFile(f).metadata.row_group(group).num_rows
        for raw in ids:
            yield _read_dead_letter(_id_key(raw), "unreadable_file", message, url)

    def _documents(self, batch: pa.RecordBatch, url: str, group: int, row0: int,
                   duplicates: dict[str, tuple]) -> Iterator[Any]:
        cols = self._columns
        ids = batch.column(cols.id).to_pylist()
        texts = _as_python(batch.column(cols.text))
        pairs = _as_python(batch.column(cols.text_pair)) if cols.text_pair else None
        for i, raw_id in enumerate(ids):
            doc_id = _id_key(raw_id)
            if doc_id is None:
                yield _read_dead_letter(raw_id, "missing_id", _REASON_MESSAGES["missing_id"], texts[i])
                continue
            first = duplicates.get(doc_id)
            if first is not None and first != (url, group, row0 + i):
                yield _read_dead_letter(doc_id, "duplicate_id", (
                    f"id already used by row {first[2]} of row group {first[1]} of {first[0]}; "
                    "the first occurrence is kept"), texts[i])
                continue
            text, reason = _text_or_reason(texts[i])
            pair = None
            if reason is None and pairs is not None:
                pair, reason = _text_or_reason(pairs[i])
            if reason is not None:
                yield _read_dead_letter(doc_id, reason, _REASON_MESSAGES[reason], texts[i])
                continue
            metrics.inc(metrics.READ)
            yield Document(doc_id, text, pair)


_REASON_MESSAGES = {
    "null_text": "the text is null",
    "empty_text": "the text is empty, whitespace or control characters only",
    "not_a_string": "the text is not a string",
    "invalid_utf8": "the text is not valid UTF-8",
    "missing_id": "the id is null or empty",
}
"""Reason codes of the read stage; ``duplicate_id`` and ``unreadable_file`` carry their own text."""


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
    files spread over workers. Rows without a usable id or text go to the dead letter with a
    reason code; of rows sharing an id, the first (by file, row group, row) is kept and the
    others are dead-lettered as ``duplicate_id``.

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
        spread = groups.groups | "SpreadRowGroups" >> beam.Reshuffle()
        # Duplicate ids are found from the id column alone (a cheap columnar pass), so that
        # the documents themselves stream without a shuffle.
        duplicates = (
            spread
            | "ReadIds" >> beam.ParDo(_RowGroupIdsFn(self._columns.id))
            | "CountIds" >> beam.CombinePerKey(_FirstPosition())
            | "DuplicatedIds" >> beam.FlatMapTuple(
                lambda key, acc: [(key, acc[0])] if acc[1] > 1 else [])
        )
        read = spread | "ReadRowGroups" >> beam.ParDo(
            _ReadRowGroupFn(self._columns), duplicates=beam.pvalue.AsDict(duplicates)
        ).with_outputs(DEAD_LETTER, main="documents")
        dead = (groups.dead_letter, read.dead_letter) | "ReadDeadLetter" >> beam.Flatten()
        return {"documents": read.documents, DEAD_LETTER: dead}


class _WriteShardFn(BufferedDoFn):
    """Writes rows ``rows_per_file`` at a time to a new temporary Parquet file; yields its URL."""

    def __init__(self, temp_dir: str, prefix: str, schema: pa.Schema, rows_per_file: int):
        super().__init__(rows_per_file)
        self._temp_dir = temp_dir
        self._prefix = prefix
        self._schema = schema

    def flush(self, rows: list[dict]) -> Iterator[str]:
        yield self._write(rows)

    def _write(self, rows: list[dict]) -> str:
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


def count_input_rows(pattern: str) -> int:
    """Input units of a glob, from Parquet footers: the rows of every file whose footer reads,
    plus one per file whose footer does not (the unit its dead-letter row stands for).

    This is the ``read`` side of the accounting invariant, counted independently of the
    pipeline, so a reader that skipped rows could not hide it.
    """
    total = 0
    for url in expand_glob(pattern):
        fs, path = _fs(url)
        try:
            with fs.open(path, "rb") as f:
                total += pq.ParquetFile(f).metadata.num_rows
        except Exception:
            total += 1
    return total


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
