"""The task contract: what a task adds to the shared tokenize -> batch -> model flow.

A task is a small frozen dataclass built on the launcher from plain options. It declares
its options (fields made with :func:`option` carry the help text the ``label`` command
shows), its window policy and its output schema. On the worker it reduces a batch's model
output on the device (``forward``), and turns the outputs of one document's windows into
that document's result columns (``postprocess``, or ``postprocess_chunk`` for many documents
at once, where the task has a columnar form); all receive the worker's engine
(``bertbeam.core.engine.Engine``: model, tokenizer, config, resolved lengths).
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, get_args, get_origin

import numpy as np
import pyarrow as pa

from bertbeam.core.records import ChunkOutputs, WindowOutput


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
    windows: ClassVar[Literal["all", "first"]] = "all"
    """``first``: the task reads a document's first window only (``long_docs='truncate'``)."""

    @property
    def default_long_docs(self) -> str:
        """What ``long_docs`` a RunSpec made for this task defaults to."""
        return "truncate" if self.windows == "first" else "chunk"

    def check_tokenize(self, tokenize: Any) -> None:
        """Refuses tokenize options the task cannot serve, at construction."""
        if self.windows == "first" and tokenize.long_docs == "chunk":
            raise ValueError(
                f"Task {self.name!r} reads the first window of each document: use "
                "long_docs='truncate' (--long-docs truncate), not 'chunk'.")

    window_index_input: ClassVar[bool] = False
    """``forward``'s inputs hold ``window_index``: each row's window number in its document."""

    def prepare_texts(self, ctx: Any, texts: list[str]) -> list[str]:
        """The texts the tokenizer sees for documents with ``texts`` (the first text of pairs),
        e.g. with a prompt before each; ``ctx`` is the worker's engine. Identity here."""
        return texts

    def schema(self, config: Any) -> pa.Schema:
        """The Arrow schema of result rows, ``id`` first; ``config`` is the model's config."""
        raise NotImplementedError

    def forward(self, engine: Any, inputs: dict[str, Any]) -> dict[str, Any]:
        """Runs ``engine.model`` on padded ``inputs``; returns batched tensors (first dim = batch)."""
        raise NotImplementedError

    def postprocess(self, engine: Any, outputs: list[WindowOutput]) -> dict[str, Any]:
        """One document's result columns (without ``id``) from its windows' outputs, in order."""
        raise NotImplementedError

    def postprocess_chunk(self, engine: Any, outputs: ChunkOutputs) -> dict[str, Any] | None:
        """The result columns (without ``id``; one value per document, as lists or numpy
        arrays) of every document of ``outputs`` at once, or ``None`` where the task has no
        columnar form: the engine then calls :meth:`postprocess` document by document.

        It must give exactly what :meth:`postprocess` gives; on any error the engine falls
        back to :meth:`postprocess`, so that one bad document fails alone."""
        return None


class TaskInputError(ValueError):
    """Raised by ``postprocess`` when a document is unfit for the task (e.g. fill-mask text with no
    mask token); Postprocess dead-letters it with reason ``bad_task_input``."""


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis (one row of scores, or one row per token)."""
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def chunk_columns(outputs: list[WindowOutput]) -> dict[str, Any]:
    """The ``n_chunks`` and ``truncated`` columns every chunking task writes."""
    return {"n_chunks": len(outputs), "truncated": bool(outputs[0].window.truncated)}


def chunk_arrays(outputs: ChunkOutputs) -> dict[str, Any]:
    """:func:`chunk_columns` of every document of ``outputs``, as arrays."""
    return {"n_chunks": outputs.count.astype(np.int32),
            "truncated": outputs.out.windows.truncated[outputs.first]}


ID_FIELD = pa.field("id", pa.string(), nullable=False)
MODEL_FIELD = pa.field("model", pa.string(), nullable=False)
CHUNK_FIELDS = [pa.field("n_chunks", pa.int32(), nullable=False),
                pa.field("truncated", pa.bool_(), nullable=False)]


def option(default: Any, help: str) -> Any:
    """A task option that the ``bertbeam label`` command offers as a flag (``top_k`` ->
    ``--top-k``), with ``help``; its default is the task's own."""
    return dataclasses.field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class TaskOption:
    """One option of a task as the command line sees it."""

    name: str
    flag: str
    help: str
    default: Any
    kind: type
    choices: tuple[Any, ...] | None = None


def task_options(cls: type[Task]) -> list[TaskOption]:
    """The options of a task class made with :func:`option`, in field order."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if "help" not in f.metadata:
            continue
        kind, choices = _kind(hints[f.name])
        out.append(TaskOption(f.name, "--" + f.name.replace("_", "-"), f.metadata["help"],
                              f.default, kind, choices))
    return out


def _kind(hint: Any) -> tuple[type, tuple[Any, ...] | None]:
    args = [a for a in get_args(hint) if a is not type(None)]
    if get_origin(hint) is Literal:
        return str, tuple(get_args(hint))
    if len(args) == 1:  # X | None
        return _kind(args[0])
    if isinstance(hint, type):
        return hint, None
    raise TypeError(f"Task option type {hint!r} has no command-line form.")
