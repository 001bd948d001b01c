"""bertbeam embedding results into Beam's vector-database writers (``apache_beam.ml.rag``).

:class:`MakeChunks` turns the rows ``bertbeam embed`` writes (``id``, ``embedding``, the
task's columns and any carried columns) into Beam RAG ``Chunk``\\ s, which every
``VectorDatabaseWriteTransform`` configuration takes: Milvus, Qdrant, BigQuery, AlloyDB,
Cloud SQL, Spanner, ... The helpers below derive the schema each of two writers needs
from the results' Arrow schema (``bertbeam embed --sink`` keeps Milvus and Qdrant
collections in sync itself: :mod:`bertbeam.beam.sinks`):

* :func:`bigquery_schema_config`: a typed BigQuery table (one column per carried column)
  for ``BigQueryVectorWriterConfig``.
* :func:`postgres_column_specs` / :func:`postgres_create_table`: columns and pgvector DDL
  for ``AlloyDBVectorWriterConfig`` / ``CloudSQLPostgresVectorWriterConfig``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow as pa

from bertbeam.beam.sinks import (  # noqa: F401  (the sinks moved; their old home still works)
    ID_COLUMN,
    SINK_KINDS,
    TEXT_COLUMN,
    MilvusSink,
    QdrantSink,
    add_sink_args,
    parse_sink,
    sink_from_args,
)
from bertbeam.beam.sinks import plain as _plain
from bertbeam.core.records import as_dict
from bertbeam.tasks.embed import TASK_COLUMNS


def metadata_columns(schema: pa.Schema, text_column: str | None = TEXT_COLUMN) -> list[str]:
    """The carried columns of a results schema: all but ``id``, the text and the task's own."""
    return [n for n in schema.names if n not in (ID_COLUMN, text_column, *TASK_COLUMNS)]


def to_chunk(row: Any, *, text_column: str | None = TEXT_COLUMN,
             metadata: tuple[str, ...] | None = None) -> Any:
    """One results row (a ``beam.Row`` as ``EmbedDocuments`` gives it, or a dict) -> a Beam RAG
    ``Chunk`` (id, text content, metadata, dense embedding).

    ``metadata`` names the columns to keep as metadata; ``None`` keeps every carried column
    of the row (all but ``id``, the text and the embed task's own columns).
    """
    # Beam's ml package imports torch
    from apache_beam.ml.rag.types import Chunk, Content, Embedding

    row = as_dict(row)

    names = metadata if metadata is not None else [
        n for n in row if n not in (ID_COLUMN, text_column, *TASK_COLUMNS)]
    vector = row["embedding"]
    return Chunk(
        id=str(row[ID_COLUMN]),
        content=Content(text=row.get(text_column) if text_column else None),
        metadata={n: _plain(row.get(n)) for n in names},
        embedding=Embedding(dense_embedding=np.asarray(vector, dtype=np.float32).tolist()),
    )


class MakeChunks(beam.PTransform):
    """Results row (``beam.Row`` or dict) -> ``apache_beam.ml.rag.types.Chunk``, for Beam's
    vector writers.

    Args:
        text_column: the column whose text becomes ``Chunk.content`` (present when the run
            kept the text); ``None`` for no content.
        metadata: columns kept in ``Chunk.metadata``; ``None`` keeps every carried column.

    Example::

        from apache_beam.ml.rag.ingestion.base import VectorDatabaseWriteTransform

        out["results"] | MakeChunks() | VectorDatabaseWriteTransform(my_writer_config)
    """

    def __init__(self, *, text_column: str | None = TEXT_COLUMN,
                 metadata: tuple[str, ...] | None = None):
        super().__init__()
        self._text_column = text_column
        self._metadata = None if metadata is None else tuple(metadata)

    def expand(self, rows: beam.PCollection) -> beam.PCollection:
        text_column, metadata = self._text_column, self._metadata
        return rows | "ToChunk" >> beam.Map(to_chunk, text_column=text_column, metadata=metadata)


# BigQuery and Postgres (AlloyDB, Cloud SQL): a typed column per carried column.

_BIGQUERY_TYPES: tuple[tuple[Callable[[pa.DataType], bool], str], ...] = (
    (pa.types.is_boolean, "BOOL"),
    (pa.types.is_integer, "INT64"),
    (pa.types.is_floating, "FLOAT64"),
    (pa.types.is_decimal, "NUMERIC"),
    (lambda t: pa.types.is_string(t) or pa.types.is_large_string(t), "STRING"),
    (lambda t: pa.types.is_binary(t) or pa.types.is_large_binary(t), "BYTES"),
    (pa.types.is_timestamp, "TIMESTAMP"),
    (pa.types.is_date, "DATE"),
)


def _bigquery_field(field: pa.Field) -> dict[str, Any]:
    kind = field.type
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
        inner = _bigquery_field(pa.field(field.name, kind.value_type))
        if inner["mode"] == "REPEATED":
            raise ValueError(f"Column {field.name!r} is a list of lists ({kind}), which BigQuery "
                             "cannot store; carry it as JSON text instead.")
        return {**inner, "mode": "REPEATED"}
    if pa.types.is_struct(kind):
        return {"name": field.name, "type": "RECORD", "mode": "NULLABLE",
                "fields": [_bigquery_field(kind.field(i)) for i in range(kind.num_fields)]}
    for test, name in _BIGQUERY_TYPES:
        if test(kind):
            return {"name": field.name, "type": name, "mode": "NULLABLE"}
    raise ValueError(f"Column {field.name!r} has Arrow type {kind}, which has no BigQuery type here; "
                     "valid: bool, integers, floats, decimals, strings, binary, timestamps, dates, "
                     "lists and structs of those.")


def bigquery_schema_config(schema: pa.Schema, *, text_column: str | None = TEXT_COLUMN) -> Any:
    """A ``SchemaConfig`` for ``BigQueryVectorWriterConfig``: ``id`` STRING, ``embedding``
    FLOAT64 REPEATED (what ``VECTOR_SEARCH`` takes), ``content`` STRING when the results
    carry text, and one typed column per carried column.

    Example::

        config = BigQueryVectorWriterConfig(write_config={"table": "proj.ds.docs"},
                                            schema_config=bigquery_schema_config(schema))
        out["results"] | MakeChunks() | VectorDatabaseWriteTransform(config)
    """
    # Beam's ml package imports torch
    from apache_beam.ml.rag.ingestion.bigquery import SchemaConfig

    carried = metadata_columns(schema, text_column)
    has_text = bool(text_column) and text_column in schema.names
    fields = [{"name": "id", "type": "STRING", "mode": "REQUIRED"},
              {"name": "embedding", "type": "FLOAT64", "mode": "REPEATED"}]
    if has_text:
        fields.append({"name": "content", "type": "STRING", "mode": "NULLABLE"})
    fields += [_bigquery_field(schema.field(n)) for n in carried]
    return SchemaConfig(schema={"fields": fields},
                        embeddable_to_dict_fn=_BigQueryRow(tuple(carried), has_text))


@dataclass(frozen=True)
class _BigQueryRow:
    """Chunk -> BigQuery row dict (a picklable callable, not a closure)."""

    carried: tuple[str, ...]
    has_text: bool

    def __call__(self, chunk: Any) -> dict[str, Any]:
        row = {"id": chunk.id, "embedding": chunk.dense_embedding,
               **{n: chunk.metadata.get(n) for n in self.carried}}
        if self.has_text:
            row["content"] = chunk.content.text
        return row


def _postgres_type(kind: pa.DataType) -> tuple[str, type, str | None]:
    """(column type, python type, placeholder cast) of a carried Arrow type."""
    if pa.types.is_boolean(kind):
        return "boolean", bool, None
    if pa.types.is_integer(kind):
        return "bigint", int, None
    if pa.types.is_floating(kind):
        return "double precision", float, None
    if pa.types.is_timestamp(kind):
        return "timestamptz", str, "::timestamptz"
    if pa.types.is_date(kind):
        return "date", str, "::date"
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return "text", str, None
    return "jsonb", str, "::jsonb"  # lists, structs, anything else: as JSON


def postgres_column_specs(schema: pa.Schema, *, text_column: str | None = TEXT_COLUMN) -> list[Any]:
    """``ColumnSpec``\\ s for ``AlloyDBVectorWriterConfig`` / Cloud SQL: ``id``, ``embedding``
    (cast to ``float[]``, which pgvector assigns to a ``vector`` column), ``content`` when
    the results carry text, and one typed column per carried column (lists and structs as
    ``jsonb``). :func:`postgres_create_table` writes the matching table."""
    # Beam's ml package imports torch
    from apache_beam.ml.rag.ingestion.postgres_common import ColumnSpecsBuilder

    specs = ColumnSpecsBuilder().with_id_spec().with_embedding_spec()
    if text_column and text_column in schema.names:
        specs = specs.with_content_spec()
    for name in metadata_columns(schema, text_column):
        _, python_type, cast = _postgres_type(schema.field(name).type)
        convert = _to_json if cast == "::jsonb" else (str if python_type is str and cast else None)
        specs = specs.add_metadata_field(name, python_type, convert_fn=convert, sql_typecast=cast)
    return specs.build()


def _to_json(value: Any) -> str:
    return json.dumps(_plain(value))


def postgres_create_table(table: str, schema: pa.Schema, *, text_column: str | None = TEXT_COLUMN) -> str:
    """``CREATE TABLE`` for :func:`postgres_column_specs`, with a pgvector ``vector(dim)``."""
    dim = schema.field("embedding").type.list_size
    columns = ["id text PRIMARY KEY", f"embedding vector({dim}) NOT NULL"]
    if text_column and text_column in schema.names:
        columns.append("content text")
    columns += [f"{n} {_postgres_type(schema.field(n).type)[0]}" for n in metadata_columns(schema, text_column)]
    body = ",\n  ".join(columns)
    return f"CREATE TABLE IF NOT EXISTS {table} (\n  {body}\n);"
