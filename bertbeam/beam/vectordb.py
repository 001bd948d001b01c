"""bertbeam embedding results into Beam's vector-database writers (``apache_beam.ml.rag``).

:class:`MakeChunks` turns the rows ``bertbeam embed`` writes (``id``, ``embedding``, the
task's columns and any carried columns) into Beam RAG ``Chunk``\\ s, which every
``VectorDatabaseWriteTransform`` configuration takes: Milvus, Qdrant, BigQuery, AlloyDB,
Cloud SQL, Spanner, ... The helpers below derive the schema each of three writers needs
from the results' Arrow schema:

* :class:`MilvusSink`: ``bertbeam embed --sink milvus:PATH.db`` (Milvus Lite, a local
  file) or ``--sink milvus:http://host:19530``; it creates the collection on the launcher
  and writes through Beam's ``MilvusVectorWriterConfig``.
* :func:`bigquery_schema_config`: a typed BigQuery table (one column per carried column)
  for ``BigQueryVectorWriterConfig``.
* :func:`postgres_column_specs` / :func:`postgres_create_table`: columns and pgvector DDL
  for ``AlloyDBVectorWriterConfig`` / ``CloudSQLPostgresVectorWriterConfig``.
"""

from __future__ import annotations

import argparse
import datetime
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow as pa

from bertbeam.tasks.embed import TASK_COLUMNS
from bertbeam.core.records import iter_rows

ID_COLUMN = "id"
TEXT_COLUMN = "text"
SINK_KINDS = ("milvus",)


def metadata_columns(schema: pa.Schema, text_column: str | None = TEXT_COLUMN) -> list[str]:
    """The carried columns of a results schema: all but ``id``, the text and the task's own."""
    return [n for n in schema.names if n not in (ID_COLUMN, text_column, *TASK_COLUMNS)]


def _plain(value: Any) -> Any:
    """A metadata value as plain JSON-able Python (numpy and dates included)."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, datetime.datetime | datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def to_chunk(row: Any, *, text_column: str | None = TEXT_COLUMN,
             metadata: tuple[str, ...] | None = None) -> Any:
    """One results row (a ``beam.Row`` as ``EmbedDocuments`` gives it, or a dict) -> a Beam RAG
    ``Chunk`` (id, text content, metadata, dense embedding).

    ``metadata`` names the columns to keep as metadata; ``None`` keeps every carried column
    of the row (all but ``id``, the text and the embed task's own columns).
    """
    from apache_beam.ml.rag.types import Chunk, Content, Embedding

    from bertbeam.core.records import as_dict

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


@dataclass(frozen=True, kw_only=True)
class MilvusSink:
    """A Milvus collection to write embeddings to, through Beam's ``MilvusVectorWriterConfig``.

    Attributes:
        uri: a local ``*.db`` file (Milvus Lite, embedded; one writing process at a time)
            or a server URL ``http(s)://host:19530``.
        collection: collection name; created on the launcher when it does not exist.
        token: credentials for a server (``user:password`` or an API key), if any.
    """

    uri: str
    collection: str = "bertbeam"
    token: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.uri, str) or not self.uri.strip():
            raise ValueError(f"Milvus URI must be a local .db file or http(s):// URL, got {self.uri!r}.")
        if not self.uri.startswith(("http://", "https://")) and not self.uri.endswith(".db"):
            raise ValueError(f"Milvus URI {self.uri!r} is neither a Milvus Lite file (ending in .db) "
                             "nor a server URL (http://host:19530).")
        if not self.collection.replace("_", "a").isalnum() or self.collection[0].isdigit():
            raise ValueError(f"Milvus collection names are letters, digits and underscores, not "
                             f"starting with a digit; got {self.collection!r}.")

    def client(self) -> Any:
        """A ``pymilvus.MilvusClient`` on this sink (Milvus Lite starts in-process)."""
        try:
            from pymilvus import MilvusClient
        except ImportError as exc:
            raise ValueError("--sink milvus needs pymilvus (and milvus-lite for a .db file): "
                             "pip install 'bertbeam[milvus]'.") from exc
        return MilvusClient(uri=self.uri, token=self.token)

    def prepare(self, schema: pa.Schema, text_column: str | None = TEXT_COLUMN) -> None:
        """Creates the collection for ``schema`` (launcher side), or checks the existing one:
        ``id`` VARCHAR primary key, ``embedding`` FLOAT_VECTOR(dim) with a cosine index,
        ``content`` VARCHAR when the results carry text, ``metadata`` JSON.

        Raises:
            ValueError: the collection exists with another embedding dimension.
        """
        from pymilvus import DataType, MilvusClient

        dim = schema.field("embedding").type.list_size
        client = self.client()
        try:
            if client.has_collection(self.collection):
                fields = client.describe_collection(self.collection)["fields"]
                have = next(f["params"].get("dim") for f in fields if f["name"] == "embedding")
                if int(have) != dim:
                    raise ValueError(
                        f"Milvus collection {self.collection!r} at {self.uri} holds {have}-dimensional "
                        f"embeddings; these results have {dim}. Use another --sink-collection.")
                return
            fields = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
            fields.add_field("id", DataType.VARCHAR, is_primary=True, max_length=1024)
            fields.add_field("embedding", DataType.FLOAT_VECTOR, dim=dim)
            if text_column in schema.names:
                fields.add_field("content", DataType.VARCHAR, max_length=65535)
            fields.add_field("metadata", DataType.JSON)
            client.create_collection(self.collection, schema=fields)
            index = client.prepare_index_params()
            index.add_index("embedding", index_type="AUTOINDEX", metric_type="COSINE")
            # Not waited for: the collection is empty, and the wait asks for a timestamp that
            # Milvus Lite does not serve (it logs a gRPC traceback and carries on).
            client.create_index(self.collection, index, sync=False)
        finally:
            client.close()

    def writer_config(self, schema: pa.Schema, text_column: str | None = TEXT_COLUMN) -> Any:
        """Beam's ``MilvusVectorWriterConfig`` for this sink and a results schema."""
        from apache_beam.ml.rag.ingestion.milvus_search import (
            MilvusVectorWriterConfig,
            MilvusWriteConfig,
        )
        from apache_beam.ml.rag.ingestion.postgres_common import ColumnSpecsBuilder
        from apache_beam.ml.rag.utils import MilvusConnectionParameters

        specs = ColumnSpecsBuilder().with_id_spec().with_embedding_spec(convert_fn=list)
        if text_column in schema.names:
            specs = specs.with_content_spec()
        specs = specs.with_metadata_spec(convert_fn=dict)
        return MilvusVectorWriterConfig(
            connection_params=MilvusConnectionParameters(uri=self.uri, token=self.token),
            write_config=MilvusWriteConfig(collection_name=self.collection),
            column_specs=specs.build())


def parse_sink(value: str, collection: str = "bertbeam") -> MilvusSink:
    """``--sink`` to a sink: ``milvus:PATH.db`` or ``milvus:http://host:19530``.

    Raises:
        ValueError: an unknown kind or a malformed location.
    """
    kind, _, location = value.partition(":")
    if kind not in SINK_KINDS or not location:
        raise ValueError(f"Invalid --sink {value!r}. Valid forms are: milvus:PATH.db (Milvus Lite) "
                         "and milvus:http://HOST:19530 (a Milvus server).")
    return MilvusSink(uri=location, collection=collection)


def add_sink_args(parser: argparse.ArgumentParser) -> None:
    """``--sink`` and ``--sink-collection`` for ``bertbeam embed``."""
    parser.add_argument("--sink", default=None,
                        help="also write the embeddings to a vector database through Beam's "
                             "writer: milvus:PATH.db (Milvus Lite) or milvus:http://HOST:19530")
    parser.add_argument("--sink-collection", default="bertbeam", help="collection for --sink")


def sink_from_args(args: argparse.Namespace) -> MilvusSink | None:
    return parse_sink(args.sink, args.sink_collection) if args.sink else None


def write_to_sink(results: beam.PCollection, sink: MilvusSink | None, schema: pa.Schema) -> None:
    """Hooks a results PCollection into ``sink`` (launcher side: the collection is created
    now); does nothing when ``sink`` is ``None``."""
    if sink is None:
        return
    from apache_beam.ml.rag.ingestion.base import VectorDatabaseWriteTransform

    sink.prepare(schema)
    text = TEXT_COLUMN if TEXT_COLUMN in schema.names else None
    _ = (results
         | "ResultRows" >> beam.FlatMap(iter_rows)
         | "MakeChunks" >> MakeChunks(text_column=text, metadata=tuple(metadata_columns(schema)))
         | "WriteToVectorDatabase" >> VectorDatabaseWriteTransform(sink.writer_config(schema)))


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
