"""Sentence embeddings: pooled (mean / cls / max) and optionally L2-normalized.

Long documents: each window is embedded (and normalized, when the model normalizes) like a
document of its own; the windows are then combined per document — a mean weighted by each
window's token count by default, or the first window, or the element-wise max — and the
result is normalized again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import pyarrow as pa

from bertbeam.config import _check_choice
from bertbeam.records import WindowOutput
from bertbeam.tasks.base import CHUNK_FIELDS, ID_FIELD, MODEL_FIELD, Task, chunk_columns

Pooling = Literal["auto", "mean", "cls", "max"]
ChunkPooling = Literal["mean", "first", "max"]
_ST_POOLING = {"mean_tokens": "mean", "cls_token": "cls", "max_tokens": "max"}


@dataclass(frozen=True, kw_only=True)
class EmbedTask(Task):
    """Options: ``pooling`` (``auto`` reads the sentence-transformers config, else mean),
    ``normalize`` (``None`` follows the checkpoint; plain checkpoints are normalized),
    ``chunk_pooling`` for documents longer than one window."""

    pooling: Pooling = "auto"
    normalize: bool | None = None
    chunk_pooling: ChunkPooling = "mean"

    name: ClassVar[str] = "embed"

    def __post_init__(self) -> None:
        _check_choice("pooling", self.pooling, Pooling)
        _check_choice("chunk_pooling", self.chunk_pooling, ChunkPooling)

    def schema(self, config: Any) -> pa.Schema:
        dim = int(config.hidden_size)
        return pa.schema([
            ID_FIELD,
            pa.field("embedding", pa.list_(pa.float32(), dim), nullable=False),
            pa.field("n_tokens", pa.int32(), nullable=False),
            *CHUNK_FIELDS,
            MODEL_FIELD,
        ])

    def _resolved(self, local_dir: str) -> tuple[str, bool]:
        from bertbeam.models import sentence_transformers_config

        st = sentence_transformers_config(local_dir)
        pooling = self.pooling
        if pooling == "auto":
            pooling = _ST_POOLING.get(st.get("pooling", "mean_tokens"), "mean")
        normalize = self.normalize if self.normalize is not None else st.get("normalize", True)
        return pooling, normalize

    def forward(self, engine: Any, inputs: dict[str, Any]) -> dict[str, Any]:
        import torch

        pooling, _ = self._resolved(engine.local_dir)
        hidden = engine.model(**inputs).last_hidden_state
        mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        if pooling == "cls":
            pooled = hidden[:, 0]
        elif pooling == "max":
            pooled = hidden.masked_fill(mask == 0, torch.finfo(hidden.dtype).min).amax(dim=1)
        else:
            # Summing in float32 keeps bf16/fp16 runs close to the fp32 reference.
            pooled = (hidden.float() * mask.float()).sum(1) / mask.float().sum(1).clamp(min=1e-9)
        return {"embedding": pooled}

    def postprocess(self, engine: Any, outputs: list[WindowOutput]) -> dict[str, Any]:
        _, normalize = self._resolved(engine.local_dir)
        vectors = np.stack([o.values["embedding"] for o in outputs]).astype(np.float32)
        lengths = np.array([o.window.length for o in outputs], dtype=np.float64)
        if normalize:
            # Each window's own embedding is what a single-window document would get.
            vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        if len(outputs) == 1 or self.chunk_pooling == "first":
            vector = vectors[0]
        elif self.chunk_pooling == "max":
            vector = vectors.max(axis=0)
        else:
            vector = (vectors * (lengths / lengths.sum())[:, None]).sum(axis=0).astype(np.float32)
        if normalize:
            vector = vector / max(float(np.linalg.norm(vector)), 1e-12)
        return {
            "embedding": vector.astype(np.float32, copy=False),
            "n_tokens": int(lengths.sum()),
            **chunk_columns(outputs),
            "model": engine.uri,
        }
