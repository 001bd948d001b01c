"""Long documents: windows with stride, merged back into one row per document."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import read_output, read_summary, run_cli, write_corpus


def _window_embeddings_by_hand(model_dir: str, text: str, max_length: int, stride: int):
    """Per-window normalized mean-pooled embeddings and token counts, straight from transformers."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir)
    enc = tokenizer(text, truncation=True, max_length=max_length, stride=stride,
                    return_overflowing_tokens=True)
    vectors, lengths = [], []
    for ids in enc["input_ids"]:
        with torch.no_grad():
            hidden = model(input_ids=torch.tensor([ids])).last_hidden_state[0]
        v = hidden.mean(0).numpy()
        vectors.append(v / np.linalg.norm(v))
        lengths.append(len(ids))
    return np.stack(vectors), np.array(lengths, dtype=np.float64)


@pytest.mark.parametrize("chunk_pooling", ["mean", "first", "max"])
def test_chunked_embedding_is_the_combination_of_window_embeddings(tmp_path, tiny_model,
                                                                  chunk_pooling):
    from bertbeam.cli.demo import demo_texts

    directory = tiny_model("bert", "base")
    text = " ".join(demo_texts()[:40])
    path = write_corpus(tmp_path / "in.parquet", {"id": ["long", "short"], "text": [text, "tiny"]})
    assert run_cli("embed", "--input", path, "--output", tmp_path / "o", "--model", directory,
                   "--max-length", "64", "--stride", "16", "--token-budget", "256",
                   "--chunk-pooling", chunk_pooling) == 0
    rows = {r["id"]: r for r in read_output(tmp_path / "o")}
    vectors, lengths = _window_embeddings_by_hand(directory, text, 64, 16)
    if chunk_pooling == "mean":
        expected = (vectors * (lengths / lengths.sum())[:, None]).sum(0)
    elif chunk_pooling == "first":
        expected = vectors[0]
    else:
        expected = vectors.max(0)
    expected /= np.linalg.norm(expected)
    long = rows["long"]
    assert long["n_chunks"] == len(lengths) > 3
    assert long["n_tokens"] == int(lengths.sum())
    assert long["truncated"] is False
    np.testing.assert_allclose(np.asarray(long["embedding"]), expected, atol=2e-5)
    assert rows["short"]["n_chunks"] == 1
    summary = read_summary(tmp_path / "o")
    assert summary["chunked_documents"] == 1
    assert summary["windows"] == len(lengths) + 1


def test_truncate_keeps_the_first_window_and_says_so(tmp_path, tiny_model):
    directory = tiny_model("bert", "base")
    text = "word " * 500
    path = write_corpus(tmp_path / "in.parquet", {"id": ["long"], "text": [text]})
    assert run_cli("embed", "--input", path, "--output", tmp_path / "o", "--model", directory,
                   "--max-length", "64", "--long-docs", "truncate") == 0
    (row,) = read_output(tmp_path / "o")
    vectors, _ = _window_embeddings_by_hand(directory, text, 64, 0)
    assert row["n_chunks"] == 1 and row["truncated"] is True
    np.testing.assert_allclose(np.asarray(row["embedding"]), vectors[0], atol=2e-5)
    assert read_summary(tmp_path / "o")["truncated_documents"] == 1


@pytest.mark.slow
def test_a_100k_word_document_and_1000_short_ones_in_one_run(tmp_path):
    """The embedded model, default options: every id written once, the long one chunked."""
    from bertbeam.cli.demo import demo_texts

    texts = demo_texts()
    words = " ".join(texts).split()
    long = " ".join((words * (100_000 // len(words) + 1))[:100_000])
    assert len(long.split()) == 100_000
    ids = ["long"] + [f"s{i}" for i in range(1000)]
    docs = [long] + [texts[i % len(texts)][:300] for i in range(1000)]
    path = write_corpus(tmp_path / "in.parquet", {"id": ids, "text": docs}, row_group_size=250)
    assert run_cli("embed", "--input", path, "--output", tmp_path / "o") == 0
    rows = read_output(tmp_path / "o")
    assert sorted(r["id"] for r in rows) == sorted(ids)
    long_row = next(r for r in rows if r["id"] == "long")
    assert long_row["n_chunks"] > 500
    assert abs(np.linalg.norm(long_row["embedding"]) - 1) < 1e-5
