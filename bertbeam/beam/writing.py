"""WriteResults: rows to typed Parquet files through fsspec, committed atomically.

Sinks stream each bundle into temporary files under ``DIR/.temp-<prefix>-<run>/``, a row
group at a time (a worker holds one row group, not a file), and a single finalize step
renames the committed files to ``DIR/<prefix>-NNNNN-of-NNNNN.parquet``: a retried bundle's
lost attempt is never renamed, so retries cannot duplicate rows.

Finalize replaces only files bertbeam wrote: each commit lists its files in
``DIR/_MANIFEST-<prefix>.json``, and the files of earlier runs that a new commit removes are
those its manifest lists (and only names of the exact form above). A file with such a name
that no manifest lists belongs to someone else: the write refuses to start rather than mix
it with its results or delete it.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import uuid
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.transforms.window import GlobalWindows

from bertbeam.beam.buffering import BufferedDoFn
from bertbeam.core.records import rows_to_table
from bertbeam.filesystems import join, url_to_fs, write_json_atomically

PREFIXES = ("results", "dead_letter")
"""The file prefixes a bertbeam job writes."""

ROW_GROUP_ROWS = 4096
"""Rows per Parquet row group of the results (fewer where ``rows_per_file`` is smaller)."""
ROW_GROUP_BYTES = 64 << 20
"""A row group is written early once its rows hold this much (long kept texts)."""


class OutputConflictError(ValueError):
    """The output directory holds files with bertbeam's names that no bertbeam run listed."""


def shard_name(prefix: str, index: int, count: int) -> str:
    """The final name of shard ``index`` of ``count``: ``<prefix>-NNNNN-of-NNNNN.parquet``."""
    return f"{prefix}-{index:05d}-of-{count:05d}.parquet"


def is_shard_name(prefix: str, name: str) -> bool:
    """Whether ``name`` (a base name) is exactly a name :func:`shard_name` gives ``prefix``."""
    return re.fullmatch(rf"{re.escape(prefix)}-\d{{5}}-of-\d{{5}}\.parquet", name) is not None


def manifest_name(prefix: str) -> str:
    return f"_MANIFEST-{prefix}.json"


def _base(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]


def _listed(fs: Any, root: str, prefix: str) -> set[str] | None:
    """Base names the manifest of ``prefix`` lists (shard names only), or None without one."""
    path = f"{root.rstrip('/')}/{manifest_name(prefix)}"
    if not fs.exists(path):
        return None
    with fs.open(path, "r") as f:
        manifest = json.load(f)
    return {n for n in manifest.get("files", []) if is_shard_name(prefix, n)}


def _present(fs: Any, root: str, prefix: str) -> set[str]:
    """Base names of the shard-named files of ``prefix`` in ``root``."""
    try:
        paths = fs.glob(f"{root.rstrip('/')}/{prefix}-*.parquet")
    except FileNotFoundError:
        return set()
    return {_base(p) for p in paths if is_shard_name(prefix, _base(p))}


def foreign_files(output_dir: str, prefix: str) -> list[str]:
    """Files of ``output_dir`` named like ``prefix`` shards that no bertbeam manifest lists."""
    fs, root = url_to_fs(output_dir)
    return sorted(_present(fs, root, prefix) - (_listed(fs, root, prefix) or set()))


def check_no_foreign_files(output_dir: str, prefixes: tuple[str, ...] = PREFIXES) -> None:
    """Refuses an output directory whose shard-named files bertbeam did not list: replacing
    them could delete someone's data, keeping them would mix two runs' results."""
    for prefix in prefixes:
        foreign = foreign_files(output_dir, prefix)
        if foreign:
            raise _conflict(output_dir, prefix, foreign)


def _conflict(output_dir: str, prefix: str, foreign: list[str]) -> OutputConflictError:
    return OutputConflictError(
        f"Output {output_dir!r} holds {len(foreign)} file(s) named like bertbeam's {prefix} "
        f"files that no bertbeam run listed in {manifest_name(prefix)} (first: {foreign[0]!r}); "
        "bertbeam neither deletes nor mixes them: move them away or choose an empty --output.")


def committed_files(output_dir: str, prefix: str) -> list[str]:
    """Full paths of the ``prefix`` files of the last commit into ``output_dir``: those its
    manifest lists, else (no manifest) every shard-named file."""
    fs, root = url_to_fs(output_dir)
    listed = _listed(fs, root, prefix)
    names = _present(fs, root, prefix) if listed is None else listed
    return [f"{root.rstrip('/')}/{n}" for n in sorted(names)]


class _WriteShardFn(BufferedDoFn):
    """Streams elements (record batches of ``schema``, or single rows) into temporary Parquet
    files of about ``rows_per_file`` rows, a row group at a time, and yields each file's URL
    once it is closed (when full, and at the end of the bundle).

    It holds one row group at most (``row_group_rows`` rows or ``ROW_GROUP_BYTES``), not a
    file's worth: a worker's memory does not grow with ``rows_per_file`` or the corpus.
    """

    def __init__(self, temp_dir: str, prefix: str, schema: pa.Schema, rows_per_file: int,
                 row_group_rows: int = ROW_GROUP_ROWS):
        super().__init__(min(row_group_rows, rows_per_file))
        self._temp_dir = temp_dir
        self._prefix = prefix
        self._schema = schema
        self._rows_per_file = rows_per_file
        self._file: _ShardFile | None = None
        self._held_bytes = 0

    def weight(self, element: Any) -> int:
        return element.num_rows if isinstance(element, pa.RecordBatch) else 1

    def start_bundle(self) -> None:
        self._abandon()  # a file left open by a failed bundle is the retry's to replace
        self._held_bytes = 0
        super().start_bundle()

    def process(self, element: Any) -> Iterator[str]:
        if isinstance(element, pa.RecordBatch):
            self._held_bytes += element.nbytes
        yield from super().process(element)
        if self._held_bytes >= ROW_GROUP_BYTES:  # long kept texts: a row group early
            yield from self._drain()

    def flush(self, elements: list[Any]) -> Iterator[str]:
        self._held_bytes = 0
        self._write(self._table(elements))
        if self._file is not None and self._file.rows >= self._rows_per_file:
            yield self._close()

    def finish_bundle(self) -> Iterator[Any]:
        yield from super().finish_bundle()
        if self._file is not None:
            yield GlobalWindows.windowed_value(self._close())

    def teardown(self) -> None:
        self._abandon()

    def _close(self) -> str:
        file, self._file = self._file, None
        return file.close()

    def _table(self, elements: list[Any]) -> pa.Table:
        batches = [e for e in elements if isinstance(e, pa.RecordBatch)]
        rows = [e for e in elements if not isinstance(e, pa.RecordBatch)]
        table = pa.Table.from_batches(
            [b.cast(self._schema) if b.schema != self._schema else b for b in batches],
            schema=self._schema)
        if rows:
            table = pa.concat_tables([table, rows_to_table(rows, self._schema)])
        return table

    def _write(self, table: pa.Table) -> None:
        """Writes ``table`` as one row group of the open file (opening one if none is)."""
        if self._file is None:
            self._file = _ShardFile(self._temp_dir, self._prefix, self._schema)
        try:
            self._file.write(table)
        except BaseException:
            self._abandon()
            raise

    def _abandon(self) -> None:
        file, self._file = self._file, None
        if file is not None:
            file.abandon()


class _ShardFile:
    """One temporary Parquet file being written, a row group per :meth:`write`.

    Row groups are written behind, on a thread of the file's own: pyarrow encodes and
    compresses without holding Python's lock, so the pipeline's main thread gathers the next
    row group meanwhile (issue 24). One write is in flight at most; its error is raised by
    the next :meth:`write` or by :meth:`close`."""

    def __init__(self, temp_dir: str, prefix: str, schema: pa.Schema):
        self._fs, root = url_to_fs(temp_dir)
        self._fs.makedirs(root, exist_ok=True)
        self._path = f"{root.rstrip('/')}/{prefix}-{uuid.uuid4().hex}.parquet"
        self._stream = self._fs.open(self._path, "wb")
        self._writer = pq.ParquetWriter(self._stream, schema, **parquet_options(schema))
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="bertbeam-parquet")
        self._pending: Future | None = None
        self.rows = 0

    def write(self, table: pa.Table) -> None:
        """Queues ``table`` as the file's next row group, once the previous one is written."""
        self._wait()
        self._pending = self._thread.submit(self._writer.write_table, table,
                                            row_group_size=max(1, table.num_rows))
        self.rows += table.num_rows

    def _wait(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def close(self) -> str:
        """Finishes the file and returns its URL; a failed close leaves no partial file."""
        try:
            self._wait()
            self._writer.close()
            self._stream.close()
        except BaseException:
            self.abandon()
            raise
        self._thread.shutdown(wait=False)
        return self._fs.unstrip_protocol(self._path)

    def abandon(self) -> None:
        """Closes and removes the file, ignoring errors: its rows will be written again."""
        with contextlib.suppress(Exception):  # the write in flight ends before the file closes
            self._wait()
        self._thread.shutdown(wait=True)
        for close in (self._writer.close, self._stream.close):
            with contextlib.suppress(Exception):  # best effort on a file being thrown away
                close()
        with contextlib.suppress(OSError):
            if self._fs.exists(self._path):
                self._fs.rm(self._path)


def parquet_options(schema: pa.Schema) -> dict[str, Any]:
    """The Parquet writer options of every file bertbeam writes: zstd, page checksums
    (``--previous`` verifies them) and dictionary encoding for every column but the
    floating-point ones. Embeddings and scores almost never repeat, so a dictionary of
    them only costs a hash per value before the writer falls back to plain encoding: it
    took half the writing time of embedding results and left the files larger (issue 24)."""
    return {"compression": "zstd", "write_page_checksum": True,
            "use_dictionary": _dictionary_columns(schema)}


def _dictionary_columns(schema: pa.Schema) -> list[str]:
    """The Parquet leaf columns of ``schema`` (``labels.list.element.label``) that are not
    floating point, as Parquet itself lays them out (from the footer of an empty file)."""
    buffer = io.BytesIO()
    pq.write_table(schema.empty_table(), buffer)
    leaves = pq.ParquetFile(io.BytesIO(buffer.getvalue())).schema
    return [leaves.column(i).path for i in range(len(leaves))
            if leaves.column(i).physical_type not in ("FLOAT", "DOUBLE")]


def write_table(fs: Any, path: str, table: pa.Table) -> None:
    """Writes ``table`` to ``path``; a failed write (a full disk) leaves no partial file."""
    try:
        with fs.open(path, "wb") as f:
            pq.write_table(table, f, **parquet_options(table.schema))
    except BaseException:
        try:
            if fs.exists(path):
                fs.rm(path)
        except OSError:
            pass
        raise


class _FinalizeFn(beam.DoFn):
    def __init__(self, output_dir: str, temp_dir: str, prefix: str, schema: pa.Schema):
        self._output_dir = output_dir
        self._temp_dir = temp_dir
        self._prefix = prefix
        self._schema = schema

    def process(self, temp_files: list[str]) -> Iterator[str]:
        fs, root = url_to_fs(self._output_dir)
        _, temp_root = url_to_fs(self._temp_dir)
        sources = sorted(url_to_fs(p)[1] for p in temp_files)
        if not sources:
            # An empty result still gets one file, so readers always find the schema.
            fs.makedirs(temp_root, exist_ok=True)
            empty = f"{temp_root.rstrip('/')}/{self._prefix}-empty.parquet"
            write_table(fs, empty, self._schema.empty_table())
            sources = [empty]
        n = len(sources)
        names = [shard_name(self._prefix, i, n) for i in range(n)]
        owned = _listed(fs, root, self._prefix) or set()
        foreign = _present(fs, root, self._prefix) - owned
        if foreign:
            raise _conflict(self._output_dir, self._prefix, sorted(foreign))
        # Listed before they exist: a finalize that dies part-way leaves every file it may
        # have created in the manifest, for the next run to replace.
        fs.makedirs(root, exist_ok=True)
        self._write_manifest(sorted(owned | set(names)))
        for src, name in zip(sources, names, strict=True):
            if fs.exists(src):  # a retried finalize finds earlier moves done
                fs.mv(src, f"{root.rstrip('/')}/{name}")
        for name in owned - set(names):
            fs.rm(f"{root.rstrip('/')}/{name}")
        self._write_manifest(names)
        if fs.exists(temp_root):
            fs.rm(temp_root, recursive=True)
        for name in names:
            yield join(fs, root, name)

    def _write_manifest(self, names: list[str]) -> None:
        write_json_atomically(self._output_dir, manifest_name(self._prefix),
                              {"prefix": self._prefix, "files": names})


class WriteResults(beam.PTransform):
    """record batch or row -> final file URL: writes results with an explicit Arrow schema to
    ``DIR/<prefix>-NNNNN-of-NNNNN.parquet``, atomically per file, replacing the files an
    earlier bertbeam run listed in ``DIR/_MANIFEST-<prefix>.json`` (and no other file).

    Raises :class:`OutputConflictError` when the pipeline is built if ``DIR`` holds files
    named like this prefix's shards that no manifest lists.

    Example::

        results | WriteResults("out/", schema=EmbedTask().schema(config))
    """

    def __init__(self, output_dir: str, *, schema: pa.Schema, prefix: str = "results",
                 rows_per_file: int = 20000, check_output: bool = True):
        super().__init__()
        self._check_output = check_output  # False: built offline (a dry run), nothing listed
        self._output_dir = output_dir
        self._schema = schema
        self._prefix = prefix
        self._rows_per_file = rows_per_file
        fs, root = url_to_fs(output_dir)
        self._temp_dir = join(fs, root, f".temp-{prefix}-{uuid.uuid4().hex[:12]}")

    def expand(self, rows: beam.PCollection) -> beam.PCollection:
        if self._check_output:
            check_no_foreign_files(self._output_dir, (self._prefix,))
        return rows | self._shards() | self._finalize()

    def _shards(self, row_group_rows: int = ROW_GROUP_ROWS) -> beam.PTransform:
        return "WriteShards" >> beam.ParDo(_WriteShardFn(
            self._temp_dir, self._prefix, self._schema, self._rows_per_file, row_group_rows))

    def _finalize(self) -> beam.PTransform:
        return (
            "CollectShards" >> beam.combiners.ToList()
            | "Finalize" >> beam.ParDo(
                _FinalizeFn(self._output_dir, self._temp_dir, self._prefix, self._schema))
        )


def count_rows(output_dir: str, prefix: str) -> int:
    """Rows in the committed ``prefix`` files of ``output_dir`` (from Parquet footers)."""
    fs, _ = url_to_fs(output_dir)
    total = 0
    for path in committed_files(output_dir, prefix):
        with fs.open(path, "rb") as f:
            total += pq.ParquetFile(f).metadata.num_rows
    return total


def read_table(output_dir: str, prefix: str = "results", columns: list[str] | None = None) -> pa.Table:
    """All committed ``prefix`` files of ``output_dir`` as one Arrow table."""
    fs, _ = url_to_fs(output_dir)
    tables = []
    for path in committed_files(output_dir, prefix):
        with fs.open(path, "rb") as f:
            tables.append(pq.read_table(f, columns=columns))
    return pa.concat_tables(tables) if tables else pa.table({})


def remove_temp_dirs(output_dir: str) -> None:
    """Removes the temporary directories of writes into ``output_dir`` (interrupted runs');
    only while no other run writes there."""
    fs, root = url_to_fs(output_dir)
    for prefix in PREFIXES:
        try:
            paths = fs.glob(f"{root.rstrip('/')}/.temp-{prefix}-*")
        except FileNotFoundError:
            continue
        for path in paths:
            fs.rm(path, recursive=True)
