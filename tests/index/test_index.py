"""The embedded search index: build from embed results (streaming, local or gs://), search by
text with the index's model, and refuse what does not fit (other model, other dimension)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bertbeam.index.search import (
    MANIFEST_FILE,
    ROWS_FILE,
    IndexSpec,
    SearchIndex,
    SearchIndexError,
    build_index,
    model_fingerprint,
)
from tests.conftest import run_cli, write_corpus
from tests.index.conftest import IDS, TEXTS
from tests.integration.test_gcs import gcs  # noqa: F401  (the emulator fixture)
from tests.search_helpers import embed_texts, results_table, write_results


@pytest.fixture(scope="module")
def embeddings(tmp_path_factory, model_dir, vectors):
    """Results in two files with small row groups and carried columns (a string and a list)."""
    table = results_table(IDS, vectors, model_dir,
                          title=[t[:20] for t in TEXTS],
                          tags=pa.array([[f"t{i}", "all"] for i in range(len(TEXTS))]))
    return write_results(tmp_path_factory.mktemp("results"), table, row_group_size=3)


def test_each_document_finds_itself_first_with_its_carried_columns(tmp_path, embeddings, model_dir):
    """Built in batches of 2 rows over two files (so the rows sidecar has many row groups),
    a search with a document's own text returns that document first, at cosine ~1, with the
    carried columns exactly as in the results; the manifest records model and dimension."""
    manifest = build_index(embeddings, str(tmp_path / "idx"), spec=IndexSpec(batch_rows=2))
    assert manifest.count == len(TEXTS) and manifest.dimension == 32
    assert manifest.model == model_dir and manifest.columns == ("title", "tags")
    assert manifest.model_fingerprint == model_fingerprint(model_dir)
    assert pq.ParquetFile(tmp_path / "idx" / ROWS_FILE).num_row_groups > 2
    with SearchIndex.open(str(tmp_path / "idx")) as index:
        results = index.search(TEXTS, k=3)
    for i, hits in enumerate(results):
        assert hits[0].id == IDS[i], TEXTS[i]
        assert hits[0].score == pytest.approx(1.0, abs=1e-4)
        assert hits[0].columns == {"title": TEXTS[i][:20], "tags": [f"t{i}", "all"]}
        assert len(hits) == 3 and hits[0].score >= hits[1].score >= hits[2].score


def test_recall_against_exact_search(tmp_path, model_dir):
    """On 3,000 clustered 32-dimensional vectors, recall@10 of the HNSW search against
    exact cosine search is >= 0.95."""
    from benchmarks.search import clustered_vectors, exact_neighbours, recall_at_k

    base, queries = clustered_vectors(3000, 32, seed=1), clustered_vectors(100, 32, seed=2)
    ids = [f"v{i}" for i in range(len(base))]
    glob = write_results(tmp_path / "res", results_table(ids, base, model_dir), files=3)
    build_index(glob, str(tmp_path / "idx"))
    with SearchIndex.open(str(tmp_path / "idx")) as index:
        hits = index.search_vectors(queries, k=10)
    found = np.array([[int(h.id[1:]) for h in row] for row in hits])
    assert recall_at_k(found, exact_neighbours(base, queries, 10)) >= 0.95


LONG_TEXT = " ".join(TEXTS) * 4  # several windows of the tiny model


@pytest.fixture(scope="module")
def embedded_corpus(tmp_path_factory, model_dir):
    """The README recipe's first two commands on a small corpus (one long document among
    them): `bertbeam embed` output and the `bertbeam index build` index and its stdout."""
    import contextlib
    import io

    root = tmp_path_factory.mktemp("recipe")
    corpus = write_corpus(root / "corpus" / "part-0.parquet",
                          {"id": [*IDS, "doc-long"], "text": [*TEXTS, LONG_TEXT]})
    assert run_cli("embed", "--input", corpus, "--output", root / "out", "--model", model_dir,
                   "--quiet", "--no-report") == 0
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert run_cli("index", "build", "--embeddings", root / "out" / "results-*.parquet",
                       "--output", root / "idx") == 0
    return root / "out", root / "idx", printed.getvalue()


def test_cli_embed_build_search(embedded_corpus, capsys):
    """The three commands of the README recipe on a small corpus: `search --json` returns
    the queried document first, and the plain output has rank, score and id per line."""
    _, idx, built = embedded_corpus
    assert "vectors of dimension 32" in built
    assert run_cli("search", "--index", idx, TEXTS[3], "-k", "2", "--json") == 0
    result = json.loads(capsys.readouterr().out)
    assert result["query"] == TEXTS[3] and result["hits"][0]["id"] == IDS[3]
    assert set(result["hits"][0]) == {"id", "score"}  # nothing carried by this run
    assert run_cli("search", "--index", idx, TEXTS[1], "-k", "1") == 0
    rank, score, doc = capsys.readouterr().out.split()
    assert (rank, doc) == ("1", IDS[1]) and float(score) == pytest.approx(1.0, abs=1e-3)


def test_query_vector_is_the_pipelines_document_vector(embedded_corpus, model_dir):
    """Parity: the vector a search embeds a query text into is the vector `bertbeam embed`
    wrote for a document of the same text, a multi-window text included."""
    from bertbeam.index.search import QueryEncoder
    from tests.conftest import read_output

    rows = {r["id"]: r for r in read_output(embedded_corpus[0])}
    assert rows["doc-long"]["n_chunks"] > 1
    texts = {**dict(zip(IDS, TEXTS, strict=True)), "doc-long": LONG_TEXT}
    got = QueryEncoder(model_dir).encode(list(texts.values()))
    expected = np.array([rows[i]["embedding"] for i in texts], dtype=np.float32)
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_queries_from_stdin_one_per_line(embedded_corpus, monkeypatch, capsys):
    """No query argument: queries are read from stdin, one per line, blank lines skipped;
    `--json` prints one JSON object per query (JSON lines). A query that cannot be embedded
    is one error line and exit status 2, and the queries after it are still answered."""
    import io

    _, idx, _ = embedded_corpus
    monkeypatch.setattr("sys.stdin", io.StringIO(f"{TEXTS[3]}\n\n  {TEXTS[1]}  \n"))
    assert run_cli("search", "--index", idx, "-k", "2", "--json") == 0
    lines = capsys.readouterr().out.splitlines()
    results = [json.loads(line) for line in lines]
    assert [r["query"] for r in results] == [TEXTS[3], TEXTS[1]]
    assert [r["hits"][0]["id"] for r in results] == [IDS[3], IDS[1]]
    assert all(len(r["hits"]) == 2 for r in results)

    monkeypatch.setattr("sys.stdin", io.StringIO(f"\x01\n{TEXTS[2]}\n"))
    assert run_cli("search", "--index", idx, "-k", "1") == 2
    out, err = capsys.readouterr()
    assert out.splitlines()[0] == f"# {TEXTS[2]}" and out.split()[-1] == IDS[2]
    assert err.count("\n") == 1 and "empty_text" in err and "Traceback" not in err


def test_search_does_not_import_beams_runinference(embedded_corpus):
    """A search loads no RunInference machinery (``apache_beam.ml``: a quarter of a second of
    imports a search never uses)."""
    import subprocess
    import sys

    _, idx, _ = embedded_corpus
    code = ("import sys; from bertbeam.index.search import SearchIndex\n"
            f"with SearchIndex.open({str(idx)!r}) as index: index.search(['a query'], k=1)\n"
            "print(sorted(m for m in sys.modules if m.startswith('apache_beam.ml')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_query_prompt_of_the_model_is_applied(tmp_path, model_dir, vectors):
    """A checkpoint with a `query` prompt in config_sentence_transformers.json: the manifest
    records it, and query vectors are the embeddings of prompt + query."""
    prompted = tmp_path / "prompt-model"
    shutil.copytree(model_dir, prompted)
    (prompted / "config_sentence_transformers.json").write_text(
        json.dumps({"prompts": {"query": "query: ", "document": ""}}))
    glob = write_results(tmp_path / "res", results_table(IDS, vectors, str(prompted)))
    manifest = build_index(glob, str(tmp_path / "idx"))
    assert manifest.query_prompt == "query: "
    with SearchIndex.open(str(tmp_path / "idx")) as index:
        score = index.search([TEXTS[0]], k=1)[0][0].score
    expected = embed_texts(str(prompted), ["query: " + TEXTS[0]])[0]
    unprompted = embed_texts(str(prompted), [TEXTS[0]])[0]
    best = max(float(expected @ v) for v in vectors)
    assert score == pytest.approx(best, abs=1e-4)
    assert abs(float(unprompted @ vectors[0]) - score) > 1e-3  # the prompt changed the query


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1, err
    return err


def test_search_with_another_model_is_refused(tmp_path, embeddings, tiny_model, capsys):
    """`--model` pointing at a different checkpoint: one line naming both models, exit 2."""
    build_index(embeddings, str(tmp_path / "idx"))
    other = tiny_model("distilbert")
    assert run_cli("search", "--index", tmp_path / "idx", "--model", other, "anything") == 2
    err = _error_line(capsys)
    assert "another model" in err and other in err and "fingerprint" in err


def test_model_changed_since_the_build_is_refused(tmp_path, model_dir, vectors, capsys):
    """The index's model directory was replaced after the build: the fingerprint differs."""
    changing = tmp_path / "model"
    shutil.copytree(model_dir, changing)
    glob = write_results(tmp_path / "res", results_table(IDS, vectors, str(changing)))
    build_index(glob, str(tmp_path / "idx"))
    (changing / "config.json").write_text((changing / "config.json").read_text().replace("{", '{"x": 1,', 1))
    assert run_cli("search", "--index", tmp_path / "idx", "anything") == 2
    assert "has changed since" in _error_line(capsys)


def test_query_dimension_mismatch_is_refused(tmp_path, model_dir, capsys):
    """Vectors of 16 dimensions recorded as made by a 32-dimensional model: the search says
    both dimensions instead of returning nonsense."""
    glob = write_results(tmp_path / "res", results_table(IDS, np.eye(len(IDS), 16), model_dir))
    build_index(glob, str(tmp_path / "idx"))
    assert run_cli("search", "--index", tmp_path / "idx", "anything") == 2
    err = _error_line(capsys)
    assert "32-dimensional query embeddings" in err and "16-dimensional" in err


def test_build_refuses_mixed_dimensions_models_and_non_results(tmp_path, model_dir, tiny_model, capsys):
    """One line, exit 2, for each input an index cannot be built from."""
    a = results_table(IDS[:3], np.eye(3, 8), model_dir)
    pq.write_table(a, tmp_path / "dims-0.parquet")
    pq.write_table(results_table(IDS[3:6], np.eye(3, 16), model_dir), tmp_path / "dims-1.parquet")
    pq.write_table(a, tmp_path / "models-0.parquet")
    pq.write_table(results_table(IDS[3:6], np.eye(3, 8), tiny_model("distilbert")),
                   tmp_path / "models-1.parquet")
    write_corpus(tmp_path / "corpus-0.parquet", {"id": IDS, "text": TEXTS})
    cases = {"dims-*": "mismatched dimensions", "models-*": "more than one model",
             "corpus-*": "is not a `bertbeam embed` result", "nothing-*": "matches no files"}
    for pattern, message in cases.items():
        assert run_cli("index", "build", "--embeddings", tmp_path / f"{pattern}.parquet",
                       "--output", tmp_path / "idx") == 2, pattern
        assert message in _error_line(capsys), pattern
    assert not (tmp_path / "idx" / MANIFEST_FILE).exists()


def test_not_an_index_and_bad_arguments(tmp_path, capsys):
    assert run_cli("search", "--index", tmp_path, "query") == 2
    assert "is not a bertbeam index" in _error_line(capsys)
    assert run_cli("index", "rebuild") == 2
    assert "argument command: invalid choice: 'rebuild'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="ef_search must be a positive integer, got 0"):
        IndexSpec(ef_search=0)
    (tmp_path / MANIFEST_FILE).write_text(json.dumps({"format": "bertbeam-index", "format_version": 99}))
    with pytest.raises(SearchIndexError, match="format version 99"):
        SearchIndex.open(str(tmp_path))


@pytest.mark.gcs
def test_build_and_search_on_gcs(gcs, embeddings):  # noqa: F811  (the fixture imported above)
    """Embeddings read from gs:// and the index written to and searched from gs:// (emulator)."""
    from tests.integration.test_gcs import BUCKET

    gcs.put(embeddings.rsplit("/", 1)[0] + "/", f"{BUCKET}/index-test/results/", recursive=True)
    manifest = build_index(f"gs://{BUCKET}/index-test/results/results-*.parquet",
                           f"gs://{BUCKET}/index-test/idx", spec=IndexSpec(batch_rows=4))
    assert manifest.count == len(TEXTS)
    gcs.invalidate_cache()
    with SearchIndex.open(f"gs://{BUCKET}/index-test/idx") as index:
        assert index.search([TEXTS[2]], k=1)[0][0].id == IDS[2]
