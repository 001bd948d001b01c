"""ReadDocuments: a Parquet glob (local, ``gs://``, any fsspec URL) to Documents, one row group
per work item, in Arrow record batches; rows that cannot be documents go to the dead letter
with the reason codes of :mod:`bertbeam.beam.validation`."""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from bertbeam.beam.validation import Unconvertible, check_document, id_key
from bertbeam.core import metrics
from bertbeam.core.deadletter import DEAD_LETTER, DeadLetter, Reason, emit
from bertbeam.core.records import Document, DocumentChunk
from bertbeam.filesystems import expand_glob, url_to_fs

READ_BATCH_ROWS = 4096


class InputError(ValueError):
    """The input glob or its columns cannot be read as asked."""


@dataclass(frozen=True)
class Columns:
    """Which input columns hold the id and the text (or the question and its context)."""

    id: str = "id"
    text: str = "text"
    text_pair: str | None = None
    carry: tuple[str, ...] = ()
    """Input columns of any type passed through unchanged into each document's result row."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "carry", tuple(self.carry))

    @property
    def names(self) -> list[str]:
        read = [c for c in (self.id, self.text, self.text_pair) if c is not None]
        return read + [c for c in self.carry if c not in read]


def check_input(pattern: str, columns: Columns) -> list[str]:
    """Launcher-side check: the glob matches files and the first readable one has the columns.

    Unreadable files are left to the pipeline, which reports their rows in the dead letter;
    only a glob whose files are all unreadable fails here.
    """
    files = expand_glob(pattern)
    if not files:
        fs, path = url_to_fs(pattern)
        if not any(c in path for c in "*?[") and fs.isdir(path):
            raise InputError(f"Input {pattern!r} is a directory, which matches no files; pass "
                             f"a glob such as '{pattern.rstrip('/')}/*.parquet'.")
        raise InputError(f"Input {pattern!r} matches no files.")
    url, schema = _first_schema(pattern, files)
    missing = [c for c in columns.names if c not in schema.names]
    if missing:
        raise InputError(
            f"Input {url!r} has no column {missing[0]!r}; its columns are: {', '.join(schema.names)}."
        )
    return files


def carried_fields(pattern: str, columns: Columns) -> list[pa.Field]:
    """The Arrow fields of the carried columns, as the first readable file of ``pattern``
    declares them (nullable: a later file may hold nulls)."""
    if not columns.carry:
        return []
    _, schema = _first_schema(pattern, expand_glob(pattern))
    return [schema.field(c).with_nullable(True) for c in columns.carry]


def _first_schema(pattern: str, files: list[str]) -> tuple[str, pa.Schema]:
    """The URL and Arrow schema of the first file of ``files`` whose footer reads."""
    errors = []
    for url in files:
        fs, path = url_to_fs(url)
        try:
            with fs.open(path, "rb") as f:
                return url, pq.ParquetFile(f).schema_arrow
        except Exception as exc:
            errors.append(f"{url}: {exc}")
    raise InputError(f"No file of {pattern!r} is readable Parquet; first error: {errors[0]}")


def count_input_rows(pattern: str) -> int:
    """Input units of a glob, from Parquet footers: the rows of every file whose footer reads,
    plus one per file whose footer does not (the unit its dead-letter row stands for).

    This is the ``read`` side of the accounting invariant, counted independently of the
    pipeline, so a reader that skipped rows could not hide it.
    """
    total = 0
    for url in expand_glob(pattern):
        fs, path = url_to_fs(url)
        try:
            with fs.open(path, "rb") as f:
                total += pq.ParquetFile(f).metadata.num_rows
        except Exception:
            total += 1
    return total


def _read_dead_letter(doc_id: Any, reason: Reason, message: str | None = None,
                      value: Any = None) -> Any:
    """Counts one input unit as read and dead-lettered; returns its tagged dead letter."""
    metrics.inc(metrics.READ)
    return DeadLetter.of(doc_id, reason, message, value=value).tagged()


class _Footers:
    """Parsed Parquet footers of the files a DoFn instance reads, each parsed once: a work
    item is one row group, and re-parsing the footer of a file of G row groups for each of
    them costs O(G²). Held per DoFn instance, so per worker and per pipeline run."""

    MAX_FILES = 64

    def __init__(self) -> None:
        self._cache: dict[str, pq.FileMetaData] = {}

    def get(self, url: str) -> pq.FileMetaData:
        footer = self._cache.get(url)
        if footer is None:
            fs, path = url_to_fs(url)
            with fs.open(path, "rb") as f:
                footer = pq.ParquetFile(f).metadata
            if len(self._cache) >= self.MAX_FILES:
                self._cache.pop(next(iter(self._cache)))
            self._cache[url] = footer
        return footer

    def read_group(self, url: str, group: int, columns: list[str]) -> pa.Table:
        footer = self.get(url)
        fs, path = url_to_fs(url)
        with fs.open(path, "rb") as f:
            return pq.ParquetFile(f, metadata=footer).read_row_group(group, columns=columns)


class ListRowGroupsFn(beam.DoFn):
    def setup(self) -> None:
        self._footers = _Footers()

    def process(self, url: str) -> Iterator[Any]:
        try:
            n = self._footers.get(url).num_row_groups
        except Exception as exc:
            # The footer is unreadable, so the number of rows lost is unknown: one unit.
            yield _read_dead_letter(None, Reason.UNREADABLE_FILE, f"{type(exc).__name__}: {exc}", url)
            return
        for group in range(n):
            yield url, group


ID_BUCKETS = 16
"""The id keys duplicates are looked for under: each bucket's ids meet on one worker."""


class _RowGroupIdsFn(beam.DoFn):
    """(url, group) -> (bucket, (url, group, ids, rows)) for each id bucket of the row group:
    its ids (the id column alone) and their row numbers, a few elements per row group, not
    one per row."""

    def __init__(self, id_column: str):
        self._id_column = id_column

    def setup(self) -> None:
        self._footers = _Footers()

    def process(self, element: tuple[str, int]) -> Iterator[tuple[int, tuple]]:
        url, group = element
        try:
            column = self._footers.read_group(url, group, [self._id_column]).column(0)
        except Exception:
            return iter(())  # the main read reports this row group
        return self._buckets(url, group, column)

    @staticmethod
    def _buckets(url: str, group: int, column: pa.ChunkedArray) -> Iterator[tuple[int, tuple]]:
        keys = _id_keys(column)
        rows = np.flatnonzero(np.fromiter((k is not None for k in keys), bool, len(keys)))
        if len(rows) < len(keys):
            keys = [keys[i] for i in rows]
        buckets = np.fromiter((zlib.crc32(k.encode("utf-8", "surrogatepass")) for k in keys),
                              np.int64, len(keys)) % ID_BUCKETS
        for bucket in np.unique(buckets).tolist():
            at = np.flatnonzero(buckets == bucket)
            yield bucket, (url, group, [keys[i] for i in at], rows[at])


class _DuplicatedIds(beam.CombineFn):
    """The ids of a bucket used more than once, each with its earliest (url, group, row):
    the ids gathered as lists and counted at the end in one Arrow pass."""

    def create_accumulator(self) -> list[tuple]:
        return []

    def add_input(self, acc: list[tuple], part: tuple) -> list[tuple]:
        acc.append(part)
        return acc

    def merge_accumulators(self, accs: Any) -> list[tuple]:
        return [part for acc in accs for part in acc]

    def extract_output(self, acc: list[tuple]) -> list[tuple[str, tuple]]:
        if not acc:
            return []
        ids = pa.array([k for _, _, keys, _ in acc for k in keys], pa.string())
        counts = pc.value_counts(ids)
        repeated = counts.field("values").filter(pc.greater(counts.field("counts"), 1))
        if len(repeated) == 0:
            return []
        wanted = set(repeated.to_pylist())
        first: dict[str, tuple] = {}
        for url, group, keys, rows in acc:
            for key, row in zip(keys, rows.tolist(), strict=True):
                if key in wanted:
                    position = (url, group, row)
                    if key not in first or position < first[key]:
                        first[key] = position
        return sorted(first.items())


def _id_keys(column: pa.Array | pa.ChunkedArray) -> list[str | None]:
    """:func:`id_key` of every value of an id column; a plain string column whose ids all
    have a visible ASCII character (no blank one) passes as it is, in one conversion."""
    values = _as_python(column)
    if _is_plain_text(column) and (len(column) == 0 or bool(_visible(column).all())):
        return values
    return [id_key(raw) for raw in values]


def _is_plain_text(column: pa.Array | pa.ChunkedArray) -> bool:
    """A string column whose bytes are valid UTF-8 (Parquet readers do not check)."""
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        return False
    try:
        column.validate(full=True)
    except pa.ArrowInvalid:
        return False
    return True


VISIBLE = "[!-~]"
"""A printable ASCII character other than space: a value with one is a usable id or text."""


def _visible(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Per value: not null and holds a printable, non-space ASCII character, so that it is
    neither blank nor made of control and format characters only (the checks of
    :func:`text_or_reason` and :func:`id_key` it passes for certain)."""
    found = pc.match_substring_regex(column, VISIBLE)
    return np.asarray(pc.fill_null(found, False).to_numpy(zero_copy_only=False), dtype=bool)


class ReadRowGroupFn(beam.DoFn):
    def __init__(self, columns: Columns, chunk_size: int | None = None):
        self._columns = columns
        self._chunk_size = chunk_size

    def setup(self) -> None:
        self._footers = _Footers()

    def process(self, element: tuple[str, int], duplicates: dict[str, tuple]) -> Iterator[Any]:
        url, group = element
        try:
            names = self._footers.get(url).schema.to_arrow_schema().names
            missing = [c for c in self._columns.names if c not in names]
            table = None if missing else self._footers.read_group(url, group, self._columns.names)
        except Exception as exc:
            yield from self._lost_group(url, group, exc)
            return
        if missing:
            # Every file is checked where it is read: a later file of the glob may differ.
            message = f"{url} has no column {missing[0]!r}; its columns are: {', '.join(names)}"
            yield from self._lost_group(url, group, message=message, reason=Reason.MISSING_COLUMN)
            return
        row = 0
        for batch in table.to_batches(max_chunksize=READ_BATCH_ROWS):
            yield from self._documents(batch, url, group, row, duplicates)
            row += batch.num_rows

    def _lost_group(self, url: str, group: int, exc: Exception | None = None, *,
                    message: str | None = None,
                    reason: Reason = Reason.UNREADABLE_FILE) -> Iterator[Any]:
        """Reports every row of a row group that cannot be read: by id when the ids can still
        be read, else one id-less row per row the footer says the group holds."""
        message = (message or f"row group {group} of {url}: {type(exc).__name__}: {exc}")[:500]
        try:
            ids = _as_python(self._footers.read_group(url, group, [self._columns.id]).column(0))
        except Exception:
            ids = [None] * self._footers.get(url).row_group(group).num_rows
        for raw in ids:
            yield _read_dead_letter(id_key(raw), reason, message, url)

    def _documents(self, batch: pa.RecordBatch, url: str, group: int, row0: int,
                   duplicates: dict[str, tuple]) -> Iterator[Any]:
        """The checked Documents of ``batch`` (and the dead letters of its bad rows), or with
        ``chunk_size`` DocumentChunks of up to that many of them, in row order.

        Rows of plain UTF-8 string columns with a visible character in each value (nearly
        all of them) are found good column by column; only the others, and ids used more
        than once, go through the checks one row at a time."""
        cols = self._columns
        ids = _as_python(batch.column(cols.id))
        texts = _as_python(batch.column(cols.text))
        pairs = _as_python(batch.column(cols.text_pair)) if cols.text_pair else None
        carried = {c: _as_python(batch.column(c)) for c in cols.carry}
        with_pair = pairs is not None
        good = np.ones(batch.num_rows, dtype=bool)
        for name in (cols.id, cols.text, cols.text_pair):
            if name is not None:
                column = batch.column(name)
                good &= _visible(column) if _is_plain_text(column) else False
        if duplicates:
            good &= np.fromiter((i not in duplicates for i in ids), bool, len(ids))
        dead_rows = 0
        for i in np.flatnonzero(~good).tolist():
            raw_id = ids[i]
            doc_id = id_key(raw_id)
            first = duplicates.get(doc_id) if doc_id is not None else None
            if first is not None and first != (url, group, row0 + i):
                dead_rows += 1
                yield _read_dead_letter(doc_id, Reason.DUPLICATE_ID, (
                    f"id already used by row {first[2]} of row group {first[1]} of {first[0]}; "
                    "the first occurrence is kept"), texts[i])
                continue
            checked = check_document(raw_id, texts[i], pairs[i] if with_pair else None,
                                     with_pair=with_pair)
            if isinstance(checked, DeadLetter):
                yield emit(checked)
                continue
            good[i] = True
            ids[i], texts[i] = checked.id, checked.text
            if with_pair:
                pairs[i] = checked.text_pair
        # Every row is read once (duplicates counted theirs in _read_dead_letter).
        metrics.inc(metrics.READ, batch.num_rows - dead_rows)
        rows = np.flatnonzero(good).tolist()
        if self._chunk_size is None:
            for i in rows:
                yield Document(ids[i], texts[i], pairs[i] if with_pair else None,
                               {c: values[i] for c, values in carried.items()} if carried else None)
            return
        everything = len(rows) == batch.num_rows
        for start in range(0, len(rows), self._chunk_size):
            part = rows[start:start + self._chunk_size]

            def take(values: list[Any], part: list[int] = part) -> list[Any]:
                return values[part[0]:part[-1] + 1] if everything else [values[i] for i in part]

            yield DocumentChunk(take(ids), take(texts), take(pairs) if with_pair else None,
                                {c: take(values) for c, values in carried.items()} or None)


def _as_python(column: pa.Array) -> list[Any]:
    """Python values of a column, never failing on one value: strings with invalid UTF-8
    (dictionary-encoded ones included) come back as bytes, any other value Arrow cannot
    convert (a date out of range) as an :class:`Unconvertible`."""
    try:
        return column.to_pylist()
    except Exception:  # noqa: BLE001 - one bad value must not fail the row group
        pass
    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        return column.cast(pa.large_binary()).to_pylist()
    values: list[Any] = []
    for i in range(len(column)):
        try:
            values.append(column[i].as_py())
        except Exception as exc:  # noqa: BLE001
            values.append(Unconvertible(f"{type(exc).__name__}: {exc}"))
    return values


class ReadDocuments(beam.PTransform):
    """Pipeline root -> Document (main; with ``chunk_size``, DocumentChunks of up to that
    many documents of one row group) and dead-letter rows (``dead_letter``).

    Reads a Parquet glob in Arrow record batches, one row group per work item, so large
    files spread over workers. Rows without a usable id or text go to the dead letter with a
    reason code; of rows sharing an id, the first (by file, row group, row) is kept and the
    others are dead-lettered as ``duplicate_id``.

    Example::

        read = p | ReadDocuments("gs://bucket/corpus/*.parquet", Columns(id="id", text="body"))
        docs, bad = read["documents"], read["dead_letter"]
        chunks = (p | ReadDocuments("corpus/*.parquet", chunk_size=256))["documents"]
    """

    def __init__(self, pattern: str, columns: Columns | None = None, *,
                 chunk_size: int | None = None):
        super().__init__()
        self._pattern = pattern
        self._columns = columns or Columns()
        self._chunk_size = chunk_size

    def expand(self, pbegin: beam.pvalue.PBegin) -> dict[str, beam.PCollection]:
        groups = (
            pbegin
            | "Pattern" >> beam.Create([self._pattern])
            | "ExpandGlob" >> beam.FlatMap(expand_glob)
            | "ListRowGroups" >> beam.ParDo(ListRowGroupsFn()).with_outputs(DEAD_LETTER, main="groups")
        )
        spread = groups.groups | "SpreadRowGroups" >> beam.Reshuffle()
        # Duplicate ids are found from the id column alone (a cheap columnar pass), so that
        # the documents themselves stream without a shuffle.
        duplicates = (
            spread
            | "ReadIds" >> beam.ParDo(_RowGroupIdsFn(self._columns.id))
            | "CountIds" >> beam.CombinePerKey(_DuplicatedIds())
            | "DuplicatedIds" >> beam.FlatMapTuple(lambda bucket, duplicated: duplicated)
        )
        read = spread | "ReadRowGroups" >> beam.ParDo(
            ReadRowGroupFn(self._columns, self._chunk_size),
            duplicates=beam.pvalue.AsDict(duplicates)
        ).with_output_types(DocumentChunk if self._chunk_size else Document).with_outputs(
            DEAD_LETTER, main="documents")
        dead = (groups.dead_letter, read.dead_letter) | "ReadDeadLetter" >> beam.Flatten()
        return {"documents": read.documents, DEAD_LETTER: dead}
