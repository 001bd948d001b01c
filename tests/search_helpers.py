"""Embed results as ``bertbeam embed`` writes them, with carried columns, for the index and
vector-database tests (no Beam pipeline needed to make them)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def embed_texts(model_dir: str, texts: list[str]) -> np.ndarray:
    """Embeddings of ``texts`` as bertbeam computes them (through ``BertModelHandler``)."""
    from bertbeam.beam.handler import BertModelHandler
    from bertbeam.config import ModelSpec, RunSpec
    from bertbeam.tasks.embed import EmbedTask

    handler = BertModelHandler(EmbedTask(), run=RunSpec(model=ModelSpec(uri=model_dir, device="cpu")))
    model = handler.load_model()
    return np.stack([r.inference["embedding"] for r in handler.run_inference(texts, model)])


def results_table(ids: list[str], vectors: np.ndarray, model: str, **carried: list) -> pa.Table:
    """A results table with the embed task's columns and ``carried`` columns after ``id``."""
    n, dim = vectors.shape
    embedding = pa.FixedSizeListArray.from_arrays(pa.array(vectors.astype(np.float32).ravel()), dim)
    return pa.table({
        "id": pa.array(ids, pa.string()),
        **carried,
        "embedding": embedding,
        "n_tokens": pa.array([7] * n, pa.int32()),
        "n_chunks": pa.array([1] * n, pa.int32()),
        "truncated": pa.array([False] * n),
        "model": pa.array([model] * n),
    })


def write_results(directory: Path, table: pa.Table, *, files: int = 2,
                  row_group_size: int | None = None) -> str:
    """Writes ``table`` as ``results-NNNNN-of-NNNNN.parquet`` files; returns their glob."""
    directory.mkdir(parents=True, exist_ok=True)
    per_file = -(-table.num_rows // files)
    for i in range(files):
        pq.write_table(table.slice(i * per_file, per_file),
                       directory / f"results-{i:05d}-of-{files:05d}.parquet",
                       row_group_size=row_group_size)
    return str(directory / "results-*.parquet")
