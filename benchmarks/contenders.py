"""The contenders, each run in a process of its own: ``python -m benchmarks.contenders NAME ...``.

A contender imports its libraries first, then times its whole job on the corpus (model load
included, interpreter start and imports not) and prints one JSON line: documents, seconds,
real and padded tokens where it can count them, and its own peak RSS.

Contenders:
  bertbeam       ``bertbeam embed`` through Beam on the local runner (the project's pipeline)
  bertbeam-int8  the same with ``--quantize int8``
  mltransform    Beam ``MLTransform`` + ``SentenceTransformerEmbeddings`` on the same runner
  st-encode      ``SentenceTransformer.encode`` (batch 32)
  arrival-loop   transformers, batches of 32 in arrival order, padded to the longest
  sorted-loop    hand-written torch loop over length-sorted, token-budget batches: the ceiling
  gemm           a large fp32 matrix product: the machine's peak FLOP/s
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from collections.abc import Callable
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


@dataclass
class Outcome:
    """What a contender reports. ``padded_tokens`` is ``None`` where it cannot be counted."""

    docs: int
    seconds: float
    real_tokens: int | None = None
    padded_tokens: int | None = None


def _texts(job: Job) -> list[str]:
    import pyarrow.parquet as pq

    from bertbeam.filesystems import expand_glob

    return [t for f in expand_glob(job.corpus_glob) for t in pq.read_table(f, columns=["text"])
            .column("text").to_pylist()]


def _mean_pool(hidden: Any, mask: Any) -> Any:
    import torch

    mask = mask.unsqueeze(-1).float()
    pooled = (hidden.float() * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, dim=-1)


def _load(job: Job) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(job.model_dir, dtype=getattr(torch, job.dtype))
    return AutoTokenizer.from_pretrained(job.model_dir), model.to(job.device).eval()


def _sync(job: Job) -> None:
    import torch

    if job.device == "cuda":
        torch.cuda.synchronize()


def _bertbeam(job: Job, extra: list[str]) -> Outcome:
    from bertbeam.jobs.common import execute
    from bertbeam.jobs.embed import make_job

    argv = ["--input", job.corpus_glob, "--output", str(Path(job.work_dir) / "out"),
            "--model", job.model_dir, "--threads", str(job.threads),
            "--max-length", str(job.max_length), "--long-docs", "truncate",
            "--device", job.device, "--dtype", job.dtype, *extra]
    if job.token_budget:
        argv += ["--token-budget", str(job.token_budget)]
    start = time.perf_counter()
    summary = execute(*make_job(argv))
    seconds = time.perf_counter() - start
    return Outcome(summary["written"], seconds, summary["real_tokens"], summary["padded_tokens"])


class _TokenCounter:
    """Counts real and padded tokens of every batch sentence-transformers tokenizes."""

    real = 0
    padded = 0

    @classmethod
    def install(cls) -> None:
        from sentence_transformers import SentenceTransformer

        original = SentenceTransformer.preprocess

        def preprocess(self: Any, *args: Any, **kwargs: Any) -> Any:
            features = original(self, *args, **kwargs)
            mask = features["attention_mask"]
            cls.real += int(mask.sum())
            cls.padded += int(mask.numel())
            return features

        SentenceTransformer.preprocess = preprocess


def _mltransform(job: Job) -> Outcome:
    import apache_beam as beam
    from apache_beam.ml.transforms.base import MLTransform
    from apache_beam.ml.transforms.embeddings.huggingface import SentenceTransformerEmbeddings
    from apache_beam.options.pipeline_options import PipelineOptions

    from bertbeam.runners import resolve_runner

    _TokenCounter.install()
    count_file = Path(job.work_dir) / "count.txt"
    options = PipelineOptions([])
    start = time.perf_counter()
    with beam.Pipeline(runner=resolve_runner(options), options=options) as p:
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
    return Outcome(int(count_file.read_text()), seconds, _TokenCounter.real, _TokenCounter.padded)


def _st_encode(job: Job) -> Outcome:
    from sentence_transformers import SentenceTransformer

    _TokenCounter.install()
    texts = _texts(job)
    start = time.perf_counter()
    model = SentenceTransformer(job.model_dir, device="cpu")
    model.max_seq_length = job.max_length
    vectors = model.encode(texts, batch_size=LOOP_BATCH_SIZE, normalize_embeddings=True)
    seconds = time.perf_counter() - start
    return Outcome(len(vectors), seconds, _TokenCounter.real, _TokenCounter.padded)


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


def _sorted_loop(job: Job) -> Outcome:
    import numpy as np
    import torch

    texts = _texts(job)
    start = time.perf_counter()
    tokenizer, model = _load(job)
    ids = tokenizer(texts, truncation=True, max_length=job.max_length)["input_ids"]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]), reverse=True)
    out = np.zeros((len(ids), model.config.hidden_size), dtype=np.float32)
    pad = tokenizer.pad_token_id or 0
    real = padded = 0
    with torch.inference_mode():
        i = 0
        while i < len(order):
            longest = len(ids[order[i]])
            batch = order[i:i + max(1, (job.token_budget or SORTED_TOKEN_BUDGET) // longest)]
            input_ids = torch.full((len(batch), longest), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), longest), dtype=torch.long)
            for row, j in enumerate(batch):
                input_ids[row, :len(ids[j])] = torch.tensor(ids[j])
                mask[row, :len(ids[j])] = 1
            input_ids, mask = input_ids.to(job.device), mask.to(job.device)
            hidden = model(input_ids=input_ids, attention_mask=mask).last_hidden_state
            out[batch] = _mean_pool(hidden, mask).cpu().numpy()
            real += int(mask.sum())
            padded += mask.numel()
            i += len(batch)
    return Outcome(len(out), time.perf_counter() - start, real, padded)


def _gemm(job: Job) -> Outcome:
    """Best of several square products in the job's dtype (``GEMM_SIZE`` on CPU, four times
    that on a GPU); ``docs`` holds the FLOPs of one product."""
    import torch

    size = GEMM_SIZE * (4 if job.device == "cuda" else 1)
    a, b = (torch.randn(size, size, device=job.device, dtype=getattr(torch, job.dtype))
            for _ in range(2))
    torch.mm(a, b)  # warm-up: thread pool, caches, kernel selection
    _sync(job)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        torch.mm(a, b)
        _sync(job)
        best = min(best, time.perf_counter() - start)
    return Outcome(2 * size**3, best)


CONTENDERS: dict[str, Callable[[Job], Outcome]] = {
    "bertbeam": lambda job: _bertbeam(job, []),
    "bertbeam-int8": lambda job: _bertbeam(job, ["--quantize", "int8"]),
    "mltransform": _mltransform,
    "st-encode": _st_encode,
    "arrival-loop": _arrival_loop,
    "sorted-loop": _sorted_loop,
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", choices=sorted(CONTENDERS))
    p.add_argument("--job", required=True, help="the Job as JSON")
    args = p.parse_args(argv)
    job = Job(**json.loads(args.job))
    _preload()
    import torch

    torch.set_num_threads(job.threads)
    try:
        outcome = asdict(CONTENDERS[args.name](job))
    except Exception as exc:  # reported, not raised: one broken peer must not sink the run
        outcome = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
    print(json.dumps({"name": args.name, **outcome, "peak_rss_mb": peak_rss_mb()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
