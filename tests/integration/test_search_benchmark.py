"""The search benchmark: its exact search and recall, and the script end to end at a tiny
size (a smoke run: no latency thresholds, which are for people to read)."""

from __future__ import annotations

import json

import numpy as np

from benchmarks.search import clustered_vectors, exact_neighbours, main, recall_at_k


def test_exact_neighbours_and_recall():
    base = np.array([[1, 0], [0, 1], [0.8, 0.6], [-1, 0]], dtype=np.float32)
    queries = np.array([[1, 0.1], [0.5, -1]], dtype=np.float32)
    assert exact_neighbours(base, queries, 2).tolist() == [[0, 2], [0, 2]]
    assert recall_at_k(np.array([[2, 0], [3, 2]]), np.array([[0, 2], [0, 2]])) == 0.75
    vectors = clustered_vectors(10, 8, seed=3)
    assert vectors.dtype == np.float32 and np.allclose(np.linalg.norm(vectors, axis=1), 1)
    assert np.array_equal(vectors, clustered_vectors(10, 8, seed=3))


def test_smoke_run_writes_json_and_chart(tmp_path):
    assert main(["--smoke", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "search-smoke.json").read_text())
    assert result["vectors"] == 2000 and result["build"]["vectors_per_second"] > 0
    assert [p["ef_search"] for p in result["sweep"]] == [16, 32, 64, 128, 256]
    assert result["default"]["recall"] >= 0.95
    assert result["default"]["p50_ms"] > 0
    assert (tmp_path / "search-smoke.png").read_bytes()[:4] == b"\x89PNG"
