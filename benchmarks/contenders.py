"""The contenders, each run in a process of its own: ``python -m benchmarks.contenders NAME ...``.

A contender imports its libraries first, then times its whole job on the corpus (model load
included, interpreter start and imports not) and prints one JSON line: documents, seconds,
real and padded tokens where it can count them, its own peak RSS and peak GPU memory, the
cores it could use, and its start-up and steady state apart where it can tell them: bertbeam
from its first model batch to the end of its last, the sorted loop from its tokenizer call
on, st-encode its ``encode`` call, the tokenizer its one call. Every steady window starts
where the per-document work starts (bertbeam and the library: the first tokenizer call of
the engine; the loop: its tokenizer call) and carries the CPU seconds spent in it, of the
main (Python) thread and of the whole process (native threads: tokenizer, torch), so that a
loaded machine's waiting does not count; on a GPU, ``gpu_seconds`` is the time the device
spent on the model batches (CUDA events around each forward).

Contenders:
  bertbeam       ``bertbeam embed`` through Beam on the local runner (the project's pipeline)
  bertbeam-int8  the same with ``--quantize int8``
  bertbeam-onnx  the same with ``--backend onnx`` (ONNX Runtime; the export is cached first)
  bertbeam-onnx-int8  ``--backend onnx --quantize int8``
  bertbeam-bf16  ``--dtype bfloat16`` (on the CPU: fast where it has AMX)
  mltransform    Beam ``MLTransform`` + ``SentenceTransformerEmbeddings`` on the same runner
  st-encode      ``SentenceTransformer.encode`` (batch 32) on the job's device and dtype
  arrival-loop   transformers, batches of 32 in arrival order, padded to the longest
  sorted-loop    hand-written torch loop over length-sorted, token-budget batches: the ceiling
  library        bertbeam's ``Engine`` without Beam: ``Engine.infer`` per buffer of documents
  tokenizer      the tokenizer alone, one batch call on every core: the CPU-side limit
  gemm           a large matrix product in the job's dtype: the machine's peak FLOP/s
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

LOOP_BATCH_SIZE = 32
SORTED_TOKEN_BUDGET = 8192
GEMM_SIZE = 2048


@dataclass(frozen=True, kw_only=True)
class Job:
    """What every contender gets: the same corpus, model, window length and thread count."""

    corpus_glob: str
    model_dir: str
    threads: int
    max_length: int
    work_dir: str
    device: str = "cpu"
    dtype: str = "float32"
    token_budget: int | None = None  # None: bertbeam's default, SORTED_TOKEN_BUDGET for the loop
    long_docs: str = "truncate"  # or "chunk": every window of bertbeam's stride, merged per doc
    cpus: tuple[int, ...] | None = None  # the cores the contender may use (None: all)
    cpu_streams: int | None = None  # bertbeam's --cpu-streams (None: its default)
    bertbeam_args: tuple[str, ...] = ()  # more ``bertbeam embed`` flags


@dataclass
class Outcome:
    """What a contender reports. ``padded_tokens`` is ``None`` where it cannot be counted."""

    docs: int
    seconds: float
    real_tokens: int | None = None
    padded_tokens: int | None = None
    startup_seconds: float | None = None  # model load and whatever precedes the per-document work
    steady_seconds: float | None = None  # the per-document work, start-up excluded
    tokenize_seconds: float | None = None  # the loop's one tokenizer call (in its steady time)
    batches: int | None = None  # model batches, where counted
    last_batch_at: float | None = None  # epoch seconds its last model batch ended (bertbeam)
    first_batch_seconds: float | None = None  # from the job's start to its first model batch
    steady_main_cpu: float | None = None  # CPU seconds of the main thread in the steady window
    steady_model_main_cpu: float | None = None  # of which in the model's forward (and pooling)
    steady_cpu: float | None = None  # CPU seconds of the whole process in the steady window
    job_main_cpu: float | None = None  # the same over the whole timed job
    job_cpu: float | None = None
    gpu_seconds: float | None = None  # device time of the model batches (CUDA only)


def cpu_clock() -> tuple[float, float]:
    """(CPU seconds of the main thread, CPU seconds of the whole process, exited threads
    included), readable from any thread."""
    main = time.pthread_getcpuclockid(threading.main_thread().ident)
    return time.clock_gettime(main), time.process_time()


class Window:
    """A stretch of a contender's run: wall and CPU clocks at its start and end; ``begin``
    keeps the first call, ``mark`` the last."""

    def __init__(self) -> None:
        self.start: tuple[float, float, float] | None = None
        self.end: tuple[float, float, float] | None = None

    def begin(self) -> None:
        if self.start is None:
            self.start = (time.perf_counter(), *cpu_clock())

    def mark(self) -> None:
        self.end = (time.perf_counter(), *cpu_clock())

    def figures(self, prefix: str = "steady") -> dict[str, float | None]:
        """``{prefix}_seconds``, ``{prefix}_main_cpu`` and ``{prefix}_cpu`` (None where the
        window was not seen, as when the runner forks its workers)."""
        done = self.start is not None and self.end is not None
        names = (f"{prefix}_seconds", f"{prefix}_main_cpu", f"{prefix}_cpu")
        return {n: (self.end[i] - self.start[i] if done else None) for i, n in enumerate(names)}


def threads_cpu() -> dict[str, float]:
    """CPU seconds of this process's live threads, summed by thread name with digits dropped
    (``/proc/self/task/*/stat``; Linux only, empty elsewhere)."""
    ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    out: dict[str, float] = {}
    try:
        tasks = list(Path("/proc/self/task").iterdir())
    except OSError:
        return out
    main = str(os.getpid())
    for task in tasks:
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue  # the thread ended meanwhile
        name = "main" if task.name == main else re.sub(r"[\d_-]+$", "", stat[stat.index("(") + 1:stat.rindex(")")])
        fields = stat[stat.rindex(")") + 2:].split()
        out[name] = round(out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / ticks, 2)
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def _texts(job: Job) -> list[str]:
    return _ids_and_texts(job)[1]


def _ids_and_texts(job: Job) -> tuple[list[str], list[str]]:
    import pyarrow.parquet as pq

    from bertbeam.filesystems import expand_glob

    tables = [pq.read_table(f, columns=["id", "text"]) for f in expand_glob(job.corpus_glob)]
    return ([i for t in tables for i in t.column("id").to_pylist()],
            [x for t in tables for x in t.column("text").to_pylist()])


def _mean_pool(hidden: Any, mask: Any) -> Any:
    import torch

    mask = mask.unsqueeze(-1).float()
    pooled = (hidden.float() * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, dim=-1)


def _load(job: Job) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(job.model_dir, dtype=getattr(torch, job.dtype),
                                      attn_implementation="sdpa")
    return AutoTokenizer.from_pretrained(job.model_dir), model.to(job.device).eval()


def _sync(job: Job) -> None:
    import torch

    if job.device == "cuda":
        torch.cuda.synchronize()


def _bertbeam(job: Job, extra: list[str]) -> Outcome:
    """The ``bertbeam embed`` command as a user runs it (``bertbeam.cli.main``, in this
    process: its collector settings and its end included); the figures from its summary."""
    from bertbeam.cli import main
    from bertbeam.run.summary import read_summary

    output = str(Path(job.work_dir) / "out")
    argv = ["embed", "--input", job.corpus_glob, "--output", output,
            "--model", job.model_dir, "--threads", str(job.threads),
            "--max-length", str(job.max_length), "--long-docs", job.long_docs,
            "--device", job.device, "--dtype", job.dtype, *job.bertbeam_args, *extra]
    if job.token_budget:
        argv += ["--token-budget", str(job.token_budget)]
    if job.cpu_streams:
        argv += ["--cpu-streams", str(job.cpu_streams)]
    job_window = Window()
    job_window.begin()
    with _EngineClock.installed(job.device) as clock:
        code = main(argv)
    job_window.mark()
    if code != 0:
        raise RuntimeError(f"bertbeam {' '.join(argv)} exited with {code}")
    summary = read_summary(output)
    return Outcome(summary["written"], job_window.end[0] - job_window.start[0],
                   summary["real_tokens"], summary["padded_tokens"],
                   batches=summary["batches"], **clock.figures(job_window))


class _EngineClock:
    """When bertbeam's engine starts its per-document work and finishes its last batch, with
    the CPU clocks there: wraps ``Engine.encode`` (the steady window begins at its first
    call, as the loop's does at its tokenizer call), ``Engine.submit`` (the first model batch)
    and ``Engine.collect_parts`` / ``Engine.collect`` (outputs are on the host; the window
    ends at the last). On a GPU, CUDA events around ``Engine._forward`` add up the device
    time of the batches."""

    def __init__(self, device: str = "cpu") -> None:
        self.steady = Window()
        self.first_batch: float | None = None
        self.gpu = _GpuTimer() if device == "cuda" else None
        self.model_main = 0.0  # main-thread CPU in Engine._forward less its collate

    @classmethod
    @contextmanager
    def installed(cls, device: str = "cpu") -> Iterator[_EngineClock]:
        from bertbeam.core.engine import Engine

        clock = cls(device)
        originals = {name: getattr(Engine, name)
                     for name in ("encode", "submit", "collect_parts", "collect", "_forward", "collate")}
        encode, submit, parts, collect, forward, collate = originals.values()

        def timed_encode(engine: Engine, docs: Any) -> Any:
            clock.steady.begin()
            return encode(engine, docs)

        def timed_submit(engine: Engine, plan: Any) -> Any:
            if clock.first_batch is None:
                clock.first_batch = time.perf_counter()
            return submit(engine, plan)

        def timed_parts(engine: Engine, plan: Any, launched: Any, *args: Any) -> Any:
            for part in parts(engine, plan, launched, *args):
                clock.steady.mark()
                yield part

        def timed_collect(engine: Engine, plan: Any, launched: Any) -> Any:
            out = collect(engine, plan, launched)
            clock.steady.mark()
            return out

        def timed_forward(engine: Engine, *args: Any) -> Any:
            # The model's share of the main thread: its forward (task.forward: the model and
            # its pooling or head) without the padding (collate), as the loop's is counted.
            main = threading.current_thread() is threading.main_thread()
            started = time.thread_time() if main else 0.0
            try:
                if clock.gpu is None:
                    return forward(engine, *args)
                with clock.gpu.timing():
                    return forward(engine, *args)
            finally:
                if main:
                    clock.model_main += time.thread_time() - started

        def timed_collate(engine: Engine, *args: Any) -> Any:
            main = threading.current_thread() is threading.main_thread()
            started = time.thread_time() if main else 0.0
            try:
                return collate(engine, *args)
            finally:
                if main:
                    clock.model_main -= time.thread_time() - started

        Engine.encode, Engine.submit, Engine.collect_parts = timed_encode, timed_submit, timed_parts
        Engine.collect, Engine._forward, Engine.collate = timed_collect, timed_forward, timed_collate
        try:
            yield clock
        finally:
            for name, original in originals.items():
                setattr(Engine, name, original)

    def figures(self, job: Window) -> dict[str, Any]:
        """The Outcome fields this clock measured, against the whole job's window."""
        steady, timed = self.steady, self.steady.start is not None and self.steady.end is not None
        return {
            "startup_seconds": steady.start[0] - job.start[0] if timed else None,
            "first_batch_seconds": (self.first_batch - job.start[0]
                                    if self.first_batch is not None else None),
            "last_batch_at": time.time() - (time.perf_counter() - steady.end[0]) if timed else None,
            "job_main_cpu": job.end[1] - job.start[1], "job_cpu": job.end[2] - job.start[2],
            "gpu_seconds": self.gpu.seconds() if self.gpu is not None else None,
            "steady_model_main_cpu": self.model_main if timed else None,
            **steady.figures(),
        }


class _GpuTimer:
    """Device time of timed stretches: a CUDA event pair around each, summed at the end
    (the events time the device's stream, not the host's waiting)."""

    def __init__(self) -> None:
        self._pairs: list[tuple[Any, Any]] = []

    @contextmanager
    def timing(self) -> Iterator[None]:
        import torch

        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        try:
            yield
        finally:
            end.record()
            self._pairs.append((start, end))

    def seconds(self) -> float:
        import torch

        torch.cuda.synchronize()
        return sum(a.elapsed_time(b) for a, b in self._pairs) / 1000


class _TokenCounter:
    """Counts real and padded tokens of every batch sentence-transformers tokenizes."""

    def __init__(self) -> None:
        self.real = 0
        self.padded = 0

    @classmethod
    @contextmanager
    def installed(cls) -> Iterator[_TokenCounter]:
        from sentence_transformers import SentenceTransformer

        counter = cls()
        original = SentenceTransformer.preprocess

        def preprocess(self: Any, *args: Any, **kwargs: Any) -> Any:
            features = original(self, *args, **kwargs)
            mask = features["attention_mask"]
            counter.real += int(mask.sum())
            counter.padded += int(mask.numel())
            return features

        SentenceTransformer.preprocess = preprocess
        try:
            yield counter
        finally:
            SentenceTransformer.preprocess = original


def _mltransform(job: Job) -> Outcome:
    import apache_beam as beam
    from apache_beam.ml.transforms.base import MLTransform
    from apache_beam.ml.transforms.embeddings.huggingface import SentenceTransformerEmbeddings
    from apache_beam.options.pipeline_options import PipelineOptions

    from bertbeam.run.runners import resolve_runner

    count_file = Path(job.work_dir) / "count.txt"
    options = PipelineOptions([])
    start = time.perf_counter()
    with _TokenCounter.installed() as counter, beam.Pipeline(
            runner=resolve_runner(options), options=options) as p:
        _ = (
            p
            | "Read" >> beam.io.ReadFromParquet(job.corpus_glob, columns=["id", "text"])
            | "Embed" >> MLTransform(write_artifact_location=str(Path(job.work_dir) / "artifacts"))
            .with_transform(SentenceTransformerEmbeddings(
                model_name=job.model_dir, columns=["text"], max_seq_length=job.max_length))
            | "Count" >> beam.combiners.Count.Globally()
            | "Record" >> beam.Map(lambda n: count_file.write_text(str(n)))
        )
    seconds = time.perf_counter() - start
    return Outcome(int(count_file.read_text()), seconds, counter.real, counter.padded)


def _st_encode(job: Job) -> Outcome:
    import torch
    from sentence_transformers import SentenceTransformer

    texts = _texts(job)
    with _TokenCounter.installed() as counter:
        start = time.perf_counter()
        model = SentenceTransformer(job.model_dir, device=job.device,
                                    model_kwargs={"dtype": getattr(torch, job.dtype)})
        model.max_seq_length = job.max_length
        loaded = time.perf_counter()
        vectors = model.encode(texts, batch_size=LOOP_BATCH_SIZE, normalize_embeddings=True)
        _sync(job)
        end = time.perf_counter()
    return Outcome(len(vectors), end - start, counter.real, counter.padded,
                   startup_seconds=loaded - start, steady_seconds=end - loaded)


def _arrival_loop(job: Job) -> Outcome:
    import torch

    texts = _texts(job)
    start = time.perf_counter()
    tokenizer, model = _load(job)
    real = padded = done = 0
    with torch.inference_mode():
        for i in range(0, len(texts), LOOP_BATCH_SIZE):
            enc = tokenizer(texts[i:i + LOOP_BATCH_SIZE], padding=True, truncation=True,
                            max_length=job.max_length, return_tensors="pt")
            vectors = _mean_pool(model(**enc).last_hidden_state, enc["attention_mask"]).numpy()
            real += int(enc["attention_mask"].sum())
            padded += enc["attention_mask"].numel()
            done += len(vectors)
    return Outcome(done, time.perf_counter() - start, real, padded)


def token_windows(tokenizer: Any, texts: list[str], *, max_length: int,
                  long_docs: str) -> tuple[list[list[int]], Any]:
    """Token ids of every model window in one tokenizer call, as bertbeam cuts them (its
    stride in ``chunk`` mode), and the index of the document each window belongs to."""
    import numpy as np

    from bertbeam.config import TokenizeSpec

    chunk = long_docs == "chunk"
    stride = TokenizeSpec(max_length=max_length, long_docs="chunk").resolved_stride(max_length)
    enc = tokenizer(texts, truncation=True, max_length=max_length, stride=stride if chunk else 0,
                    return_overflowing_tokens=chunk, return_attention_mask=False,
                    return_token_type_ids=False)
    owners = np.asarray(enc["overflow_to_sample_mapping"] if chunk else range(len(texts)))
    return enc["input_ids"], owners


def _sorted_loop(job: Job) -> Outcome:
    return loop_embeddings(job)[1]


def loop_embeddings(job: Job) -> tuple[Any, Outcome]:
    """The sorted loop's document embeddings (float32, in corpus order) and its outcome.

    Tokenize all in one call, sort windows by length, cut by a padded-token budget; on a GPU
    each batch goes through pinned host memory with non-blocking copies, the attention mask
    is made on the device, and mean pooling and normalizing happen there, so that only the
    pooled vectors come back (into pinned memory, without waiting). Its steady state starts
    with the tokenizer call: tokenizing is per-document work, not start-up."""
    import itertools

    import numpy as np
    import torch

    texts = _texts(job)
    whole, steady = Window(), Window()
    whole.begin()
    tokenizer, model = _load(job)
    steady.begin()
    ids, owners = token_windows(tokenizer, texts, max_length=job.max_length,
                                long_docs=job.long_docs)
    tokenized = time.perf_counter()
    lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int64, count=int(lengths.sum()))
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    order = np.argsort(-lengths, kind="stable")
    cuda = job.device == "cuda"
    pad = tokenizer.pad_token_id or 0
    budget = job.token_budget or SORTED_TOKEN_BUDGET
    pooled = torch.empty((len(ids), model.config.hidden_size), dtype=torch.float32, pin_memory=cuda)
    padded = batches = 0
    model_main = 0.0  # main-thread CPU in the model's forward and the pooling
    gpu = _GpuTimer() if cuda else None
    with torch.inference_mode():
        i = 0
        while i < len(order):
            longest = int(lengths[order[i]])
            rows = order[i:i + max(1, budget // longest)]
            positions = np.arange(longest)
            real = positions < lengths[rows, None]
            host = torch.empty((len(rows), longest), dtype=torch.int64, pin_memory=cuda)
            batch = host.numpy()
            np.take(flat, np.where(real, offsets[rows, None] + positions, 0), out=batch)
            batch[~real] = pad
            host_lengths = torch.from_numpy(lengths[rows])
            input_ids = host.to(job.device, non_blocking=cuda)
            n_real = (host_lengths.pin_memory() if cuda else host_lengths).to(job.device, non_blocking=cuda)
            mask = (torch.arange(longest, device=job.device) < n_real[:, None]).long()
            started = time.thread_time()
            with gpu.timing() if gpu is not None else nullcontext():
                hidden = model(input_ids=input_ids, attention_mask=mask).last_hidden_state
                pooled[i:i + len(rows)].copy_(_mean_pool(hidden, mask), non_blocking=cuda)
            model_main += time.thread_time() - started
            padded += len(rows) * longest
            batches += 1
            i += len(rows)
    _sync(job)
    vectors = np.empty_like(pooled.numpy())
    vectors[order] = pooled.numpy()
    if job.long_docs == "chunk":  # a document's windows: mean weighted by tokens, normalized
        docs = np.zeros((len(texts), vectors.shape[1]), dtype=np.float32)
        np.add.at(docs, owners, vectors * lengths[:, None])
        vectors = docs / np.linalg.norm(docs, axis=1, keepdims=True)
    steady.mark()
    whole.mark()
    return vectors, Outcome(len(vectors), whole.end[0] - whole.start[0], int(lengths.sum()), padded,
                            startup_seconds=steady.start[0] - whole.start[0],
                            tokenize_seconds=tokenized - steady.start[0], batches=batches,
                            first_batch_seconds=tokenized - whole.start[0],
                            gpu_seconds=gpu.seconds() if gpu is not None else None,
                            steady_model_main_cpu=model_main, **steady.figures(), **_job_cpu(whole))


def _job_cpu(whole: Window) -> dict[str, float]:
    return {"job_main_cpu": whole.end[1] - whole.start[1], "job_cpu": whole.end[2] - whole.start[2]}


def _tokenizer(job: Job) -> Outcome:
    """The tokenizer alone on the loop's windows: one batch call, every core it may use."""
    from transformers import AutoTokenizer

    texts = _texts(job)
    tokenizer = AutoTokenizer.from_pretrained(job.model_dir)
    steady = Window()
    steady.begin()
    ids, _ = token_windows(tokenizer, texts, max_length=job.max_length, long_docs=job.long_docs)
    steady.mark()
    real = sum(map(len, ids))
    return Outcome(len(texts), steady.end[0] - steady.start[0], real, None, startup_seconds=0.0,
                   steady_model_main_cpu=0.0, **steady.figures(), **_job_cpu(steady))


def _library(job: Job) -> Outcome:
    """bertbeam's engine without Beam, as a library user runs it: ``Engine.infer`` over
    buffers of ``BatchSpec.buffer_size`` documents (one tokenizer call, length-sorted batches,
    post-processing), each turned into an Arrow record batch of the result schema."""
    from bertbeam.config import BatchSpec, ModelSpec, RunSpec, TokenizeSpec
    from bertbeam.core.engine import Engine, engine_spec
    from bertbeam.core.records import DocumentChunk
    from bertbeam.tasks.embed import EmbedTask

    ids, texts = _ids_and_texts(job)
    run = RunSpec(
        model=ModelSpec(uri=job.model_dir, device=job.device, dtype=job.dtype,
                        num_threads=job.threads, cpu_streams=job.cpu_streams or "auto"),
        tokenize=TokenizeSpec(max_length=job.max_length, long_docs=job.long_docs),
        batch=BatchSpec(**({"token_budget": job.token_budget} if job.token_budget else {})))
    task = EmbedTask()
    whole = Window()
    whole.begin()
    with _EngineClock.installed(job.device) as clock:
        engine = Engine.acquire(engine_spec(task, run))
        schema = task.schema(engine.config)
        size, written, real, padded, batches = run.batch.buffer_size, 0, 0, 0, 0
        for at in range(0, len(texts), size):
            docs = DocumentChunk(ids[at:at + size], texts[at:at + size])
            windows, _ = engine.encode(docs)
            if windows is None:
                continue
            plan = engine.plan(windows, run.batch)
            real += int(windows.lengths.sum())
            padded += sum(len(rows) * p for rows, p in zip(plan.batches, plan.padded, strict=True))
            batches += len(plan.batches)
            results = engine.postprocess(engine.run(plan))
            written += results.record_batch(schema).num_rows
    whole.mark()
    return Outcome(written, whole.end[0] - whole.start[0], real, padded, batches=batches,
                   **clock.figures(whole))


def _gemm(job: Job) -> Outcome:
    """Best of several square products in the job's dtype (``GEMM_SIZE`` on CPU, four times
    that on a GPU, timed ten at a time there); ``docs`` holds the FLOPs of one product."""
    import torch

    cuda = job.device == "cuda"
    size, repeat = (GEMM_SIZE * 4, 10) if cuda else (GEMM_SIZE, 1)
    a, b = (torch.randn(size, size, device=job.device, dtype=getattr(torch, job.dtype))
            for _ in range(2))
    for _ in range(3 * repeat):  # warm-up: thread pool, caches, kernel selection, GPU clocks
        torch.mm(a, b)
    _sync(job)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(repeat):
            torch.mm(a, b)
        _sync(job)
        best = min(best, (time.perf_counter() - start) / repeat)
    return Outcome(2 * size**3, best)


CONTENDERS: dict[str, Callable[[Job], Outcome]] = {
    "bertbeam": lambda job: _bertbeam(job, []),
    "bertbeam-int8": lambda job: _bertbeam(job, ["--quantize", "int8"]),
    "bertbeam-onnx": lambda job: _bertbeam(job, ["--backend", "onnx"]),
    "bertbeam-onnx-int8": lambda job: _bertbeam(job, ["--backend", "onnx", "--quantize", "int8"]),
    "bertbeam-bf16": lambda job: _bertbeam(job, ["--dtype", "bfloat16"]),
    "mltransform": _mltransform,
    "st-encode": _st_encode,
    "arrival-loop": _arrival_loop,
    "sorted-loop": _sorted_loop,
    "library": _library,
    "tokenizer": _tokenizer,
    "gemm": _gemm,
}


def _preload() -> None:
    """Imports what every contender touches, so that no timing includes module imports
    (transformers loads its model classes lazily, on first use)."""
    import apache_beam.runners.portability.fn_api_runner.fn_runner  # noqa: F401
    import torch  # noqa: F401
    import transformers

    for name in ("AutoConfig", "AutoModel", "AutoTokenizer", "BertModel", "BertTokenizerFast"):
        getattr(transformers, name)


def peak_rss_mb() -> float:
    """Peak resident memory of this process (and any children it waited for), in MiB."""
    usage = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    return round(usage / 1024, 1)  # Linux reports KiB


def gpu_peak_mb() -> float | None:
    """Peak GPU memory torch allocated in this process since the last reset, in MiB."""
    import torch

    if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
        return None
    return round(torch.cuda.max_memory_allocated() / 2**20, 1)


def run_named(name: str, job: Job) -> dict:
    """Runs contender ``name`` on ``job`` in this process and returns its report (an error
    string instead of the figures where it failed); on ``job.cpus`` when given."""
    affinity = os.sched_getaffinity(0) if job.cpus and hasattr(os, "sched_setaffinity") else None
    if affinity is not None:
        # Before the imports in a fresh process: every thread started later inherits it.
        os.sched_setaffinity(0, job.cpus)
    try:
        if name.startswith("bertbeam"):
            # What the bertbeam command does with its imports: the allocator set before torch
            # is imported, the collector paused while they load and what they leave frozen.
            from bertbeam.core.memory import collector_paused, prepare_allocator

            prepare_allocator()
            with collector_paused():
                _preload()
        else:
            _preload()
        import torch

        torch.set_num_threads(job.threads)
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.reset_peak_memory_stats()
        try:
            outcome = asdict(CONTENDERS[name](job))
        except Exception as exc:  # reported, not raised: one broken peer must not sink the run
            outcome = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
        outcome["returned_at"] = time.time()  # the parent times the exit from here
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        main_cpu, process_cpu = cpu_clock()
        return {"name": name, **outcome, "peak_rss_mb": peak_rss_mb(), "gpu_peak_mb": gpu_peak_mb(),
                "cores": cores, "main_cpu": main_cpu, "cpu": process_cpu,
                "threads_cpu": threads_cpu()}
    finally:
        if affinity is not None:
            os.sched_setaffinity(0, affinity)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", choices=sorted(CONTENDERS))
    p.add_argument("--job", required=True, help="the Job as JSON")
    args = p.parse_args(argv)
    print(json.dumps(run_named(args.name, Job(**json.loads(args.job)))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
