"""Embedding pipeline: parity with sentence-transformers whatever the batching and runner."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.conftest import SAMPLE_TEXTS, read_output, read_summary, run_cli, write_corpus


def _reference(model_dir: str, texts: list[str]) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(model_dir, device="cpu")
    return model.encode(texts, normalize_embeddings=True, batch_size=8)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from bertbeam.cli.demo import demo_texts

    texts = SAMPLE_TEXTS + [t for t in demo_texts() if len(t) < 600][:30]
    ids = [f"d{i}" for i in range(len(texts))]
    path = tmp_path_factory.mktemp("corpus") / "part-0.parquet"
    write_corpus(path, {"id": ids, "text": texts}, row_group_size=16)
    return str(path), dict(zip(ids, texts, strict=True))


@pytest.fixture(scope="module")
def reference(corpus, embedded_model_dir):
    _, texts = corpus
    vectors = _reference(embedded_model_dir, list(texts.values()))
    return dict(zip(texts, vectors, strict=True))


@pytest.mark.parametrize(("budget", "streams"), [("64", "3"), ("1024", "1"), ("65536", "auto")],
                         ids=["budget64-streams3", "budget1024-streams1", "budget65536-auto"])
def test_embeddings_match_sentence_transformers(tmp_path, corpus, reference, budget, streams):
    """Every row's cosine to sentence-transformers' normalized embedding is >= 0.9999, for token
    budgets that make one-window batches up to one batch for the whole corpus, and for one or
    several CPU streams (batches running at once, finishing out of order)."""
    path, texts = corpus
    assert run_cli("embed", "--input", path, "--output", tmp_path, "--token-budget", budget,
                   "--cpu-streams", streams) == 0
    rows = read_output(tmp_path)
    assert sorted(r["id"] for r in rows) == sorted(texts)
    for row in rows:
        vector = np.asarray(row["embedding"], dtype=np.float32)
        assert vector.shape == (384,)
        assert float(vector @ reference[row["id"]]) >= 0.9999, row["id"]
        assert row["n_chunks"] == 1 and row["truncated"] is False
        assert row["model"] == "embedded:all-MiniLM-L6-v2"
    summary = read_summary(tmp_path)
    assert summary["read"] == summary["written"] == len(texts)
    assert summary["dead_lettered"] == 0
    assert 0 < summary["padding_efficiency"] <= 1


def test_output_schema_is_the_contract(tmp_path, corpus):
    import pyarrow as pa

    path, _ = corpus
    assert run_cli("embed", "--input", path, "--output", tmp_path) == 0
    files = sorted(tmp_path.glob("results-*.parquet"))
    schema = pq.read_schema(files[0])
    assert schema.field("id").type == pa.string()
    assert schema.field("embedding").type == pa.list_(pa.float32(), 384)
    assert schema.field("n_tokens").type == pa.int32()
    assert schema.field("n_chunks").type == pa.int32()
    assert schema.field("truncated").type == pa.bool_()
    assert schema.field("model").type == pa.string()
    dead = pq.read_schema(sorted(tmp_path.glob("dead_letter-*.parquet"))[0])
    assert dead.names == ["id", "stage", "reason", "message", "preview"]
    assert set(read_summary(tmp_path)) >= {
        "read", "written", "dead_lettered", "real_tokens", "padded_tokens", "padding_efficiency",
        "wall_seconds", "docs_per_second", "model", "task"}


@pytest.mark.slow
def test_multi_processing_runner_gives_the_same_embeddings(tmp_path, corpus, reference):
    """Two worker processes: everything pickles, models load in workers, results unchanged."""
    path, texts = corpus
    code = run_cli("embed", "--input", path, "--output", tmp_path, "--token-budget", "512",
                   "--direct_num_workers=2", "--direct_running_mode=multi_processing")
    assert code == 0
    rows = read_output(tmp_path)
    assert sorted(r["id"] for r in rows) == sorted(texts)
    for row in rows:
        assert float(np.asarray(row["embedding"]) @ reference[row["id"]]) >= 0.9999


def test_tiny_model_embeddings_match_mean_pooling_by_hand(tmp_path, tiny_model):
    """A plain transformers checkpoint: mean pooling over real tokens, then L2 normalization."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    directory = tiny_model("bert", "base")
    texts = SAMPLE_TEXTS[:6]
    path = write_corpus(tmp_path / "in.parquet", {"id": [str(i) for i in range(6)], "text": texts})
    assert run_cli("embed", "--input", path, "--output", tmp_path / "out", "--model", directory,
                   "--token-budget", "96") == 0
    got = {r["id"]: np.asarray(r["embedding"]) for r in read_output(tmp_path / "out")}
    tokenizer, model = AutoTokenizer.from_pretrained(directory), AutoModel.from_pretrained(directory)
    for i, text in enumerate(texts):
        enc = tokenizer(text, return_tensors="pt", truncation=True, max_length=128)
        with torch.no_grad():
            hidden = model(**enc).last_hidden_state[0]
        expected = hidden.mean(0).numpy()
        expected /= np.linalg.norm(expected)
        assert float(got[str(i)] @ expected) >= 0.9999
