"""Carried columns: input columns of any Arrow type reach the result rows unchanged."""

from __future__ import annotations

import datetime

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from bertbeam import Document, EmbedDocuments, ModelSpec, RunSpec
from bertbeam.run.runners import resolve_runner
from tests.conftest import read_output, run_cli, write_corpus

TYPES = pa.schema([
    ("id", pa.string()), ("text", pa.string()), ("title", pa.string()), ("score", pa.float64()),
    ("tags", pa.list_(pa.string())), ("day", pa.date32()),
    ("meta", pa.struct([("lang", pa.string()), ("n", pa.int64())])),
])


def test_carried_columns_of_any_type_come_out_unchanged(tmp_path, tiny_model):
    columns = {
        "id": ["a", "b", "c", "d"],
        "text": ["hello world", "python lists are mutable", "", " ".join(["word"] * 400)],
        "title": ["T1", None, "T3", "T4"],
        "score": [1.5, 2.5, 3.5, None],
        "tags": [["x"], [], ["y", "z"], None],
        "day": [datetime.date(2024, 1, d) for d in range(1, 5)],
        "meta": [{"lang": "en", "n": 1}, None, {"lang": "fr", "n": 3}, {"lang": "de", "n": 4}],
    }
    corpus = write_corpus(tmp_path / "in.parquet", columns, schema=TYPES)
    out = tmp_path / "out"
    assert run_cli("embed", "--input", corpus, "--output", out, "--model",
                   tiny_model("bert", "base"), "--max-length", "32",
                   "--carry-columns", "title,score,tags,day,meta", "--keep-text") == 0
    schema = pq.read_schema(sorted(out.glob("results-*.parquet"))[0])
    carried = ["title", "score", "tags", "day", "meta", "text"]
    start = schema.names.index("title")
    assert schema.names[start:start + 6] == carried  # after the task's columns, in order
    for name in ("title", "score", "tags", "day", "meta"):
        assert schema.field(name).type == TYPES.field(name).type
    rows = {r["id"]: r for r in read_output(out)}
    assert set(rows) == {"a", "b", "d"}  # c: empty text, dead-lettered
    for i, doc_id in enumerate(columns["id"]):
        if doc_id in rows:
            for name in ("text", "title", "score", "tags", "day", "meta"):
                assert rows[doc_id][name] == columns[name][i], (doc_id, name)
    assert rows["d"]["n_chunks"] > 1  # a chunked document carries its columns once


def test_a_carried_column_named_like_a_result_column_is_refused(tmp_path, tiny_model, capsys):
    corpus = write_corpus(tmp_path / "in.parquet", {"id": ["a"], "text": ["x"], "model": ["m"]})
    assert run_cli("embed", "--input", corpus, "--output", tmp_path / "out", "--model",
                   tiny_model("bert", "base"), "--carry-columns", "model") == 2
    assert "Carried column 'model' has the name of a result column" in capsys.readouterr().err


def test_library_documents_carry_their_extra_columns(tiny_model):
    docs = [Document("a", "first text", extra={"url": "https://a"}),
            Document("b", "second text", extra={"url": None})]
    embed = EmbedDocuments(run=RunSpec(model=ModelSpec(uri=tiny_model("bert", "base"))),
                           carry=[pa.field("url", pa.string())])
    with TestPipeline(runner=resolve_runner(PipelineOptions())) as p:
        out = p | beam.Create(docs) | embed
        picked = out["results"] | beam.Select("id", "url") | beam.Map(tuple)
        assert_that(picked, equal_to([("a", "https://a"), ("b", None)]))
