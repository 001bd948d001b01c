"""The task contract: what a task adds to the shared tokenize -> batch -> model flow.

A task is a small object built on the launcher from plain options. On the worker it
reduces a batch's model output on the device (``forward``), and turns the outputs of one
document's windows into that document's result columns (``finish``).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from bertbeam.records import WindowOutput


class Task:
    """Base class of every task; subclasses set the class variables and implement the methods."""

    name: ClassVar[str]
    model_class: ClassVar[str] = "AutoModel"
    needs_text: ClassVar[bool] = False
    """Post-processing reads the document text (window 0 carries it)."""
    needs_offsets: ClassVar[bool] = False
    """Windows carry character offsets and sequence ids."""
    pair_input: ClassVar[bool] = False
    """Documents are (question, context) pairs."""
    token_level: ClassVar[tuple[str, ...]] = ()
    """Output keys with one row per token; they are cut to each window's real length."""
    window_index_input: ClassVar[bool] = False
    """``forward``'s inputs hold ``window_index``: each row's window number in its document."""

    def prepare_texts(self, ctx: Any, texts: list[str]) -> list[str]:
        """The texts the tokenizer sees for documents with ``texts`` (the first text of pairs),
        e.g. with a prompt before each; ``ctx`` is the model's ModelContext. Identity here."""
        return texts

    def schema(self, config: Any) -> pa.Schema:
        """The Arrow schema of result rows, ``id`` first; ``config`` is the model's config."""
        raise NotImplementedError

    def forward(self, loaded: Any, inputs: dict[str, Any]) -> dict[str, Any]:
        """Runs the model on padded ``inputs``; returns batched tensors (first dim = batch)."""
        raise NotImplementedError

    def finish(self, ctx: Any, outputs: list[WindowOutput]) -> dict[str, Any]:
        """One document's result columns (without ``id``) from its windows' outputs, in order."""
        raise NotImplementedError


class TaskInputError(ValueError):
    """Raised by ``finish`` when a document is unfit for the task (e.g. fill-mask text with no
    mask token); Postprocess dead-letters it with reason ``bad_task_input``."""


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis (one row of scores, or one row per token)."""
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def chunk_columns(outputs: list[WindowOutput]) -> dict[str, Any]:
    """The ``n_chunks`` and ``truncated`` columns every chunking task writes."""
    return {"n_chunks": len(outputs), "truncated": bool(outputs[0].window.truncated)}


ID_FIELD = pa.field("id", pa.string(), nullable=False)
MODEL_FIELD = pa.field("model", pa.string(), nullable=False)
CHUNK_FIELDS = [pa.field("n_chunks", pa.int32(), nullable=False),
                pa.field("truncated", pa.bool_(), nullable=False)]
