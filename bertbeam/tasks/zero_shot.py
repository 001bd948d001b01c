"""Zero-shot labels with any embedding model: each document gets its nearest label.

Labels are embedded on the worker, once per process and model, with the documents' own model,
pooling and device (never on the launcher). A document's embedding is combined over its
windows exactly as ``EmbedTask`` does, then compared with every label by cosine similarity.

Scores are ``softmax(cosine / temperature)`` over all labels, so they sum to 1 over the whole
label set. The default temperature 0.05 is the scale (20) that sentence-transformers models
such as all-MiniLM-L6-v2 were trained with (``MultipleNegativesRankingLoss``).
"""

from __future__ import annotations

import math
import threading
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
import pyarrow as pa

from bertbeam.config import check_choice
from bertbeam.core.records import ChunkOutputs, WindowOutput
from bertbeam.core.task import Task, chunk_columns, option, softmax
from bertbeam.tasks.classify import label_chunk_columns, label_columns, label_schema
from bertbeam.tasks.embed import EmbedTask, Pooling

ZeroShotChunkPooling = Literal["mean", "first"]

DEFAULT_TEMPLATE = "This text is about {label}."
"""How a label without a description becomes the text that is embedded."""
DEFAULT_TEMPERATURE = 0.05

def parse_labels(lines: Iterable[str]) -> tuple[tuple[str, ...], tuple[str | None, ...] | None]:
    """Reads a labels file: one ``label`` or ``label: description`` a line.

    The first colon separates the label from its description; blank lines and lines starting
    with ``#`` are skipped. Returns ``(labels, descriptions)``, where ``descriptions`` is
    ``None`` when no line has one and otherwise holds ``None`` for lines without one.

    Example::

        labels, descriptions = parse_labels(Path("labels.txt").read_text().splitlines())
        task = ZeroShotTask(labels=labels, descriptions=descriptions)
    """
    labels: list[str] = []
    descriptions: list[str | None] = []
    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        label, _, description = (part.strip() for part in line.partition(":"))
        if not label:
            raise ValueError(f"Line {number} of the labels has no label before the colon: {raw!r}.")
        if label in labels:
            raise ValueError(f"Label {label!r} appears twice (again on line {number}); "
                             "each label must be given once.")
        labels.append(label)
        descriptions.append(description or None)
    if not labels:
        raise ValueError("No labels found: expected one 'label' or 'label: description' a line.")
    return tuple(labels), (tuple(descriptions) if any(descriptions) else None)


@dataclass(frozen=True, kw_only=True)
class ZeroShotTask(Task):
    """Labels documents with the nearest of ``labels`` by cosine similarity of embeddings.

    Result columns: ``label``, ``score`` (of the best label), ``labels`` (the ``top_k`` best
    labels with their scores, best first), ``n_chunks``, ``truncated``, ``model``.

    Attributes:
        labels: the label names, written as they are into the output.
        descriptions: ``None``, or one description (or ``None``) per label; a label with a
            description is embedded as ``"{label}: {description}"``.
        temperature: scores are ``softmax(cosine / temperature)`` over all labels; lower is
            sharper. The default 0.05 matches contrastively trained embedding models.
        top_k: how many labels the ``labels`` column lists.
        template: how a label without a description is embedded; must contain ``{label}``.
        pooling: token pooling of the embedding model, as in ``EmbedTask``.
        chunk_pooling: how the windows of a long document are combined, as in ``EmbedTask``
            (``max`` is not offered: scoring relies on combining windows linearly).

    Example::

        task = ZeroShotTask(labels=("sports", "politics", "cooking"), top_k=2)
        out = docs | InferDocuments(task, run=RunSpec())
    """

    labels: tuple[str, ...]
    descriptions: tuple[str | None, ...] | None = None
    temperature: float = option(DEFAULT_TEMPERATURE, "softmax temperature over cosine similarities")
    top_k: int = option(1, "labels listed in `labels`, best first")
    template: str = DEFAULT_TEMPLATE
    pooling: Pooling = "auto"
    chunk_pooling: ZeroShotChunkPooling = "mean"
    _embedder: EmbedTask = field(init=False, repr=False, compare=False)

    name: ClassVar[str] = "zero-shot"

    def __post_init__(self) -> None:
        labels = _as_tuple("labels", self.labels)
        if not labels or not all(isinstance(x, str) and x.strip() for x in labels):
            raise ValueError(f"labels must be a non-empty sequence of non-empty strings, got {self.labels!r}.")
        if len(set(labels)) != len(labels):
            duplicates = sorted({x for x in labels if labels.count(x) > 1})
            raise ValueError(f"labels must be unique, but {duplicates!r} appear more than once.")
        descriptions = None if self.descriptions is None else _as_tuple("descriptions", self.descriptions)
        if descriptions is not None and len(descriptions) != len(labels):
            raise ValueError(f"descriptions must have one entry per label ({len(labels)}), "
                             f"got {len(descriptions)}: {self.descriptions!r}.")
        if (isinstance(self.temperature, bool) or not isinstance(self.temperature, int | float)
                or not math.isfinite(self.temperature) or self.temperature <= 0):
            raise ValueError(f"temperature must be a positive number, got {self.temperature!r}.")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or not 1 <= self.top_k <= len(labels):
            raise ValueError(f"top_k must be an integer from 1 to the number of labels "
                             f"({len(labels)}), got {self.top_k!r}.")
        if "{label}" not in self.template:
            raise ValueError(f"template must contain '{{label}}', got {self.template!r}.")
        check_choice("chunk_pooling", self.chunk_pooling, ZeroShotChunkPooling)
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "descriptions", descriptions)
        # Unnormalized, so that finish() can divide the combined label dot products by the
        # combined vector's own norm; with no prompt, so that documents and labels are
        # embedded alike, as plain texts.
        object.__setattr__(self, "_embedder", EmbedTask(
            pooling=self.pooling, normalize=False, chunk_pooling=self.chunk_pooling, prompt=""))

    @property
    def label_texts(self) -> tuple[str, ...]:
        """The texts embedded for the labels, in label order."""
        descriptions = self.descriptions or (None,) * len(self.labels)
        return tuple(f"{label}: {d}" if d else self.template.format(label=label)
                     for label, d in zip(self.labels, descriptions, strict=True))

    def schema(self, config: Any) -> pa.Schema:
        # Resolving the embedding head here, on the launcher, fails a checkpoint with a module
        # bertbeam cannot run before the job starts (not on every document on the workers).
        if config is not None:
            self._embedder.schema(config)
        return label_schema()

    def prepare_texts(self, engine: Any, texts: list[str]) -> list[str]:
        return self._embedder.prepare_texts(engine, texts)

    def forward(self, engine: Any, inputs: dict[str, Any]) -> dict[str, Any]:
        import torch  # the model stack loads where it is used (start-up)

        pooled = self._embedder.forward(engine, inputs)["embedding"].float()
        # Unit windows, as EmbedTask combines them for a normalizing model: a long document's
        # vector is then the same here as in `bertbeam embed`.
        pooled = torch.nn.functional.normalize(pooled, dim=1)
        unit_labels = _label_matrix(engine, self._embedder, self.label_texts)
        # Dot products are linear in the embedding, so appending them to it lets EmbedTask's
        # window combination carry them along: the combined tail is the combined vector's
        # dot product with each label, without the label matrix ever leaving this process.
        return {"embedding": torch.cat([pooled, pooled @ unit_labels.T], dim=1)}

    def postprocess(self, engine: Any, outputs: list[WindowOutput]) -> dict[str, Any]:
        combined = self._embedder.postprocess(engine, outputs)["embedding"]
        (scores,) = self._scores(combined[None, :])
        return {
            **label_columns(list(self.labels), scores, top_k=self.top_k),
            **chunk_columns(outputs),
            "model": engine.uri,
        }

    def postprocess_chunk(self, engine: Any, outputs: ChunkOutputs) -> dict[str, Any]:
        scores = self._scores(self._embedder.postprocess_chunk(engine, outputs)["embedding"])
        names = list(self.labels)
        return label_chunk_columns([label_columns(names, row, top_k=self.top_k) for row in scores],
                                   outputs, engine.uri)

    def _scores(self, combined: np.ndarray) -> np.ndarray:
        """Label scores, one row per document, from combined ``[vector, label dots]`` rows."""
        combined = combined.astype(np.float64)
        k = len(self.labels)
        vectors, dots = combined[:, :-k], combined[:, -k:]
        cosine = dots / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        return softmax(cosine / self.temperature)


def _as_tuple(name: str, value: Any) -> tuple:
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise TypeError(f"{name} must be a tuple or list of strings, got {type(value).__name__}: {value!r}.")
    return tuple(value)


_LABEL_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_LABEL_LOCK = threading.Lock()


def _label_matrix(engine: Any, embedder: EmbedTask, texts: tuple[str, ...]) -> Any:
    """Unit-norm label embeddings [labels, dim] on the model's device: computed on first use,
    then reused by every batch (and thread) of this process that runs the same model."""
    key = (texts, embedder.pooling, engine.max_length)
    with _LABEL_LOCK:
        per_model = _LABEL_CACHE.setdefault(engine.model, {})
        if key not in per_model:
            per_model[key] = _embed_texts(engine, embedder, texts)
        return per_model[key]


def _embed_texts(engine: Any, embedder: EmbedTask, texts: tuple[str, ...]) -> Any:
    """Label texts embedded like documents: the engine's window length, no token type ids."""
    import torch  # the model stack loads where it is used (start-up)

    with engine.loaded.tokenizer_lock:
        encoded = engine.tokenizer(embedder.prepare_texts(engine, list(texts)), padding=True,
                                   truncation=True, max_length=engine.max_length,
                                   return_token_type_ids=False, return_tensors="pt")
    inputs = {k: v.to(engine.device) for k, v in encoded.items()}
    with torch.inference_mode():
        vectors = embedder.forward(engine, inputs)["embedding"].float()
    return torch.nn.functional.normalize(vectors, dim=1)
