"""Sequence classification: one label (or several) per document from a fine-tuned head.

The device returns one row of logits per window; scores are computed on the CPU after the
windows of a long document are merged (mean of window logits by default, or max), so a
chunked document is scored once, like a document that fits in one window.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import pyarrow as pa

from bertbeam.config import check_choice, check_positive
from bertbeam.core.records import ChunkOutputs, WindowOutput
from bertbeam.core.task import (
    CHUNK_FIELDS,
    ID_FIELD,
    MODEL_FIELD,
    Task,
    chunk_arrays,
    chunk_columns,
    option,
    softmax,
)

ChunkMerge = Literal["mean", "max"]

LABEL_SCORE = pa.struct([pa.field("label", pa.string()), pa.field("score", pa.float32())])
LABEL_FIELDS = [
    pa.field("label", pa.string(), nullable=False),
    pa.field("score", pa.float32(), nullable=False),
    pa.field("labels", pa.list_(LABEL_SCORE), nullable=False),
]
"""Columns shared by every labeling task (classify, zero-shot)."""
LOGITS_FIELD = pa.field("logits", pa.list_(pa.float32()), nullable=False)
"""classify with ``keep_logits``: the merged logits, in the model's label order."""


def label_schema() -> pa.Schema:
    """``id, label, score, labels, n_chunks, truncated, model``: the classify / zero-shot schema."""
    return pa.schema([ID_FIELD, *LABEL_FIELDS, *CHUNK_FIELDS, MODEL_FIELD])


def merge_window_rows(rows: np.ndarray, how: ChunkMerge) -> np.ndarray:
    """Combines one row per window ([windows, n]) into one row ([n]) by ``mean`` or ``max``."""
    rows = np.asarray(rows, dtype=np.float64)
    return rows.max(axis=0) if how == "max" else rows.mean(axis=0)


def merge_segments(rows: np.ndarray, segments: np.ndarray, count: np.ndarray,
                   how: ChunkMerge) -> np.ndarray:
    """:func:`merge_window_rows` for many documents at once: document ``g``'s windows are rows
    ``segments[g]`` to ``segments[g] + count[g] - 1``."""
    rows = np.asarray(rows, dtype=np.float64)
    if how == "max":
        return np.maximum.reduceat(rows, segments, axis=0)
    return np.add.reduceat(rows, segments, axis=0) / count[:, None]


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-logits))


def label_columns(names: list[str], scores: np.ndarray, *, top_k: int | None,
                  threshold: float | None = None) -> dict[str, Any]:
    """``label``/``score`` (the best label) and ``labels`` (best first).

    ``labels`` holds the ``top_k`` best labels, or with a ``threshold`` every label scoring
    at least ``threshold``; ties keep the label order of the model.
    """
    order = np.argsort(-scores, kind="stable")
    ranked = [{"label": names[i], "score": float(scores[i])} for i in order]
    if threshold is not None:
        kept = [r for r in ranked if r["score"] >= threshold]
    else:
        kept = ranked[:top_k]
    return {"label": ranked[0]["label"], "score": ranked[0]["score"], "labels": kept}


def label_chunk_columns(rows: list[dict[str, Any]], outputs: ChunkOutputs, uri: str
                        ) -> dict[str, Any]:
    """The classify / zero-shot result columns of a chunk from each document's
    :func:`label_columns`."""
    return {**{k: [r[k] for r in rows] for k in ("label", "score", "labels")},
            **chunk_arrays(outputs), "model": [uri] * len(outputs)}


def id2label(config: Any) -> list[str]:
    """Label names in logit order from a config's ``id2label`` (``LABEL_i`` where absent)."""
    mapping = {int(k): str(v) for k, v in (getattr(config, "id2label", None) or {}).items()}
    n = int(getattr(config, "num_labels", len(mapping)) or len(mapping))
    return [mapping.get(i, f"LABEL_{i}") for i in range(n)]


@dataclass(frozen=True, kw_only=True)
class ClassifyTask(Task):
    """Classifies each document with an ``AutoModelForSequenceClassification`` checkpoint.

    Output columns: ``label``, ``score``, ``labels`` (list of ``{label, score}``, best
    first), ``n_chunks``, ``truncated``, ``model``. Label names come from the checkpoint's
    ``id2label``.

    Attributes:
        top_k: how many labels ``labels`` holds in single-label mode (capped at the number
            of labels).
        multi_label: ``True`` scores each label on its own with a sigmoid and keeps in
            ``labels`` every label scoring at least ``threshold``; ``False`` uses a softmax
            over labels; ``None`` follows the checkpoint like transformers' pipeline does
            (sigmoid when ``problem_type`` is ``multi_label_classification`` or the model
            has one label, softmax otherwise). ``label``/``score`` always hold the best
            label, even when it is under the threshold, so no row has an empty label.
        threshold: minimum sigmoid score for ``labels`` in multi-label mode.
        chunk_merge: how the window logits of a long document are combined before the
            softmax/sigmoid: ``mean`` (default) or ``max``.
        keep_logits: also write ``logits: list<float32>``, the merged logits in the model's
            label order (soft labels for ``bertbeam distill``).

    Example::

        task = ClassifyTask(top_k=3)
        out = docs | InferDocuments(task, run=RunSpec(model=ModelSpec(uri="gs://m/sst2")))
    """

    top_k: int = option(1, "labels listed in `labels`, best first (single-label)")
    multi_label: bool | None = option(
        None, "an independent sigmoid per label; `labels` holds every label over --threshold "
              "(default: as the checkpoint's problem_type says)")
    threshold: float = option(0.5, "with --multi-label: the least score a label in `labels` has")
    chunk_merge: ChunkMerge = option("mean", "how the window logits of a long document combine")
    keep_logits: bool = option(
        False, "also write `logits`: each document's raw (merged) logits in the model's label "
               "order, e.g. as soft labels for `bertbeam distill`")

    name: ClassVar[str] = "classify"
    model_class: ClassVar[str] = "AutoModelForSequenceClassification"

    def __post_init__(self) -> None:
        check_positive("top_k", self.top_k)
        if self.multi_label not in (None, True, False):
            raise ValueError(f"multi_label must be True, False or None, got {self.multi_label!r}.")
        if not isinstance(self.threshold, (int, float)) or not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must be a number between 0 and 1, got {self.threshold!r}.")
        check_choice("chunk_merge", self.chunk_merge, ChunkMerge)

    def schema(self, config: Any) -> pa.Schema:
        schema = label_schema()
        if self.keep_logits:  # before n_chunks: the label columns stay together
            schema = schema.insert(schema.get_field_index("n_chunks"), LOGITS_FIELD)
        return schema

    def uses_sigmoid(self, config: Any) -> bool:
        """Whether scores are per-label sigmoids (multi-label) rather than a softmax."""
        if self.multi_label is not None:
            return self.multi_label
        return (getattr(config, "problem_type", None) == "multi_label_classification"
                or int(getattr(config, "num_labels", 2)) == 1)

    def forward(self, engine: Any, inputs: dict[str, Any]) -> dict[str, Any]:
        return {"logits": engine.model(**inputs).logits}

    def postprocess(self, engine: Any, outputs: list[WindowOutput]) -> dict[str, Any]:
        logits = merge_window_rows(np.stack([o.values["logits"] for o in outputs]), self.chunk_merge)
        kept = {"logits": logits.astype(np.float32).tolist()} if self.keep_logits else {}
        return {**self._labels(engine, logits), **kept, **chunk_columns(outputs), "model": engine.uri}

    def postprocess_chunk(self, engine: Any, outputs: ChunkOutputs) -> dict[str, Any]:
        logits = merge_segments(outputs.out.values["logits"][outputs.window_rows],
                                outputs.segments, outputs.count, self.chunk_merge)
        columns = label_chunk_columns([self._labels(engine, row) for row in logits], outputs,
                                      engine.uri)
        if self.keep_logits:
            columns["logits"] = list(logits.astype(np.float32))
        return columns

    def _labels(self, engine: Any, logits: np.ndarray) -> dict[str, Any]:
        if self.uses_sigmoid(engine.config):
            return label_columns(id2label(engine.config), sigmoid(logits), top_k=None,
                                 threshold=self.threshold)
        return label_columns(id2label(engine.config), softmax(logits), top_k=self.top_k)
