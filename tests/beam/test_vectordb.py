"""Embedding results into Beam's vector-database writers: Chunks, a real Milvus Lite round
trip (`bertbeam embed --sink`, searched), and the BigQuery / AlloyDB schema conversion checked
offline. The sync itself: tests/beam/test_sinks.py."""

from __future__ import annotations

import datetime

import numpy as np
import pyarrow as pa
import pytest

from bertbeam.beam.vectordb import (
    MakeChunks,
    MilvusSink,
    bigquery_schema_config,
    postgres_column_specs,
    postgres_create_table,
    to_chunk,
)
from tests.conftest import run_cli, write_corpus
from tests.search_helpers import embed_texts, results_table, write_results

pytest.importorskip("pymilvus")

SCHEMA = pa.schema([
    ("id", pa.string()), ("title", pa.string()), ("tags", pa.list_(pa.string())),
    ("published", pa.timestamp("us")), ("rank", pa.int64()), ("text", pa.string()),
    ("embedding", pa.list_(pa.float32(), 4)), ("n_tokens", pa.int32()), ("n_chunks", pa.int32()),
    ("truncated", pa.bool_()), ("model", pa.string()),
])
ROW = {"id": "doc-1", "title": "Files", "tags": ["io", "os"],
       "published": datetime.datetime(2024, 5, 1, 12, 0), "rank": np.int64(3), "text": "Open a file.",
       "embedding": np.array([0.5, 0.5, 0.5, 0.5], np.float32), "n_tokens": 5, "n_chunks": 1,
       "truncated": False, "model": "m"}


def test_a_results_row_becomes_a_chunk():
    """id, text content, dense embedding as floats, and the carried columns (not the task's
    own) as plain JSON-able metadata."""
    chunk = to_chunk(ROW)
    assert chunk.id == "doc-1" and chunk.content.text == "Open a file."
    assert chunk.dense_embedding == [0.5, 0.5, 0.5, 0.5]
    assert chunk.metadata == {"title": "Files", "tags": ["io", "os"],
                              "published": "2024-05-01T12:00:00", "rank": 3}
    assert type(chunk.metadata["rank"]) is int
    bare = to_chunk({"id": 7, "embedding": [1.0, 0.0]}, text_column=None)
    assert bare.id == "7" and bare.content.text is None and bare.metadata == {}


def test_make_chunks_in_a_pipeline():
    import apache_beam as beam
    from apache_beam.testing.test_pipeline import TestPipeline
    from apache_beam.testing.util import assert_that, equal_to

    with TestPipeline() as p:
        chunks = p | beam.Create([ROW, {**ROW, "id": "doc-2", "title": "Dirs"}]) | MakeChunks(metadata=("title",))
        assert_that(chunks | beam.Map(lambda c: (c.id, c.metadata, len(c.dense_embedding))),
                    equal_to([("doc-1", {"title": "Files"}, 4), ("doc-2", {"title": "Dirs"}, 4)]))


def test_results_files_read_by_beam_become_chunks(tmp_path):
    """The first steps of the BigQuery and AlloyDB recipes: Beam's own ReadFromParquet over
    results files, then MakeChunks (carried columns as metadata, no text kept)."""
    import apache_beam as beam
    from apache_beam.testing.test_pipeline import TestPipeline
    from apache_beam.testing.util import assert_that, equal_to

    glob = write_results(tmp_path, results_table(["a", "b"], np.eye(2, 4), "m", title=["A", "B"]))
    with TestPipeline() as p:
        chunks = p | beam.io.ReadFromParquet(glob) | MakeChunks()
        assert_that(chunks | beam.Map(lambda c: (c.id, c.content.text, c.metadata, c.dense_embedding)),
                    equal_to([("a", None, {"title": "A"}, [1.0, 0.0, 0.0, 0.0]),
                              ("b", None, {"title": "B"}, [0.0, 1.0, 0.0, 0.0])]))


def _milvus_round_trip(tmp_path, model: str, n_docs: int) -> float:
    """Embeds ``n_docs`` demo documents with ``--sink milvus:…db`` and searches Milvus with
    each document's own text; returns the fraction found first. The demo corpus repeats a
    few paragraphs word for word (11 in its first 500); a repeated text cannot pick out one
    of its copies, so the documents are the first ``n_docs`` distinct texts."""
    from bertbeam.cli.demo import demo_texts

    texts = list(dict.fromkeys(demo_texts()))[:n_docs]
    ids = [f"doc-{i:04d}" for i in range(n_docs)]
    corpus = write_corpus(tmp_path / "corpus" / "part-0.parquet", {"id": ids, "text": texts},
                          row_group_size=128)
    sink = MilvusSink(uri=str(tmp_path / "vectors.db"), collection="demo")
    assert run_cli("embed", "--input", corpus, "--output", tmp_path / "out", "--model", model,
                   "--sink", f"milvus:{sink.uri}", "--sink-collection", "demo") == 0
    client = sink.client()
    try:
        client.load_collection("demo")
        assert client.get_collection_stats("demo")["row_count"] == n_docs
        stored = client.get("demo", ids=[ids[0]], output_fields=["id", "embedding", "metadata"])[0]
        # No carried columns: the metadata is what the sync reads back (text fingerprint, run).
        assert set(stored["metadata"]) == {"text_fingerprint", "run_id"}
        assert len(stored["embedding"]) > 0
        queries = embed_texts(model, texts)
        hits = client.search("demo", data=queries.tolist(), limit=1, output_fields=["id"],
                             search_params={"metric_type": "COSINE"})
    finally:
        client.close()
    return float(np.mean([row[0]["id"] == doc for row, doc in zip(hits, ids, strict=True)]))


def test_embed_sink_milvus_lite_round_trip(tmp_path, tiny_model):
    """500 demo documents written by `bertbeam embed --sink milvus:…`; each document's own
    text finds it first for >= 99%."""
    assert _milvus_round_trip(tmp_path, tiny_model("bert"), 500) >= 0.99


@pytest.mark.slow
def test_embed_sink_milvus_lite_round_trip_default_model(tmp_path):
    """The same with the default all-MiniLM-L6-v2 (a few minutes on a small CPU)."""
    assert _milvus_round_trip(tmp_path, "embedded:all-MiniLM-L6-v2", 500) >= 0.99


def test_existing_collection_with_another_dimension_is_refused(tmp_path):
    sink = MilvusSink(uri=str(tmp_path / "v.db"), collection="docs")
    sink.prepare(SCHEMA)
    sink.prepare(SCHEMA)  # the same dimension again: reused
    other = SCHEMA.set(SCHEMA.get_field_index("embedding"), pa.field("embedding", pa.list_(pa.float32(), 8)))
    with pytest.raises(ValueError, match="holds 4-dimensional embeddings; these results have 8"):
        sink.prepare(other)

def test_bigquery_schema_and_rows_offline():
    """The table schema types every carried column, and Beam's own BigQuery row conversion
    (the step before the managed write) accepts the rows it makes."""
    from apache_beam.io.gcp.bigquery_tools import (
        beam_row_from_dict,
        get_beam_typehints_from_tableschema,
    )
    from apache_beam.ml.rag.ingestion.bigquery import BigQueryVectorWriterConfig

    config = bigquery_schema_config(SCHEMA)
    fields = {f["name"]: (f["type"], f["mode"]) for f in config.schema["fields"]}
    assert fields == {"id": ("STRING", "REQUIRED"), "embedding": ("FLOAT64", "REPEATED"),
                      "content": ("STRING", "NULLABLE"), "title": ("STRING", "NULLABLE"),
                      "tags": ("STRING", "REPEATED"), "published": ("TIMESTAMP", "NULLABLE"),
                      "rank": ("INT64", "NULLABLE")}
    row = config.embeddable_to_dict_fn(to_chunk({**ROW, "published": datetime.datetime(2024, 5, 1)}))
    assert row["id"] == "doc-1" and row["content"] == "Open a file." and row["tags"] == ["io", "os"]
    beam_row = beam_row_from_dict(row=row, schema=config.schema)
    assert beam_row.rank == 3 and list(beam_row.embedding) == [0.5] * 4
    assert {name for name, _ in get_beam_typehints_from_tableschema(config.schema)} == set(fields)
    assert BigQueryVectorWriterConfig(write_config={"table": "proj:ds.docs"},
                                      schema_config=config).schema_config is config
    nested = pa.schema([("id", pa.string()), ("m", pa.list_(pa.list_(pa.int32()))),
                        ("embedding", pa.list_(pa.float32(), 2))])
    with pytest.raises(ValueError, match="'m' is a list of lists"):
        bigquery_schema_config(nested)


def test_alloydb_columns_and_table_offline():
    """AlloyDB's writer config builds from the column specs (no connection is made): its
    converter makes a record per chunk and its INSERT casts the typed columns; the DDL
    declares a pgvector column of the results' dimension."""
    from apache_beam.ml.rag.ingestion.alloydb import (
        AlloyDBLanguageConnectorConfig,
        AlloyDBVectorWriterConfig,
    )

    config = AlloyDBVectorWriterConfig(
        connection_config=AlloyDBLanguageConnectorConfig(
            username="u", password="p", database_name="db",
            instance_name="projects/p/locations/l/clusters/c/instances/i"),
        table_name="docs", column_specs=postgres_column_specs(SCHEMA))
    record = config.query_builder.create_converter()(to_chunk(ROW))
    assert record._asdict() == {"id": "doc-1", "embedding": "{0.5,0.5,0.5,0.5}", "content": "Open a file.",
                                "title": "Files", "tags": '["io", "os"]',
                                "published": "2024-05-01T12:00:00", "rank": 3}
    insert = " ".join(config.query_builder.build_insert().split())
    assert "(id, embedding, content, title, tags, published, rank)" in insert
    assert "VALUES (?, ?::float[], ?, ?, ?::jsonb, ?::timestamptz, ?)" in insert
    ddl = postgres_create_table("docs", SCHEMA)
    assert "embedding vector(4) NOT NULL" in ddl and "tags jsonb" in ddl and "rank bigint" in ddl
