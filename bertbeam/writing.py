"""WriteResults: rows to typed Parquet files through fsspec, committed atomically.

Sinks write each bundle to a temporary file under ``DIR/.temp-<run>/`` and a single finalize
step renames the committed files to ``DIR/<prefix>-NNNNN-of-NNNNN.parquet`` and removes files
of earlier runs: a retried bundle's lost attempt is never renamed, so retries cannot
duplicate rows.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq

from bertbeam.buffering import BufferedDoFn
from bertbeam.filesystems import join, url_to_fs
from bertbeam.records import rows_to_table


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
        fs, root = url_to_fs(self._temp_dir)
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
        fs, root = url_to_fs(self._output_dir)
        _, temp_root = url_to_fs(self._temp_dir)
        sources = sorted(url_to_fs(p)[1] for p in temp_files)
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
        fs, root = url_to_fs(output_dir)
        self._temp_dir = join(fs, root, f".temp-{prefix}-{uuid.uuid4().hex[:12]}")

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
    fs, root = url_to_fs(output_dir)
    total = 0
    for path in fs.glob(f"{root.rstrip('/')}/{prefix}-*-of-*.parquet"):
        with fs.open(path, "rb") as f:
            total += pq.ParquetFile(f).metadata.num_rows
    return total


def read_table(output_dir: str, prefix: str = "results", columns: list[str] | None = None) -> pa.Table:
    """All finalized ``prefix`` files of ``output_dir`` as one Arrow table."""
    fs, root = url_to_fs(output_dir)
    tables = []
    for path in sorted(fs.glob(f"{root.rstrip('/')}/{prefix}-*-of-*.parquet")):
        with fs.open(path, "rb") as f:
            tables.append(pq.read_table(f, columns=columns))
    return pa.concat_tables(tables) if tables else pa.table({})
