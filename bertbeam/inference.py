"""RunModel: one model per worker process, one forward pass per batch, compact per-window outputs."""

from __future__ import annotations

import hashlib
import logging
import pickle
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.transforms.window import GlobalWindows
from apache_beam.utils import shared

from bertbeam import metrics
from bertbeam.config import ModelSpec
from bertbeam.memory import HeapTrimmer
from bertbeam.records import Batch, Window, WindowOutput
from bertbeam.tasks.base import Task

_LOG = logging.getLogger(__name__)
_SHARED = shared.Shared()


class _Holder:
    """``shared.Shared`` needs a weak-referenceable object, not a tuple or a plain dataclass copy."""

    def __init__(self, loaded: Any):
        self.loaded = loaded


def acquire_model(spec: ModelSpec, model_class: str) -> Any:
    """The process-wide LoadedModel for (spec, model_class), loaded on first use."""
    from bertbeam.models import load_model

    tag = hashlib.sha256(pickle.dumps((spec, model_class))).hexdigest()
    return _SHARED.acquire(lambda: _Holder(load_model(spec, model_class)), tag=tag).loaded


def collate(windows: list[Window], padded_length: int, pad_id: int) -> dict[str, np.ndarray]:
    """Pads windows into int64 arrays of shape [batch, padded_length]."""
    n = len(windows)
    input_ids = np.full((n, padded_length), pad_id, dtype=np.int64)
    attention_mask = np.zeros((n, padded_length), dtype=np.int64)
    with_types = windows[0].type_ids is not None
    type_ids = np.zeros((n, padded_length), dtype=np.int64) if with_types else None
    for i, w in enumerate(windows):
        input_ids[i, : w.length] = w.input_ids
        attention_mask[i, : w.length] = 1
        if with_types:
            type_ids[i, : w.length] = w.type_ids
    out = {"input_ids": input_ids, "attention_mask": attention_mask}
    if with_types:
        out["token_type_ids"] = type_ids
    return out


def forward_batch(loaded: Any, task: Task, windows: list[Window], padded_length: int,
                  pad_id: int) -> dict[str, Any]:
    """Pads ``windows``, moves them to the model's device and runs ``task.forward`` under
    ``torch.inference_mode``; returns float32 batched tensors, possibly still in flight."""
    import torch

    arrays = collate(windows, padded_length, pad_id)
    if task.window_index_input:
        arrays["window_index"] = np.array([w.index for w in windows], dtype=np.int64)
    device = loaded.device
    cuda = device.type == "cuda"
    inputs = {
        k: (torch.from_numpy(v).pin_memory() if cuda else torch.from_numpy(v)).to(
            device, non_blocking=cuda)
        for k, v in arrays.items()
    }
    with torch.inference_mode():
        outputs = {k: v.float() for k, v in task.forward(loaded, inputs).items()}
        if not cuda:
            return outputs
        # Copy back into pinned host memory without blocking: the copy overlaps with the
        # tokenizing and batching of the next batch; window_outputs waits for this event.
        host = _InFlight({k: torch.empty(v.shape, dtype=v.dtype, pin_memory=True)
                          for k, v in outputs.items()})
        for k, v in outputs.items():
            host[k].copy_(v, non_blocking=True)
        host.ready = torch.cuda.Event()
        host.ready.record()
        return host


class _InFlight(dict):
    """Batched outputs in pinned host memory, valid once the ``ready`` CUDA event completes."""

    ready: Any = None


def window_outputs(task: Task, windows: list[Window], outputs: dict[str, Any]) -> Iterator[WindowOutput]:
    """Cuts batched outputs into one WindowOutput per window (``task.token_level`` keys to the
    window's length); a window with NaN or infinite values gets a ``nan_output`` error."""
    if getattr(outputs, "ready", None) is not None:
        outputs.ready.synchronize()
    arrays = {k: v.cpu().numpy() for k, v in outputs.items()}
    for i, w in enumerate(windows):
        # np.array(..., copy) gives each output its own memory: a row never pins the batch.
        values = {
            k: np.array(a[i, : w.length] if k in task.token_level else a[i], dtype=np.float32)
            for k, a in arrays.items()
        }
        if not all(np.isfinite(v).all() for v in values.values()):
            yield WindowOutput(w, {}, error=("nan_output", "the model produced NaN or infinite values"))
        else:
            yield WindowOutput(w, values)


def _is_oom(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


class _RunModelFn(beam.DoFn):
    """Keeps batches in flight: on a GPU one, whose kernels run asynchronously while the
    stages upstream tokenize and batch the next; on a CPU ``streams`` of them, each on a
    thread of its own. Outputs leave in batch order, once the batch behind them is launched."""

    def __init__(self, spec: ModelSpec, task: Task):
        self._spec = spec
        self._task = task

    def setup(self) -> None:
        self._loaded = acquire_model(self._spec, self._task.model_class)
        pad = self._loaded.tokenizer.pad_token_id
        self._pad_id = 0 if pad is None else int(pad)
        self._max_tokens: int | None = None  # learned from CUDA out-of-memory errors
        self._pending: deque[Any] = deque()
        self._pool: ThreadPoolExecutor | None = None
        cpu = self._loaded.device.type == "cpu"
        self._trimmer = HeapTrimmer() if cpu else None
        if self._loaded.streams > 1:
            import torch

            # torch's thread count is per thread: each stream's thread takes its share.
            self._pool = ThreadPoolExecutor(
                self._loaded.streams, thread_name_prefix="bertbeam-model",
                initializer=torch.set_num_threads, initargs=(torch.get_num_threads(),))

    def start_bundle(self) -> None:
        self._pending = deque()

    def process(self, batch: Batch) -> Iterator[WindowOutput]:
        if self._pool is None:
            self._pending.append(self._launch_safely(batch.windows, batch.padded_length))
        else:
            self._pending.append(
                self._pool.submit(self._launch_safely, batch.windows, batch.padded_length))
        while len(self._pending) > (self._loaded.streams if self._pool else 1):
            yield from self._fetch_oldest()

    def finish_bundle(self) -> Iterator[Any]:
        while self._pending:
            for out in self._fetch_oldest():
                yield GlobalWindows.windowed_value(out)

    def teardown(self) -> None:
        if getattr(self, "_pool", None) is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def _fetch_oldest(self) -> Iterator[WindowOutput]:
        launched = self._pending.popleft()
        if isinstance(launched, Future):
            launched = launched.result()
        for windows, outputs in launched:
            yield from self._fetch(windows, outputs)
        if self._trimmer is not None:
            self._trimmer.maybe_trim()

    def _launch(self, windows: list[Window], padded_length: int) -> Any:
        return forward_batch(self._loaded, self._task, windows, padded_length, self._pad_id)

    def _launch_safely(self, windows: list[Window], padded_length: int) -> list[tuple[list[Window], Any]]:
        """Launches a batch; on out-of-memory splits it in halves, on any other error bisects it
        down to the windows that fail and marks only those as failed."""
        tokens = len(windows) * padded_length
        if self._max_tokens is not None and tokens > self._max_tokens and len(windows) > 1:
            return self._split(windows, padded_length)
        try:
            return [(windows, self._launch(windows, padded_length))]
        except Exception as exc:
            if _is_oom(exc) and len(windows) > 1:
                import torch

                torch.cuda.empty_cache()
                self._max_tokens = max(tokens // 2, padded_length)
                metrics.inc(metrics.OOM_SPLITS)
                _LOG.warning("Out of memory on %d padded tokens; splitting the batch.", tokens)
                return self._split(windows, padded_length)
            if len(windows) > 1:
                return self._split(windows, padded_length)
            reason = "out_of_memory" if _is_oom(exc) else "model_error"
            return [(windows, (reason, f"{type(exc).__name__}: {exc}"[:500]))]

    def _split(self, windows: list[Window], padded_length: int) -> list[tuple[list[Window], Any]]:
        half = len(windows) // 2
        return (self._launch_safely(windows[:half], padded_length)
                + self._launch_safely(windows[half:], padded_length))

    def _fetch(self, windows: list[Window], outputs: Any) -> Iterator[WindowOutput]:
        if isinstance(outputs, tuple):  # (reason, message) of a failed window
            for w in windows:
                yield WindowOutput(w, {}, error=outputs)
            return
        yield from window_outputs(self._task, windows, outputs)


class RunModel(beam.PTransform):
    """Batch -> WindowOutput: runs the task's model on each batch.

    The model is loaded once per worker process (shared across the process's threads) on
    the device chosen there, and runs under ``torch.inference_mode``.

    Example::

        outputs = batches | RunModel(model=ModelSpec(), task=EmbedTask())
    """

    def __init__(self, *, model: ModelSpec, task: Task):
        super().__init__()
        self._fn = _RunModelFn(model, task)

    def expand(self, batches: beam.PCollection) -> beam.PCollection:
        return batches | "RunModel" >> beam.ParDo(self._fn)
