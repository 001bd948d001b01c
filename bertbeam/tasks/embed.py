"""Sentence embeddings, as ``SentenceTransformer.encode`` computes them for the same checkpoint.

A sentence-transformers checkpoint runs its whole module stack (``bertbeam.core.sentence_transformers``):
its prompt (``prompt_name`` / ``prompt``, default its ``default_prompt_name``) before each text,
the transformer, Pooling in any of its modes (prompt tokens left out when the checkpoint says
``include_prompt: false``), its Dense layers on the device, Normalize, then ``truncate_dim``
(after Normalize, as in ``encode``: truncated vectors are not unit length). A plain transformers
checkpoint is mean-pooled and normalized.

Long documents: each window is embedded (and normalized, when the model normalizes) like a
document of its own; the windows are then combined per document — a mean weighted by each
window's token count by default, or the first window, or the element-wise max — and the
result is normalized again. The prompt goes before the document's text, so window 0 starts
with it (and holds exactly what ``encode`` sees for the document); later windows continue the
text without it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import pyarrow as pa

from bertbeam.config import check_choice, check_positive
from bertbeam.core.fingerprint import STAMP_COLUMNS
from bertbeam.core.records import ChunkOutputs, WindowOutput
from bertbeam.core.sentence_transformers import (
    DenseLayer,
    PoolingMode,
    dense_layers,
    exclude_prompt,
    pool,
    prompt_length,
    read_stack,
    stack_dim,
)
from bertbeam.core.task import (
    CHUNK_FIELDS,
    ID_FIELD,
    MODEL_FIELD,
    Task,
    chunk_arrays,
    chunk_columns,
)

Pooling = Literal["auto", "mean", "cls", "max", "mean_sqrt_len_tokens", "weightedmean", "lasttoken"]
ChunkPooling = Literal["mean", "first", "max"]

#: The columns an embed result row has besides ``id`` and the carried ones.
TASK_COLUMNS = ("embedding", "n_tokens", "n_chunks", "truncated", "model", *STAMP_COLUMNS)


@dataclass(frozen=True)
class EmbeddingHead:
    """What an EmbedTask does on one checkpoint: its options resolved against the checkpoint."""

    pooling: tuple[PoolingMode, ...]
    include_prompt: bool
    dense: tuple[DenseLayer, ...]
    normalize: bool
    prompt: str
    """Put before every text (``""``: none); already lowercased when ``lowercase``."""
    lowercase: bool
    """Texts are lowercased before the tokenizer sees them (the checkpoint's do_lower_case)."""
    dim: int
    """The output dimension: after pooling, Dense layers and ``truncate_dim``."""


@dataclass(frozen=True, kw_only=True)
class EmbedTask(Task):
    """Embeds documents: one ``embedding`` vector per document.

    Result columns: ``embedding`` (``fixed_size_list<float32>[dim]``, ``dim`` the checkpoint's
    real output dimension), ``n_tokens``, ``n_chunks``, ``truncated``, ``model``.

    Attributes:
        pooling: ``auto`` follows the checkpoint's Pooling module (mean for plain checkpoints);
            a mode replaces it.
        normalize: ``None`` follows the checkpoint (its Normalize module; plain checkpoints
            are normalized).
        chunk_pooling: how the windows of a document longer than one window are combined.
        prompt_name: one of the checkpoint's prompts (``config_sentence_transformers.json``);
            ``None`` uses its ``default_prompt_name``, if any.
        prompt: a prompt text, instead of ``prompt_name``; ``""`` turns a default prompt off.
        truncate_dim: keep the first ``truncate_dim`` dimensions (Matryoshka models).

    Example::

        task = EmbedTask(prompt_name="query", truncate_dim=64)
        out = docs | EmbedDocuments(task, run=RunSpec(model=ModelSpec(uri="/models/e5")))
    """

    pooling: Pooling = "auto"
    normalize: bool | None = None
    chunk_pooling: ChunkPooling = "mean"
    prompt_name: str | None = None
    prompt: str | None = None
    truncate_dim: int | None = None

    name: ClassVar[str] = "embed"
    window_index_input: ClassVar[bool] = True

    def __post_init__(self) -> None:
        check_choice("pooling", self.pooling, Pooling)
        check_choice("chunk_pooling", self.chunk_pooling, ChunkPooling)
        check_positive("truncate_dim", self.truncate_dim, allow_none=True)
        for name in ("prompt", "prompt_name"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise TypeError(f"{name} must be a string or None, got {type(value).__name__}: {value!r}.")
        if self.prompt is not None and self.prompt_name is not None:
            raise ValueError(f"Pass prompt or prompt_name, not both; got prompt={self.prompt!r} and "
                             f"prompt_name={self.prompt_name!r}.")

    def head(self, local_dir: str, config: Any) -> EmbeddingHead:
        """These options resolved against the checkpoint in ``local_dir`` (``config`` is its
        transformers config); fails on a module bertbeam cannot run or an unknown prompt name."""
        return _resolve(self, local_dir, int(config.hidden_size))

    def schema(self, config: Any) -> pa.Schema:
        """``config`` is the checkpoint's transformers config, loaded from its local directory
        (``AutoConfig.from_pretrained(local_dir)``): the dimension comes from the checkpoint."""
        local_dir = getattr(config, "name_or_path", "")
        if not Path(local_dir).is_dir():
            raise ValueError(f"EmbedTask.schema needs the config of a local checkpoint, "
                             f"AutoConfig.from_pretrained(local_dir); got one from {local_dir!r}.")
        dim = self.head(local_dir, config).dim
        return pa.schema([
            ID_FIELD,
            pa.field("embedding", pa.list_(pa.float32(), dim), nullable=False),
            pa.field("n_tokens", pa.int32(), nullable=False),
            *CHUNK_FIELDS,
            MODEL_FIELD,
        ])

    def prepare_texts(self, engine: Any, texts: list[str]) -> list[str]:
        head = self.head(engine.local_dir, engine.config)
        if head.lowercase:
            texts = [t.lower() for t in texts]
        return [head.prompt + t for t in texts] if head.prompt else texts

    def forward(self, engine: Any, inputs: dict[str, Any]) -> dict[str, Any]:
        head = self.head(engine.local_dir, engine.config)
        inputs = dict(inputs)
        window_index = inputs.pop("window_index", None)
        hidden = engine.model(**inputs).last_hidden_state
        mask = inputs["attention_mask"]
        if head.prompt and not head.include_prompt:
            mask = exclude_prompt(mask, _prompt_length(engine.tokenizer, head.prompt), window_index)
        pooled = pool(hidden, mask, head.pooling)
        if head.dense:
            pooled = dense_layers(engine, head.dense)(pooled)
        return {"embedding": pooled}

    def postprocess(self, engine: Any, outputs: list[WindowOutput]) -> dict[str, Any]:
        vectors = np.stack([o.values["embedding"] for o in outputs])
        lengths = np.array([o.window.length for o in outputs])
        vector, n_tokens = self._combine(engine, vectors, lengths, np.zeros(1, np.int64))
        return {"embedding": vector[0], "n_tokens": int(n_tokens[0]), **chunk_columns(outputs),
                "model": engine.uri}

    def postprocess_chunk(self, engine: Any, outputs: ChunkOutputs) -> dict[str, Any]:
        rows = outputs.window_rows
        windows = outputs.out.windows
        vectors, n_tokens = self._combine(engine, outputs.out.values["embedding"][rows],
                                          windows.lengths[rows], outputs.segments)
        return {"embedding": vectors, "n_tokens": n_tokens.astype(np.int32),
                **chunk_arrays(outputs), "model": [engine.uri] * len(outputs)}

    def _combine(self, engine: Any, vectors: np.ndarray, lengths: np.ndarray,
                 segments: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One vector per document from its windows' (rows ``segments[g]`` up to the next
        segment), and its token count."""
        normalize = self.head(engine.local_dir, engine.config).normalize
        vectors = vectors.astype(np.float32, copy=True)
        lengths = lengths.astype(np.float64)
        if normalize:
            # Each window's own embedding is what a single-window document would get.
            vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        n_tokens = np.add.reduceat(lengths, segments) if len(segments) else lengths[:0]
        if len(vectors) == len(segments) or self.chunk_pooling == "first":
            combined = vectors[segments]
        elif self.chunk_pooling == "max":
            combined = np.maximum.reduceat(vectors, segments, axis=0)
        else:
            weights = lengths / np.repeat(n_tokens, np.diff(np.r_[segments, len(lengths)]))
            combined = np.add.reduceat(vectors * weights[:, None], segments, axis=0).astype(np.float32)
        if normalize:
            combined /= np.maximum(np.linalg.norm(combined, axis=1, keepdims=True), 1e-12)
        # encode truncates after Normalize: the result is a prefix of the unit vector.
        return np.ascontiguousarray(combined[:, : self.truncate_dim], dtype=np.float32), n_tokens


# Keyed by the tokenizer object: a process holds one or two, so the cache keeps them alive
# no longer than the process does anyway.
@lru_cache(maxsize=64)
def _prompt_length(tokenizer: Any, prompt: str) -> int:
    return prompt_length(tokenizer, prompt)


@lru_cache(maxsize=64)
def _resolve(task: EmbedTask, local_dir: str, hidden_size: int) -> EmbeddingHead:
    stack = read_stack(local_dir)
    pooling = (task.pooling,) if task.pooling != "auto" else (stack.pooling if stack else ("mean",))
    if stack is None:
        if task.prompt_name is not None:
            raise ValueError(f"prompt_name={task.prompt_name!r}, but {local_dir!r} is not a "
                             "sentence-transformers checkpoint and has no prompts; pass prompt.")
        head = EmbeddingHead(pooling=pooling, include_prompt=True, dense=(), normalize=True,
                             prompt=task.prompt or "", lowercase=False, dim=len(pooling) * hidden_size)
    else:
        prompt = task.prompt
        if prompt is None:  # as encode: the named prompt, else the default one, if any
            prompts = dict(stack.prompts)
            name = task.prompt_name if task.prompt_name is not None else stack.default_prompt_name
            if name is not None and name not in prompts:
                raise ValueError(f"Invalid prompt_name: {name!r}. The prompts of {local_dir!r} are: "
                                 f"{', '.join(map(repr, sorted(prompts))) or 'none'}.")
            prompt = prompts.get(name, "")
        head = EmbeddingHead(
            pooling=pooling, include_prompt=stack.include_prompt, dense=stack.dense,
            normalize=stack.normalize, prompt=prompt.lower() if stack.do_lower_case else prompt,
            lowercase=stack.do_lower_case, dim=stack_dim(stack, pooling, hidden_size, local_dir))
    if task.normalize is not None:
        head = replace(head, normalize=task.normalize)
    if task.truncate_dim is not None:
        if task.truncate_dim > head.dim:
            raise ValueError(f"truncate_dim={task.truncate_dim} exceeds the {head.dim} dimensions "
                             f"of {local_dir!r}; pass at most {head.dim}.")
        head = replace(head, dim=task.truncate_dim)
    return head
