"""The engine: everything a worker process needs to run one task, loaded and decided once.

An :class:`Engine` is built once per process for an :class:`EngineSpec` (model, tokenize
options, task). It holds the model and its tokenizer (one load, shared by every engine of the
process that uses the same checkpoint and head), and resolves the window length, stride, pad
id, device, dtype and padding once. Its steps are the whole flow, each over a chunk of many
documents in columnar form (:mod:`bertbeam.core.records`):

* :meth:`Engine.encode`: a DocumentChunk -> a WindowChunk (packed token arrays), in one
  vectorized tokenizer call;
* :meth:`Engine.plan`: a WindowChunk -> a BatchPlan (length-sorted, token-budgeted batches);
* :meth:`Engine.submit` / :meth:`Engine.collect` (or :meth:`Engine.run`): a BatchPlan -> an
  OutputChunk, with out-of-memory splitting and bisection of a failing batch down to the
  windows that fail; ``submit`` returns at once, so the next chunk is tokenized while the
  model runs;
* :meth:`Engine.postprocess`: an OutputChunk -> Results (result columns and dead letters).

The Beam stages (``Tokenize``, ``BatchByTokens``, ``RunModel``, ``Postprocess``) and
``BertModelHandler`` are thin adapters over these steps, so a pipeline and a RunInference
user get the same windows, batches, outputs and dead letters.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import math
import pickle
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from apache_beam.utils import shared

from bertbeam.config import BatchSpec, ModelSpec, RunSpec, TokenizeSpec
from bertbeam.core import metrics
from bertbeam.core.deadletter import DeadLetter, Reason, Stage
from bertbeam.core.memory import HeapTrimmer
from bertbeam.core.models import acquire_model
from bertbeam.core.planning import plan_batches
from bertbeam.core.records import (
    BatchPlan,
    ChunkOutputs,
    Document,
    DocumentChunk,
    OutputChunk,
    Results,
    WindowChunk,
)
from bertbeam.core.sentence_transformers import max_seq_length
from bertbeam.core.task import Task, TaskInputError

_LOG = logging.getLogger(__name__)

GPU_PAD_MULTIPLE = 8
PART_WINDOWS = 1024
"""Windows a part of :meth:`Engine.collect_parts` holds at least (the plan's last excepted),
unless :data:`PART_SECONDS` have passed since the last part left."""
PART_SECONDS = 0.5
"""The longest :meth:`Engine.collect_parts` holds finished documents back to make a part of
:data:`PART_WINDOWS`: with a costly model a plan's batches take seconds, and its documents
are written (and counted in the progress) as they finish, not all at the end of the plan."""
_HARD_MAX_LENGTH = 512
# Models whose position ids start after the padding index (RoBERTa family): two positions fewer.
_OFFSET_POSITIONS = {"roberta", "xlm-roberta", "camembert", "longformer"}
_SHARED = shared.Shared()


@dataclass(frozen=True)
class EngineSpec:
    """What an engine is built from: plain, picklable configuration made on the launcher."""

    model: ModelSpec
    tokenize: TokenizeSpec
    task: Task

    def __post_init__(self) -> None:
        self.task.check_tokenize(self.tokenize)

    @property
    def key(self) -> str:
        return hashlib.sha256(pickle.dumps(self)).hexdigest()


def engine_spec(task: Task, run: RunSpec | None) -> EngineSpec:
    """The EngineSpec of a task and run; a run made for the task when none is given (fill-mask
    then reads first windows only)."""
    if not isinstance(task, Task):
        raise TypeError(f"task must be a bertbeam Task such as EmbedTask(), got "
                        f"{type(task).__name__}: {task!r}.")
    if run is None:
        run = RunSpec(tokenize=TokenizeSpec(long_docs=task.default_long_docs))
    if not isinstance(run, RunSpec):
        raise TypeError(f"run must be a RunSpec or None, got {type(run).__name__}.")
    return EngineSpec(run.model, run.tokenize, task)


def resolve_max_length(tokenizer: Any, config: Any, local_dir: str, spec: TokenizeSpec) -> int:
    """Window length: the spec's, else sentence-transformers' or the tokenizer's, within the model."""
    limit = getattr(config, "max_position_embeddings", _HARD_MAX_LENGTH)
    if getattr(config, "model_type", "") in _OFFSET_POSITIONS:
        limit -= 2
    if spec.max_length is not None:
        if spec.max_length > limit:
            raise ValueError(f"max_length={spec.max_length} exceeds the model's limit of {limit} tokens.")
        return spec.max_length
    preferred = max_seq_length(local_dir)
    if preferred is None:
        preferred = min(int(getattr(tokenizer, "model_max_length", _HARD_MAX_LENGTH)), _HARD_MAX_LENGTH)
    return min(preferred, limit)


NEARLY_FREE_FLOPS_PER_TOKEN = 1_000_000
"""Below this many forward FLOPs per token (all-MiniLM-L6-v2: 21 million; a 1-layer BERT of
hidden size 32: 13 thousand) a model costs less than the work around it."""
REFERENCE_FLOPS_PER_TOKEN = 21_233_664
"""all-MiniLM-L6-v2's, the model ``BatchSpec.batch_overhead_tokens`` was measured with."""


def flops_per_token(config: Any) -> int | None:
    """Forward FLOPs of the encoder of ``config`` per token, 2 x layers x (4 d^2 + 2 d f)
    (attention scores left out); ``None`` where the config does not say its shape."""
    layers = getattr(config, "num_hidden_layers", getattr(config, "n_layers", None))
    hidden = getattr(config, "hidden_size", getattr(config, "dim", None))
    ffn = getattr(config, "intermediate_size", getattr(config, "hidden_dim", None))
    if not all(isinstance(v, int) for v in (layers, hidden, ffn)):
        return None
    return 2 * layers * (4 * hidden * hidden + 2 * hidden * ffn)


def nearly_free(config: Any) -> bool:
    """Whether the encoder of ``config`` costs under :data:`NEARLY_FREE_FLOPS_PER_TOKEN`;
    ``False`` where the config does not say its shape."""
    flops = flops_per_token(config)
    return flops is not None and flops < NEARLY_FREE_FLOPS_PER_TOKEN


class BrokenTokenizerError(RuntimeError):
    """The tokenizers library cuts long documents short (it returns too few windows)."""


def check_overflow(tokenizer: Any, max_length: int, stride: int) -> None:
    """Self-check of long-document windows with this worker's tokenizers library: a text of
    several windows must come back as all of them. tokenizers 0.23.1 and 0.23.2 return two
    windows whatever the length (a 2,000-word text lost nine tenths of its tokens, silently).
    """
    text = " ".join(["the cat sat on a mat"] * max(4, max_length // 2))
    n = len(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])
    content = max_length - tokenizer.num_special_tokens_to_add(pair=False)
    expected = 1 + math.ceil(max(0, n - content) / max(1, content - stride))
    got = len(tokenizer([text], truncation=True, max_length=max_length, stride=stride,
                        return_overflowing_tokens=True, padding=False)["input_ids"])
    if got != expected:
        import tokenizers  # the model stack loads where it is used (start-up)

        raise BrokenTokenizerError(
            f"tokenizers {tokenizers.__version__} cut a {n}-token text into {got} windows of "
            f"{max_length} tokens (stride {stride}) where {expected} are due: it would drop "
            "the rest of every long document. Install a working version: "
            "pip install 'tokenizers>=0.21,!=0.23.1,!=0.23.2'.")


class Engine:
    """One task on one worker process: model, tokenizer and resolved settings, with the
    encode -> run -> postprocess steps. Get it with :meth:`acquire`, never build it per element.

    Attributes:
        spec: what it was built from.
        model, tokenizer, config, device, dtype: the loaded checkpoint.
        uri, local_dir: where the checkpoint came from and where it lies on this worker.
        max_length, stride: the resolved window length and overlap.
        pad_id: the id padding positions get.
        streams: batches run at once (threads) on a CPU; 1 on a GPU.

    Example::

        engine = Engine.acquire(EngineSpec(ModelSpec(), TokenizeSpec(), EmbedTask()))
        results = engine.infer(DocumentChunk.of(docs), BatchSpec())
        table = results.record_batch(schema)  # and results.dead: the dead letters
    """

    def __init__(self, spec: EngineSpec, loaded: Any):
        self.spec = spec
        self.task = spec.task
        self.loaded = loaded
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.config = loaded.config
        self.device = loaded.device
        self.dtype = loaded.dtype
        self.uri = loaded.uri
        self.local_dir = loaded.local_dir
        self.streams = loaded.streams
        self.max_length = resolve_max_length(loaded.tokenizer, loaded.config, loaded.local_dir,
                                             spec.tokenize)
        self.chunk = spec.tokenize.long_docs == "chunk"
        self.stride = spec.tokenize.resolved_stride(self.max_length) if self.chunk else 0
        pad = loaded.tokenizer.pad_token_id
        self.pad_id = 0 if pad is None else int(pad)
        self._type_ids = "token_type_ids" in loaded.tokenizer.model_input_names
        self._specials = loaded.tokenizer.num_special_tokens_to_add(pair=spec.task.pair_input)
        self._max_tokens: int | None = None  # learned from CUDA out-of-memory errors
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        self._trimmer = HeapTrimmer() if self.device.type == "cpu" else None

    @classmethod
    def acquire(cls, spec: EngineSpec) -> Engine:
        """The process-wide engine for ``spec``, built on first use (thread-safe); it lives
        while a stage of this process holds it (Beam's ``shared.Shared``)."""
        return _SHARED.acquire(lambda: cls._build(spec), tag=spec.key)

    @classmethod
    def _build(cls, spec: EngineSpec) -> Engine:
        engine = cls(spec, acquire_model(spec.model, spec.task.model_class))
        if engine.chunk:
            with engine.loaded.tokenizer_lock:
                check_overflow(engine.tokenizer, engine.max_length, engine.stride)
        _LOG.info("Engine for %s (%s) on %s: windows of %d tokens, stride %d",
                  spec.task.name, spec.model.uri, engine.device, engine.max_length, engine.stride)
        return engine

    # -- encode ------------------------------------------------------------------------------

    def encode(self, docs: DocumentChunk) -> tuple[WindowChunk | None, list[DeadLetter]]:
        """The windows of ``docs`` (packed, in document order), tokenized in one call, and
        the dead letters of documents without windows. A document the tokenizer fails on
        alone becomes a DeadLetter; its neighbours are unaffected."""
        try:
            return self._encode(docs)
        except BaseException as exc:  # noqa: BLE001 - tokenizers raises PanicException
            if isinstance(exc, KeyboardInterrupt | SystemExit):
                raise
        parts, dead = [], []
        for i in range(len(docs)):
            try:
                windows, empty = self._encode(docs.take([i]))
            except BaseException as exc:  # noqa: BLE001
                if isinstance(exc, KeyboardInterrupt | SystemExit):
                    raise
                dead.append(_tokenizer_dead_letter(docs.document(i), exc))
                continue
            dead.extend(empty)
            if windows is not None:
                parts.append(windows)
        return (WindowChunk.concat(parts) if parts else None), dead

    def _encode(self, docs: DocumentChunk) -> tuple[WindowChunk | None, list[DeadLetter]]:
        task = self.task
        pairs = docs.text_pairs if task.pair_input else None
        texts = task.prepare_texts(self, docs.texts)  # e.g. an embedding prompt
        windows, counts = self._tokenize(texts, pairs)
        n_docs, n = len(docs), len(windows)
        # In chunk mode a document's windows follow each other; truncating, only its first
        # is there (``counts`` still says how many it would have had).
        mapping = np.repeat(np.arange(n_docs), counts) if self.chunk else np.arange(n_docs)
        # An Encoding's length is its number of ids; the ids themselves are read once, into
        # the packed array (a list per window, each freed as soon as it is copied).
        lengths = np.fromiter(map(len, windows), np.int64, n)
        if self.chunk:
            index = np.arange(n) - np.searchsorted(mapping, np.arange(n_docs))[mapping]
            first = index == 0
        else:
            index, first = np.zeros(n, np.int64), np.ones(n, dtype=bool)
        # Text the tokenizer drops entirely (combining marks, say) has no window 0 with a
        # token of it: no answer, label or embedding can come from it.
        if pairs is not None:
            nothing = np.zeros(n, dtype=bool)
            for i in np.flatnonzero(first):
                nothing[i] = not {0, 1} <= set(windows[i].sequence_ids)
        else:
            nothing = first & (lengths <= self._specials)
        dead = []
        if nothing.any():
            empty = np.zeros(n_docs, dtype=bool)
            empty[mapping[nothing]] = True
            dead = [DeadLetter.of(docs.ids[d], Reason.EMPTY_TEXT, "the text tokenizes to no tokens",
                                  value=pairs[d] if pairs is not None else docs.texts[d],
                                  stage=Stage.TOKENIZE) for d in np.flatnonzero(empty)]
            rows = np.flatnonzero(~empty[mapping])
            if len(rows) == 0:
                return None, dead
            windows = [windows[i] for i in rows]
            mapping, index, lengths = mapping[rows], index[rows], lengths[rows]
        total = int(lengths.sum())

        def flat(values: Any, dtype: Any) -> np.ndarray:
            return np.fromiter(itertools.chain.from_iterable(values), dtype, total)

        n_windows = np.asarray(counts)[mapping]
        chunk = WindowChunk(
            docs=docs,
            input_ids=flat((w.ids for w in windows), np.int32),
            starts=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
            doc=mapping.astype(np.int32),
            index=index.astype(np.int32),
            n_windows=(n_windows if self.chunk else np.ones_like(n_windows)).astype(np.int32),
            truncated=(~np.full(len(mapping), self.chunk)) & (n_windows > 1),
            type_ids=(flat((w.type_ids for w in windows), np.int8)
                      if self._type_ids and pairs is not None else None),
            offsets=(np.array([o for w in windows for o in w.offsets], dtype=np.int32).reshape(-1, 2)
                     if task.needs_offsets else None),
            sequence_ids=(flat(([-1 if s is None else s for s in w.sequence_ids] for w in windows),
                               np.int8) if task.needs_offsets else None),
        )
        firsts = chunk.index == 0
        metrics.inc(metrics.WINDOWS, len(mapping))
        metrics.inc(metrics.CHUNKED_DOCS, int((firsts & (chunk.n_windows > 1)).sum()))
        metrics.inc(metrics.TRUNCATED_DOCS, int(chunk.truncated.sum()))
        return chunk, dead

    def _tokenize(self, texts: list[str], pairs: list[str] | None) -> tuple[list[Any], np.ndarray]:
        """The windows' encodings and each document's number of windows: in chunk mode every
        window (a document's first, then its overflowing ones), truncating only the first.
        What ``tokenizer(texts, pairs, truncation=..., stride=...,
        return_overflowing_tokens=True)`` computes, from the Rust tokenizer directly, without
        transformers' per-window conversion to Python dicts (a third of the tokenizing time
        on short documents), and without offsets where the task needs none. The Rust call
        runs without the GIL."""
        tokenizer = self.tokenizer
        backend = tokenizer.backend_tokenizer
        target = {"max_length": self.max_length, "stride": self.stride,
                  "strategy": "only_second" if pairs is not None else "longest_first",
                  "direction": tokenizer.truncation_side}
        inputs = list(zip(texts, pairs, strict=True)) if pairs is not None else texts
        encode = backend.encode_batch
        if not self.task.needs_offsets and hasattr(backend, "encode_batch_fast"):
            encode = backend.encode_batch_fast  # the same ids, no character offsets
        with self.loaded.tokenizer_lock:
            current = backend.truncation
            if current is None or {k: current.get(k) for k in target} != target:
                backend.enable_truncation(**target)
            if backend.padding is not None:
                backend.no_padding()
            split = bool(getattr(tokenizer, "split_special_tokens", False))
            if backend.encode_special_tokens != split:
                backend.encode_special_tokens = split
            encodings = encode(inputs, add_special_tokens=True)
        if not self.chunk:
            # Only a window cut at the full length can have more text after it.
            counts = np.ones(len(encodings), np.int64)
            for i in np.flatnonzero(np.fromiter(map(len, encodings), np.int64, len(encodings))
                                    >= self.max_length):
                counts[i] += len(encodings[i].overflowing)
            return encodings, counts
        windows, counts = [], []
        for encoding in encodings:
            windows.append(encoding)
            overflowing = encoding.overflowing
            windows.extend(overflowing)
            counts.append(1 + len(overflowing))
        return windows, np.asarray(counts, np.int64)

    # -- batch -------------------------------------------------------------------------------

    def pad_multiple(self, requested: int | str) -> int:
        """``BatchSpec.pad_multiple`` on this worker: ``auto`` is 8 on a GPU, 1 on a CPU."""
        if requested != "auto":
            return int(requested)
        return GPU_PAD_MULTIPLE if self.device.type == "cuda" else 1

    def batch_budget(self, spec: BatchSpec) -> int:
        """Padded tokens per batch: ``spec.token_budget`` shared by the streams that run
        batches at once (one on a GPU), which bounds the activations' memory of a real
        model; a nearly free model (:func:`nearly_free`: activations of a few bytes per
        token) gives each stream the whole budget, so that its batches stay large enough to
        pay for their fixed cost."""
        if self.streams <= 1 or nearly_free(self.config):
            return spec.token_budget
        return max(1, spec.token_budget // self.streams)

    def batch_overhead(self, spec: BatchSpec) -> int:
        """The fixed cost of one more batch in padded tokens: ``spec.batch_overhead_tokens``
        for a model that costs what all-MiniLM-L6-v2 costs per token or more; a cheaper
        model's tokens are worth less against the same fixed cost, so proportionally more
        of them, up to a whole batch (a nearly free model gets the fewest batches the budget
        allows, as the sorted loop cuts them)."""
        flops = flops_per_token(self.config)
        if flops is None or flops >= REFERENCE_FLOPS_PER_TOKEN:
            return spec.batch_overhead_tokens
        scaled = spec.batch_overhead_tokens * REFERENCE_FLOPS_PER_TOKEN // max(flops, 1)
        return max(spec.batch_overhead_tokens, min(self.batch_budget(spec), scaled))

    def plan(self, windows: WindowChunk, spec: BatchSpec) -> BatchPlan:
        """``windows`` cut into length-sorted batches within ``spec``'s token budget, padded
        for this worker's device. CPU streams share the budget (each batch gets its share),
        so the tokens in flight, and with them the activations' memory, stay within it.

        A plan too small to give each CPU stream a batch (a streaming bundle of a few
        documents, the last chunk of a corpus) is cut into about one batch per stream
        instead: one batch would run on one core while the others wait (on 2 cores,
        MiniLM over 10 short documents: 5 + 5 on two threads takes ~60% of the time of 10
        on one)."""
        multiple = self.pad_multiple(spec.pad_multiple)
        lengths = windows.lengths
        overhead = self.batch_overhead(spec)
        cuts = plan_batches(lengths, self.batch_budget(spec), spec.max_batch_size, multiple,
                            overhead)
        if len(cuts) < self.streams and len(lengths) > len(cuts):
            longest = -(-int(lengths.max()) // multiple) * multiple
            share = max(longest, -(-int(lengths.sum()) // self.streams))
            cuts = plan_batches(lengths, share, spec.max_batch_size, multiple, overhead)
        return BatchPlan(windows, [rows for rows, _ in cuts], [padded for _, padded in cuts])

    # -- run ---------------------------------------------------------------------------------

    def infer(self, docs: DocumentChunk, spec: BatchSpec) -> Results:
        """encode -> plan -> run -> postprocess for one chunk, here and now (waits for the
        device): what ``BertModelHandler`` and tests use; the Beam stages run the steps
        apart, so that tokenizing the next chunk overlaps the model."""
        windows, dead = self.encode(docs)
        if windows is None:
            return Results({"id": []}, dead)
        results = self.postprocess(self.run(self.plan(windows, spec)))
        results.dead[:0] = dead
        return results

    def run(self, plan: BatchPlan) -> OutputChunk:
        """The outputs of every window of ``plan`` (waits for them)."""
        return self.collect(plan, self.submit(plan))

    def submit(self, plan: BatchPlan) -> list[Any]:
        """Starts every batch of ``plan`` and returns at once: on a CPU with several streams
        on the threads of the engine's pool, on a GPU as queued kernels (inputs copied from
        pinned memory, outputs copied back asynchronously). :meth:`collect` gathers them."""
        if self.streams <= 1:
            return [self._launch(plan.windows, rows, padded)
                    for rows, padded in zip(plan.batches, plan.padded, strict=True)]
        with self._pool_lock:
            if self._pool is None:
                import torch  # the model stack loads where it is used (start-up)

                # torch's thread count is per thread: each stream's thread takes its share.
                self._pool = ThreadPoolExecutor(
                    self.streams, thread_name_prefix="bertbeam-model",
                    initializer=torch.set_num_threads, initargs=(torch.get_num_threads(),))
        return [self._pool.submit(self._launch, plan.windows, rows, padded)
                for rows, padded in zip(plan.batches, plan.padded, strict=True)]

    def _launch(self, windows: WindowChunk, rows: np.ndarray, padded: int
                ) -> list[tuple[np.ndarray, Any]]:
        launched = self._launch_safely(windows, rows, padded)
        if self._trimmer is not None:
            # Between CPU batches: freed activation buffers go back to the system (memory.py).
            self._trimmer.maybe_trim()
        return launched

    def collect(self, plan: BatchPlan, launched: list[Any]) -> OutputChunk:
        """The OutputChunk of a submitted plan, in window order (waits for its batches).

        A window the model failed on, or whose outputs hold NaN or infinite values, gets a
        dead letter in ``errors``."""
        values: dict[str, np.ndarray] = {}
        errors: dict[int, DeadLetter] = {}
        for handle in launched:
            self._gather(plan.windows, handle, values, errors)
        return OutputChunk(plan.windows, values, errors)

    def collect_parts(self, plan: BatchPlan, launched: list[Any], min_windows: int = PART_WINDOWS
                      ) -> Iterator[OutputChunk]:
        """:meth:`collect` in parts: as batches come back, the OutputChunk of the documents
        whose last window they held, so that their results can be written (and counted)
        while the plan's later batches still run. A part holds at least ``min_windows``
        windows (the plan's last part excepted), or whatever has finished once
        :data:`PART_SECONDS` have passed since the last part: each part costs a
        post-processing call, a record batch and a pipeline element, whatever its size, and a
        nearly free model finishes 1,024 windows in milliseconds, a costly one in seconds."""
        windows = plan.windows
        # The batch each document's last window is in, and the windows of the documents that
        # finish with each batch (in window order), worked out once per plan.
        batch_of = np.empty(len(windows), np.int64)
        if plan.batches:
            batch_of[np.concatenate(plan.batches)] = np.repeat(
                np.arange(len(plan.batches)), [len(rows) for rows in plan.batches])
        firsts = np.flatnonzero(np.r_[True, windows.doc[1:] != windows.doc[:-1]]) if len(windows) else (
            np.zeros(0, np.int64))
        done_at = np.repeat(np.maximum.reduceat(batch_of, firsts) if len(firsts) else batch_of,
                            np.diff(np.r_[firsts, len(windows)]))
        by_batch = np.argsort(done_at, kind="stable")
        bounds = np.searchsorted(done_at[by_batch], np.arange(len(launched) + 1))
        token_level = self.task.token_level
        values: dict[str, np.ndarray] = {}
        errors: dict[int, DeadLetter] = {}
        begin = 0  # where the part being gathered starts in by_batch
        since = time.monotonic()  # when the last part left
        for k, handle in enumerate(launched):
            self._gather(windows, handle, values, errors)
            end = int(bounds[k + 1])
            if (end - begin < max(1, min_windows) and k + 1 < len(launched)
                    and time.monotonic() - since < PART_SECONDS):
                continue
            part = np.sort(by_batch[begin:end])
            begin, since = end, time.monotonic()
            if len(part) == 0:
                continue
            tokens = windows.token_rows(part) if token_level else None
            failed = {}
            for j, dead in errors.items():
                at = int(np.searchsorted(part, j))
                if at < len(part) and part[at] == j:
                    failed[at] = dead
            yield OutputChunk(
                windows.take(part),
                {key: v[tokens] if key in token_level else v[part] for key, v in values.items()},
                failed)

    def _gather(self, windows: WindowChunk, handle: Any, values: dict[str, np.ndarray],
                errors: dict[int, DeadLetter]) -> np.ndarray:
        """Waits for one submitted batch and puts its outputs (or its windows' dead letters)
        into ``values`` / ``errors``; returns the batch's window numbers."""
        lengths, starts = windows.lengths, windows.starts
        token_level = self.task.token_level
        if isinstance(handle, Future):
            handle = handle.result()
        for rows, outputs in handle:
            if isinstance(outputs, tuple):  # (reason, message) of failed windows
                reason, message = outputs
                for j in rows:
                    errors[int(j)] = self._dead_window(windows, int(j), reason, message)
                continue
            if getattr(outputs, "ready", None) is not None:
                outputs.ready.synchronize()
            finite = np.ones(len(rows), dtype=bool)
            for key, tensor in outputs.items():
                a = tensor.cpu().numpy()
                if key in token_level:
                    real = np.arange(a.shape[1])[None, :] < lengths[rows][:, None]
                    dest = (starts[rows][:, None] + np.arange(a.shape[1])[None, :])[real]
                    if key not in values:
                        values[key] = np.empty((int(starts[-1]), *a.shape[2:]), np.float32)
                    values[key][dest] = a[real]
                    ok = np.isfinite(a).reshape(a.shape[0], a.shape[1], -1).all(axis=2) | ~real
                else:
                    if key not in values:
                        values[key] = np.empty((len(windows), *a.shape[1:]), np.float32)
                    values[key][rows] = a
                    ok = np.isfinite(a).reshape(a.shape[0], -1)
                finite &= ok.all(axis=1)
            for j in rows[~finite]:
                errors[int(j)] = self._dead_window(windows, int(j), Reason.NAN_OUTPUT)
        return np.concatenate([rows for rows, _ in handle]) if handle else np.zeros(0, np.int64)

    @staticmethod
    def _dead_window(windows: WindowChunk, j: int, reason: Reason, message: str | None = None
                     ) -> DeadLetter:
        return DeadLetter.of(windows.docs.ids[int(windows.doc[j])], reason, message,
                             value=windows.preview(j))

    def _launch_safely(self, windows: WindowChunk, rows: np.ndarray, padded: int
                       ) -> list[tuple[np.ndarray, Any]]:
        """Runs the model on windows ``rows``: on out-of-memory splits them in halves; on any
        other error bisects them down to the windows that fail, which get a DeadLetter."""
        tokens = len(rows) * padded
        if self._max_tokens is not None and tokens > self._max_tokens and len(rows) > 1:
            return self._split(windows, rows, padded)
        try:
            return [(rows, self._forward(windows, rows, padded))]
        except Exception as exc:
            if _is_oom(exc) and len(rows) > 1:
                import torch  # the model stack loads where it is used (start-up)

                torch.cuda.empty_cache()
                self._max_tokens = max(tokens // 2, padded)
                metrics.inc(metrics.OOM_SPLITS)
                _LOG.warning("Out of memory on %d padded tokens; splitting the batch.", tokens)
                return self._split(windows, rows, padded)
            if len(rows) > 1:
                return self._split(windows, rows, padded)
            reason = Reason.OUT_OF_MEMORY if _is_oom(exc) else Reason.MODEL_ERROR
            return [(rows, (reason, f"{type(exc).__name__}: {exc}"))]

    def _split(self, windows: WindowChunk, rows: np.ndarray, padded: int
               ) -> list[tuple[np.ndarray, Any]]:
        half = len(rows) // 2
        return (self._launch_safely(windows, rows[:half], padded)
                + self._launch_safely(windows, rows[half:], padded))

    def collate(self, windows: WindowChunk, rows: np.ndarray, padded: int) -> dict[str, np.ndarray]:
        """Windows ``rows`` padded into int64 arrays of shape [len(rows), padded], gathered
        from the packed arrays in one indexing step."""
        positions = np.arange(padded)[None, :]
        real = positions < windows.lengths[rows][:, None]
        at = np.where(real, windows.starts[rows][:, None] + positions, 0)
        input_ids = np.where(real, windows.input_ids[at], self.pad_id).astype(np.int64)
        out = {"input_ids": input_ids, "attention_mask": real.astype(np.int64)}
        if windows.type_ids is not None:
            out["token_type_ids"] = np.where(real, windows.type_ids[at], 0).astype(np.int64)
        return out

    def _forward(self, windows: WindowChunk, rows: np.ndarray, padded: int) -> dict[str, Any]:
        """Pads windows ``rows``, moves them to the device and runs ``task.forward`` under
        ``torch.inference_mode``; returns float32 batched tensors, possibly still in flight."""
        import torch  # the model stack loads where it is used (start-up)

        arrays = self.collate(windows, rows, padded)
        if self.task.window_index_input:
            arrays["window_index"] = windows.index[rows].astype(np.int64)
        cuda = self.device.type == "cuda"
        inputs = {
            k: (torch.from_numpy(v).pin_memory() if cuda else torch.from_numpy(v)).to(
                self.device, non_blocking=cuda)
            for k, v in arrays.items()
        }
        with torch.inference_mode():
            outputs = {k: v.float() for k, v in self.task.forward(self, inputs).items()}
            if not cuda:
                return outputs
            # Copy back into pinned host memory without blocking: the copy overlaps with the
            # tokenizing and batching of the next chunk; collect waits for the event.
            host = _InFlight({k: torch.empty(v.shape, dtype=v.dtype, pin_memory=True)
                              for k, v in outputs.items()})
            for k, v in outputs.items():
                host[k].copy_(v, non_blocking=True)
            host.ready = torch.cuda.Event()
            host.ready.record()
            return host

    # -- postprocess -------------------------------------------------------------------------

    def postprocess(self, out: OutputChunk) -> Results:
        """The result columns (``id``, the task's, the carried ones) of every document of
        ``out`` whose windows all came back, and the DeadLetters of the others: of a window
        that failed, of a missing window, or of the task's own step.

        The task's ``postprocess_chunk`` handles all documents at once where it has one; a
        task without, or a chunk it fails on, goes document by document, so that one bad
        document fails alone."""
        windows, task = out.windows, self.task
        n = len(windows)
        first = np.flatnonzero(np.r_[True, windows.doc[1:] != windows.doc[:-1]]) if n else (
            np.zeros(0, np.int64))
        count = np.diff(np.r_[first, n])
        dead: list[DeadLetter] = []
        good = count == windows.n_windows[first]
        for g in np.flatnonzero(~good):
            dead.append(self._dead_window(windows, int(first[g]), Reason.MODEL_ERROR,
                                          f"{count[g]} of {windows.n_windows[first[g]]} windows came back"))
        if out.errors:
            group = np.searchsorted(first, np.fromiter(out.errors, np.int64), side="right") - 1
            failed = np.zeros(len(first), dtype=bool)
            failed[group] = True
            for g in np.flatnonzero(failed & good):
                a, b = int(first[g]), int(first[g] + count[g])
                dead.append(next(out.errors[j] for j in range(a, b) if j in out.errors))
            good &= ~failed
        outputs = ChunkOutputs(out, first[good], count[good], task.token_level, task.needs_text)
        columns = None
        try:
            columns = task.postprocess_chunk(self, outputs) if len(outputs) else {}
        except Exception:  # noqa: BLE001 - the documents one by one find the bad one
            _LOG.debug("postprocess_chunk failed; post-processing document by document",
                       exc_info=True)
        kept = np.arange(len(outputs))
        if columns is None:
            columns, kept, failures = self._postprocess_each(outputs)
            dead.extend(failures)
        docs = windows.docs
        doc_rows = windows.doc[outputs.first[kept]]
        result = {"id": [docs.ids[d] for d in doc_rows], **columns}
        for name, values in (docs.extra or {}).items():
            result.setdefault(name, [values[d] for d in doc_rows])
        return Results(result, dead)

    def _postprocess_each(self, outputs: ChunkOutputs
                          ) -> tuple[dict[str, list], np.ndarray, list[DeadLetter]]:
        rows, kept, dead = [], [], []
        windows = outputs.out.windows
        for g in range(len(outputs)):
            j = int(outputs.first[g])
            try:
                rows.append(self.task.postprocess(self, outputs.outputs(g)))
                kept.append(g)
            except TaskInputError as exc:
                dead.append(self._dead_window(windows, j, Reason.BAD_TASK_INPUT, str(exc)))
            except Exception as exc:
                dead.append(self._dead_window(windows, j, Reason.POSTPROCESS_ERROR,
                                              f"{type(exc).__name__}: {exc}"))
        names = list(rows[0]) if rows else []
        return {k: [r[k] for r in rows] for k in names}, np.array(kept, dtype=np.int64), dead


def _tokenizer_dead_letter(doc: Document, exc: BaseException) -> DeadLetter:
    # "too short to respect the provided max_length": the question of a (question, context)
    # pair leaves no room for the context; "`stride` must be strictly less than `max_len`"
    # (a PanicException): no room for the stride.
    text = str(exc)
    too_long = any(m in text for m in ("longer than", "too short to respect",
                                       "must be strictly less than"))
    return DeadLetter.of(doc.id, Reason.TOO_LONG if too_long else Reason.TOKENIZE_ERROR,
                         f"{type(exc).__name__}: {text}", value=doc.text)


class _InFlight(dict):
    """Batched outputs in pinned host memory, valid once the ``ready`` CUDA event completes."""

    ready: Any = None


def _is_oom(exc: BaseException) -> bool:
    import torch  # the model stack loads where it is used (start-up)

    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()

