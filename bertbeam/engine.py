"""The engine: everything a worker process needs to run one task, loaded and decided once.

An :class:`Engine` is built once per process for an :class:`EngineSpec` (model, tokenize
options, task). It holds the model and its tokenizer (one load, shared by every engine of the
process that uses the same checkpoint and head), and resolves the window length, stride, pad
id, device, dtype and padding once. Its three steps are the whole flow:

* :meth:`Engine.encode`: Documents -> Windows, in one vectorized tokenizer call;
* :meth:`Engine.run`: a Batch -> one WindowOutput per window, with out-of-memory splitting and
  bisection of a failing batch down to the windows that fail;
* :meth:`Engine.postprocess`: one document's WindowOutputs -> its result columns.

The Beam stages (``Tokenize``, ``BatchByTokens``, ``RunModel``, ``Postprocess``) and
``BertModelHandler`` are thin adapters over these steps, so a pipeline and a RunInference
user get the same windows, batches, outputs and dead letters.
"""

from __future__ import annotations

import hashlib
import logging
import pickle
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from apache_beam.utils import shared

from bertbeam import metrics
from bertbeam.config import ModelSpec, RunSpec, TokenizeSpec
from bertbeam.deadletter import PREVIEW_CHARS, DeadLetter, Reason, Stage
from bertbeam.records import Batch, Document, Window, WindowOutput
from bertbeam.tasks.base import Task, TaskInputError

_LOG = logging.getLogger(__name__)

GPU_PAD_MULTIPLE = 8
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
    from bertbeam.sentence_transformers import max_seq_length

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


class BrokenTokenizerError(RuntimeError):
    """The tokenizers library cuts long documents short (it returns too few windows)."""


def check_overflow(tokenizer: Any, max_length: int, stride: int) -> None:
    """Self-check of long-document windows with this worker's tokenizers library: a text of
    several windows must come back as all of them. tokenizers 0.23.1 and 0.23.2 return two
    windows whatever the length (a 2,000-word text lost nine tenths of its tokens, silently).
    """
    import math

    text = " ".join(["the cat sat on a mat"] * max(4, max_length // 2))
    n = len(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])
    content = max_length - tokenizer.num_special_tokens_to_add(pair=False)
    expected = 1 + math.ceil(max(0, n - content) / max(1, content - stride))
    got = len(tokenizer([text], truncation=True, max_length=max_length, stride=stride,
                        return_overflowing_tokens=True, padding=False)["input_ids"])
    if got != expected:
        import tokenizers

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
        windows = [w for w in engine.encode(docs) if isinstance(w, Window)]
        outputs = engine.run(Batch(windows, max(w.length for w in windows)))
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

    @classmethod
    def acquire(cls, spec: EngineSpec) -> Engine:
        """The process-wide engine for ``spec``, built on first use (thread-safe); it lives
        while a stage of this process holds it (Beam's ``shared.Shared``)."""
        return _SHARED.acquire(lambda: cls._build(spec), tag=spec.key)

    @classmethod
    def _build(cls, spec: EngineSpec) -> Engine:
        from bertbeam.models import acquire_model

        engine = cls(spec, acquire_model(spec.model, spec.task.model_class))
        if engine.chunk:
            with engine.loaded.tokenizer_lock:
                check_overflow(engine.tokenizer, engine.max_length, engine.stride)
        _LOG.info("Engine for %s (%s) on %s: windows of %d tokens, stride %d",
                  spec.task.name, spec.model.uri, engine.device, engine.max_length, engine.stride)
        return engine

    # -- encode ------------------------------------------------------------------------------

    def encode(self, docs: list[Document]) -> list[Window | DeadLetter]:
        """The windows of ``docs`` (in document order), tokenized in one call; a document the
        tokenizer fails on alone becomes a DeadLetter, its neighbours are unaffected."""
        try:
            return list(self._encode(docs))
        except BaseException as exc:  # noqa: BLE001 - tokenizers raises PanicException
            if isinstance(exc, KeyboardInterrupt | SystemExit):
                raise
        out: list[Window | DeadLetter] = []
        for doc in docs:
            try:
                out.extend(self._encode([doc]))
            except BaseException as exc:  # noqa: BLE001
                if isinstance(exc, KeyboardInterrupt | SystemExit):
                    raise
                # "too short to respect the provided max_length": the question of a
                # (question, context) pair leaves no room for the context; "`stride` must be
                # strictly less than `max_len`" (a PanicException): no room for the stride.
                text = str(exc)
                too_long = any(m in text for m in ("longer than", "too short to respect",
                                                   "must be strictly less than"))
                out.append(DeadLetter.of(doc.id, Reason.TOO_LONG if too_long else Reason.TOKENIZE_ERROR,
                                         f"{type(exc).__name__}: {text}", value=doc.text))
        return out

    def _encode(self, docs: list[Document]) -> Iterator[Window | DeadLetter]:
        task = self.task
        pairs = [d.text_pair for d in docs] if task.pair_input else None
        texts = task.prepare_texts(self, [d.text for d in docs])  # e.g. an embedding prompt
        with self.loaded.tokenizer_lock:
            enc = self.tokenizer(
                texts,
                pairs,
                truncation="only_second" if pairs else True,
                max_length=self.max_length,
                stride=self.stride,
                return_overflowing_tokens=True,
                return_offsets_mapping=task.needs_offsets,
                return_token_type_ids=self._type_ids and pairs is not None,
                return_attention_mask=False,
                padding=False,
            )
        mapping = np.asarray(enc["overflow_to_sample_mapping"])
        counts = np.bincount(mapping, minlength=len(docs))
        starts = np.searchsorted(mapping, np.arange(len(docs)))
        previews = [d.text[:PREVIEW_CHARS] for d in docs]
        windows_out = chunked = truncated = 0
        empty = -1  # the document (index in docs) whose windows are skipped
        for i, sample in enumerate(mapping):
            doc, total = docs[sample], int(counts[sample])
            index = i - int(starts[sample])
            if (not self.chunk and index > 0) or sample == empty:
                continue
            if index == 0 and self._tokenizes_to_nothing(enc, i, pairs is not None):
                # Text the tokenizer drops entirely (combining marks, say): no answer, label
                # or embedding can come from it.
                empty = sample
                yield DeadLetter.of(doc.id, Reason.EMPTY_TEXT, "the text tokenizes to no tokens",
                                    value=doc.text_pair if pairs is not None else doc.text,
                                    stage=Stage.TOKENIZE)
                continue
            n_windows = total if self.chunk else 1
            first = index == 0
            windows_out += 1
            if first:
                chunked += n_windows > 1
                truncated += not self.chunk and total > 1
            yield Window(
                doc_id=doc.id,
                index=index,
                n_windows=n_windows,
                input_ids=np.asarray(enc["input_ids"][i], dtype=np.int32),
                type_ids=(np.asarray(enc["token_type_ids"][i], dtype=np.int8)
                          if "token_type_ids" in enc else None),
                offsets=(np.asarray(enc["offset_mapping"][i], dtype=np.int32).reshape(-1, 2)
                         if task.needs_offsets else None),
                sequence_ids=(np.array([-1 if s is None else s for s in enc.sequence_ids(i)],
                                       dtype=np.int8) if task.needs_offsets else None),
                truncated=not self.chunk and total > 1,
                preview=previews[sample],
                text=doc.text if (task.needs_text and first) else None,
                text_pair=doc.text_pair if (task.needs_text and first) else None,
                extra=doc.extra if first else None,
            )
        metrics.inc(metrics.WINDOWS, windows_out)
        metrics.inc(metrics.CHUNKED_DOCS, chunked)
        metrics.inc(metrics.TRUNCATED_DOCS, truncated)

    def _tokenizes_to_nothing(self, enc: Any, i: int, pair: bool) -> bool:
        """Whether window ``i`` holds no token of the text (or of the question or context)."""
        if pair:
            return not {0, 1} <= set(enc.sequence_ids(i))
        return len(enc["input_ids"][i]) <= self._specials

    # -- batch -------------------------------------------------------------------------------

    def pad_multiple(self, requested: int | str) -> int:
        """``BatchSpec.pad_multiple`` on this worker: ``auto`` is 8 on a GPU, 1 on a CPU."""
        if requested != "auto":
            return int(requested)
        return GPU_PAD_MULTIPLE if self.device.type == "cuda" else 1

    # -- run ---------------------------------------------------------------------------------

    def run(self, batch: Batch) -> list[WindowOutput]:
        """One WindowOutput per window of ``batch``, in order (waits for the device)."""
        return self.fetch(self.launch(batch))

    def submit(self, batch: Batch) -> Any:
        """Starts ``batch``: on a CPU with several streams on a thread of the engine's pool,
        else at once (a GPU runs it asynchronously); pass the result to :meth:`fetch`."""
        if self.streams <= 1:
            return self.launch(batch)
        with self._pool_lock:
            if self._pool is None:
                import torch

                # torch's thread count is per thread: each stream's thread takes its share.
                self._pool = ThreadPoolExecutor(
                    self.streams, thread_name_prefix="bertbeam-model",
                    initializer=torch.set_num_threads, initargs=(torch.get_num_threads(),))
        return self._pool.submit(self.launch, batch)

    def launch(self, batch: Batch) -> list[tuple[list[Window], Any]]:
        """Runs the model on ``batch``: on out-of-memory splits it in halves; on any other
        error bisects it down to the windows that fail, which get a DeadLetter."""
        return self._launch_safely(batch.windows, batch.padded_length)

    def fetch(self, launched: Any) -> list[WindowOutput]:
        """The WindowOutputs of a launched batch (waits for its thread or device)."""
        if isinstance(launched, Future):
            launched = launched.result()
        out: list[WindowOutput] = []
        for windows, outputs in launched:
            if isinstance(outputs, tuple):  # (reason, message) of failed windows
                reason, message = outputs
                out.extend(WindowOutput(w, {}, error=DeadLetter.of(
                    w.doc_id, reason, message, value=w.preview)) for w in windows)
            else:
                out.extend(self._window_outputs(windows, outputs))
        return out

    def _launch_safely(self, windows: list[Window], padded: int) -> list[tuple[list[Window], Any]]:
        tokens = len(windows) * padded
        if self._max_tokens is not None and tokens > self._max_tokens and len(windows) > 1:
            return self._split(windows, padded)
        try:
            return [(windows, self._forward(windows, padded))]
        except Exception as exc:
            if _is_oom(exc) and len(windows) > 1:
                import torch

                torch.cuda.empty_cache()
                self._max_tokens = max(tokens // 2, padded)
                metrics.inc(metrics.OOM_SPLITS)
                _LOG.warning("Out of memory on %d padded tokens; splitting the batch.", tokens)
                return self._split(windows, padded)
            if len(windows) > 1:
                return self._split(windows, padded)
            reason = Reason.OUT_OF_MEMORY if _is_oom(exc) else Reason.MODEL_ERROR
            return [(windows, (reason, f"{type(exc).__name__}: {exc}"))]

    def _split(self, windows: list[Window], padded: int) -> list[tuple[list[Window], Any]]:
        half = len(windows) // 2
        return self._launch_safely(windows[:half], padded) + self._launch_safely(windows[half:], padded)

    def collate(self, windows: list[Window], padded: int) -> dict[str, np.ndarray]:
        """Pads windows into int64 arrays of shape [batch, padded]."""
        n = len(windows)
        input_ids = np.full((n, padded), self.pad_id, dtype=np.int64)
        attention_mask = np.zeros((n, padded), dtype=np.int64)
        with_types = windows[0].type_ids is not None
        type_ids = np.zeros((n, padded), dtype=np.int64) if with_types else None
        for i, w in enumerate(windows):
            input_ids[i, : w.length] = w.input_ids
            attention_mask[i, : w.length] = 1
            if with_types:
                type_ids[i, : w.length] = w.type_ids
        out = {"input_ids": input_ids, "attention_mask": attention_mask}
        if with_types:
            out["token_type_ids"] = type_ids
        return out

    def _forward(self, windows: list[Window], padded: int) -> dict[str, Any]:
        """Pads ``windows``, moves them to the device and runs ``task.forward`` under
        ``torch.inference_mode``; returns float32 batched tensors, possibly still in flight."""
        import torch

        arrays = self.collate(windows, padded)
        if self.task.window_index_input:
            arrays["window_index"] = np.array([w.index for w in windows], dtype=np.int64)
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
            # tokenizing and batching of the next batch; _window_outputs waits for the event.
            host = _InFlight({k: torch.empty(v.shape, dtype=v.dtype, pin_memory=True)
                              for k, v in outputs.items()})
            for k, v in outputs.items():
                host[k].copy_(v, non_blocking=True)
            host.ready = torch.cuda.Event()
            host.ready.record()
            return host

    def _window_outputs(self, windows: list[Window], outputs: dict[str, Any]) -> Iterator[WindowOutput]:
        """Cuts batched outputs into one WindowOutput per window (``task.token_level`` keys to
        the window's length); a window with NaN or infinite values gets a dead letter."""
        if getattr(outputs, "ready", None) is not None:
            outputs.ready.synchronize()
        arrays = {k: v.cpu().numpy() for k, v in outputs.items()}
        token_level = self.task.token_level
        for i, w in enumerate(windows):
            # np.array(..., copy) gives each output its own memory: a row never pins the batch.
            values = {k: np.array(a[i, : w.length] if k in token_level else a[i], dtype=np.float32)
                      for k, a in arrays.items()}
            if not all(np.isfinite(v).all() for v in values.values()):
                yield WindowOutput(w, {}, error=DeadLetter.of(w.doc_id, Reason.NAN_OUTPUT,
                                                              value=w.preview))
            else:
                yield WindowOutput(w, values)

    # -- postprocess -------------------------------------------------------------------------

    def postprocess(self, outputs: list[WindowOutput]) -> dict[str, Any] | DeadLetter:
        """One document's result columns (with ``id``) from all its windows' outputs (in any
        order), or the DeadLetter of a window that failed, of a missing window, or of the
        task's own step."""
        outputs = sorted(outputs, key=lambda o: o.window.index)
        first = outputs[0].window
        failed = next((o.error for o in outputs if o.error is not None), None)
        if failed is not None:
            return failed
        if len(outputs) != first.n_windows:
            return DeadLetter.of(first.doc_id, Reason.MODEL_ERROR,
                                 f"{len(outputs)} of {first.n_windows} windows came back",
                                 value=first.preview)
        try:
            return {"id": first.doc_id, **self.task.postprocess(self, outputs), **(first.extra or {})}
        except TaskInputError as exc:
            return DeadLetter.of(first.doc_id, Reason.BAD_TASK_INPUT, str(exc), value=first.preview)
        except Exception as exc:
            return DeadLetter.of(first.doc_id, Reason.POSTPROCESS_ERROR,
                                 f"{type(exc).__name__}: {exc}", value=first.preview)


class _InFlight(dict):
    """Batched outputs in pinned host memory, valid once the ``ready`` CUDA event completes."""

    ready: Any = None


def _is_oom(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()

