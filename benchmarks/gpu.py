"""The GPU benchmark of issue 12, in one run: bertbeam against the ceilings on a CUDA GPU.

    source .gpu/setup.sh && python3 -m benchmarks.gpu --out $OUT --commit SHA   # the GPU
    python -m benchmarks.gpu --smoke --out /tmp/x    # tiny sizes on the CPU, in this process

Three suites, each a corpus with a model, bf16 on the GPU (float32 on the CPU in --smoke):

  minilm          all-MiniLM-L6-v2, 200,000 short demo docs (about 50 tokens), truncated at 256
  bert-base       a random BERT-base (``BertConfig()``, MiniLM's tokenizer), 50,000 of those docs
  bert-base-long  the same model, 2,000 documents of about 2,000 tokens (``corpus.long_texts``)
                  in 512-token windows (``--max-length 512 --long-docs chunk``): compute-bound

Contenders, each in a process of its own (``benchmarks.run.run_contender``):

  bertbeam          ``bertbeam embed`` on the local runner (read Parquet, write Parquet)
  sorted-loop       the hand-written ceiling: one tokenizer call, length-sorted token-budget
                    batches, SDPA, pinned buffers, non-blocking copies, pooling on the GPU
  tokenizer         the tokenizer alone over the same corpus, one call on every core
  st-encode         ``SentenceTransformer.encode`` on the GPU in bf16 (a prefix: --st-docs)
  *@4cpu            bertbeam and the loop on 4 cores, like a g2-standard-4 (prefix: --four-core-docs)
  gemm              a bf16 8192^3 matrix product: the measured peak for MFU

Per contender: steady-state docs/s, tokens/s and MFU (bertbeam: first model batch to the end
of the last, timed by wrapping ``Engine.submit`` / ``Engine.collect_parts``; the loop: its one
tokenizer call to the end, with its GPU side alone as ``untokenized_docs_per_second``),
start-up seconds, whole-process docs/s, peak GPU memory and peak host RSS. Then the issue's
targets (met / BELOW) and the agreement of bertbeam's GPU embeddings with CPU float32 ones
(``--parity-docs`` documents by id, long multi-window ones among them). Writes
``<out>/gpu.json`` (after every entry too) and ``<out>/gpu.png`` (``gpu-smoke.*`` in --smoke).

Estimated wall time on an H200 with 16 cores, at bertbeam's and the loop's rates in
GPU_BASELINE.md (b7aa15c) and about 10 s per process for interpreter, imports, CUDA and the
model: setup of the corpora and the BERT-base checkpoint 20 s, gemm 12 s; minilm: bertbeam
105 s, loop 40 s, tokenizer 18 s, st-encode on 20,000 docs 26 s, 4 cores on 40,000 docs
35 + 20 s; bert-base-long (~5M window tokens): bertbeam 40 s, loop 17 s; bert-base: bertbeam
45 s, loop 24 s; parity on the CPU 35 s: about 440 s (7.3 min), less as bertbeam gets faster.
``--budget`` (default 460 s) bounds it: an entry that would start later is skipped, one that
runs past it is stopped, and both say so in the JSON, which is written in any case.
"""

from __future__ import annotations

import argparse
import importlib
import itertools
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

from benchmarks import report
from benchmarks.checkpoints import random_bert
from benchmarks.contenders import LOOP_BATCH_SIZE, Job
from benchmarks.corpus import Corpus, long_texts, write_corpus, write_texts
from benchmarks.run import (
    REPO,
    embedding_agreement,
    measure,
    run_contender,
    run_in_process,
    token_lengths,
)

MINILM = "embedded:all-MiniLM-L6-v2"
SHORT_LENGTH = 256  # all-MiniLM-L6-v2's max_seq_length
LONG_LENGTH = 512
FOUR_CORES = 4
MIN_ENTRY_SECONDS = 20  # an entry is not started with less of the budget left
SIZES = {  # flag -> (GPU default, --smoke default)
    "minilm_docs": (200_000, 24),
    "bert_docs": (50_000, 12),
    "long_docs": (2_000, 2),
    "long_doc_tokens": (2_000, 1_200),
    "st_docs": (20_000, 8),
    "four_core_docs": (40_000, 8),
    "parity_docs": (300, 12),
    "parity_long_docs": (10, 2),
}
# The targets: (what, how it is computed, at least).
TARGETS = (
    ("bertbeam / sorted-loop, steady docs/s, minilm", ("minilm", "bertbeam", "sorted-loop"), 0.9),
    ("bertbeam / sorted-loop, steady docs/s, bert-base", ("bert-base", "bertbeam", "sorted-loop"), 0.9),
    ("bertbeam / tokenizer alone, steady docs/s, minilm", ("minilm", "bertbeam", "tokenizer"), 0.7),
    ("bertbeam steady MFU, bert-base-long (512-token windows)", ("bert-base-long", "bertbeam", None), 0.35),
    ("bertbeam@4cpu / sorted-loop@4cpu, steady docs/s, minilm",
     ("minilm", "bertbeam@4cpu", "sorted-loop@4cpu"), 0.9),
)
PARITY_TARGET = 0.9999  # per-row cosine, GPU bf16 against CPU float32
DEFINITIONS = {
    "steady": "bertbeam: its engine's first tokenizer call (Engine.encode) to its last model "
              "batch fetched (Engine.collect_parts); sorted-loop: its one tokenizer call to the "
              "end: both start where the per-document work starts; st-encode: encode(); "
              "tokenizer: its one call",
    "steady_main_us_per_doc": "CPU of the contender's main (Python) thread in the steady window "
                              "per document; steady_native_us_per_doc: of its other threads",
    "gpu_busy_fraction": "device time of the model batches (CUDA events around each forward) / "
                         "steady seconds: the GPU side; the rest of the window is the CPU side",
    "repetitions": "a suite's entries run in turn, each repetition starting one entry later",
    "untokenized_docs_per_second": "sorted-loop: documents / (steady - tokenize) seconds, its "
                                   "first batch to the end: the GPU side alone",
    "startup_seconds": "from the start of the timed job to its steady window: model load, CUDA "
                       "context, and for bertbeam the pipeline's start and its first buffer",
    "docs_per_second": "documents / the timed job (model load included, interpreter start and imports not)",
    "process_docs_per_second": "documents / the contender's whole process, interpreter start included",
    "steady_mfu": "report.model_flops of the corpus / steady seconds / gemm peak of this run",
    "gpu_peak_mb": "torch.cuda.max_memory_allocated of the contender's process",
    "peak_rss_mb": "peak resident memory of the contender's process (in --smoke: of the one process)",
    "subset_of": "the contender ran on the first `docs` documents of the suite's corpus (time budget)",
}


@dataclass(frozen=True)
class Suite:
    """A corpus with the model and window policy every contender of the suite runs it with."""

    label: str
    model: str  # "minilm" or "bert-base"
    corpus: Corpus
    max_length: int
    long_docs: str


def bert_base_dir(root: Path, tokenizer_dir: str, *, smoke: bool) -> str:
    """Writes a random BERT-base checkpoint (a small one for ``smoke``) with MiniLM's tokenizer."""
    return random_bert(root, tokenizer_dir, "bert-base-smoke" if smoke else "bert-base")


def plan(suites: dict[str, Suite], models: dict[str, str], args: argparse.Namespace, tmp: Path,
         device: str, dtype: str) -> list[tuple[str, str, str, Job]]:
    """(suite, entry label, contender, job) in the order they run: the figures the targets
    need first, the budget-limited peers last. Suite ``parity`` holds bertbeam's CPU float32
    runs on the first documents of minilm and bert-base-long (see :func:`parity`)."""
    usable = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    threads = args.threads
    four = tuple(usable[:FOUR_CORES]) if usable else None
    prefixes: dict[tuple[str, int], Corpus] = {}

    def job(suite: str, docs: int | None = None, **changes) -> Job:
        s = suites[suite]
        corpus = s.corpus
        if docs is not None and docs < len(corpus.texts):
            if (suite, docs) not in prefixes:
                prefixes[suite, docs] = write_texts(tmp / f"corpus-{suite}-{docs}", corpus.texts[:docs])
            corpus = prefixes[suite, docs]
        return replace(Job(corpus_glob=corpus.glob, model_dir=models[s.model], threads=threads,
                           max_length=s.max_length, work_dir=str(tmp / f"runs-{suite}"), device=device,
                           dtype=dtype, token_budget=args.token_budget, long_docs=s.long_docs,
                           bertbeam_args=tuple(args.bertbeam_args.split())), **changes)

    def cpu_reference(suite: str, docs: int) -> Job:
        return job(suite, docs, work_dir=str(tmp / "runs-parity"), device="cpu", dtype="float32",
                   token_budget=None, bertbeam_args=())

    four_cores = {"cpus": four, "threads": min(len(four), threads) if four else threads}
    return [
        ("device", "gemm", "gemm", job("minilm")),
        ("minilm", "bertbeam", "bertbeam", job("minilm")),
        ("minilm", "sorted-loop", "sorted-loop", job("minilm")),
        ("minilm", "tokenizer", "tokenizer", job("minilm")),
        ("bert-base-long", "bertbeam", "bertbeam", job("bert-base-long")),
        ("bert-base-long", "sorted-loop", "sorted-loop", job("bert-base-long")),
        ("bert-base", "bertbeam", "bertbeam", job("bert-base")),
        ("bert-base", "sorted-loop", "sorted-loop", job("bert-base")),
        ("parity", "minilm", "bertbeam", cpu_reference("minilm", args.parity_docs - args.parity_long_docs)),
        ("parity", "bert-base-long", "bertbeam", cpu_reference("bert-base-long", args.parity_long_docs)),
        ("minilm", "bertbeam@4cpu", "bertbeam", job("minilm", args.four_core_docs, **four_cores)),
        ("minilm", "sorted-loop@4cpu", "sorted-loop", job("minilm", args.four_core_docs, **four_cores)),
        ("minilm", "st-encode", "st-encode", job("minilm", args.st_docs)),
    ]


def parity(runs: dict[tuple[str, str], list[dict]], tmp: Path) -> dict:
    """Per-row cosine of bertbeam's embeddings in the benchmark's runs (bf16 on the GPU) to
    its CPU float32 ones, by id, on the first documents of minilm and bert-base-long."""
    from bertbeam.beam.writing import read_table

    out: dict = {}
    for (suite, label), entry_runs in runs.items():
        if suite != "parity":
            continue
        reference = tmp / "runs-parity" / f"{label}-0" / "out"
        benchmark = tmp / f"runs-{label}" / "bertbeam-0" / "out"
        failed = next((r["error"] for r in entry_runs + runs.get((label, "bertbeam"), [])
                       if "error" in r), None)
        if failed:
            out[label] = {"error": failed}
            continue
        chunks = read_table(str(reference), columns=["n_chunks"]).column("n_chunks").to_pylist()
        out[label] = {**embedding_agreement(str(reference), str(benchmark)),
                      "multi_window_docs": sum(c > 1 for c in chunks)}
    done = [r for r in out.values() if "error" not in r]
    if done:
        docs = sum(r["docs"] for r in done)
        out["all"] = {"docs": docs, "multi_window_docs": sum(r["multi_window_docs"] for r in done),
                      "min_cosine": min(r["min_cosine"] for r in done),
                      "mean_cosine": round(sum(r["mean_cosine"] * r["docs"] for r in done) / docs, 6)}
    return out


def targets(suites: dict, parity_result: dict) -> list[dict]:
    """The issue's targets, each with its measured value and met / BELOW."""
    rows = []
    for what, (suite, a, b), least in TARGETS:
        contenders = suites.get(suite, {}).get("contenders", {})
        value = (contenders.get(a, {}).get("steady_mfu") if b is None else
                 report.ratio(contenders, a, b, key="steady_docs_per_second"))
        rows.append({"what": what, "value": value, "target": least})
    rows.append({"what": "GPU bf16 vs CPU float32, per-row cosine, min",
                 "value": parity_result.get("all", {}).get("min_cosine"), "target": PARITY_TARGET})
    for row in rows:
        row["verdict"] = "n/a" if row["value"] is None else ("met" if row["value"] >= row["target"] else "BELOW")
    return rows


def ratios(suites: dict) -> dict:
    """Per suite, bertbeam (and bertbeam@4cpu) over each peer that ran beside it: steady state
    and whole process."""
    out = {}
    for label, s in suites.items():
        rows = s["contenders"]
        pairs = [(a, b) for a in ("bertbeam", "bertbeam@4cpu") for b in rows
                 if a in rows and not b.startswith("bertbeam") and b.endswith("@4cpu") == a.endswith("@4cpu")]
        out[label] = {f"{a} / {b}": {"steady": report.ratio(rows, a, b, key="steady_docs_per_second"),
                                     "whole_process": report.ratio(rows, a, b, key="process_docs_per_second")}
                      for a, b in pairs}
    return out


def environment(device: str, commit: str | None) -> dict:
    """Commit, device, library versions and CPU count of this run."""
    import torch

    versions = {}
    for module in ("torch", "transformers", "tokenizers", "apache_beam", "sentence_transformers",
                   "numpy", "pyarrow"):
        try:
            versions[module] = importlib.import_module(module).__version__
        except Exception as exc:  # an optional peer missing is reported, not fatal
            versions[module] = f"unavailable ({type(exc).__name__})"
    dirty = None
    if commit is None:
        try:
            commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                                    text=True, check=True).stdout.strip()
            dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                        cwd=REPO, capture_output=True, text=True).stdout.strip())
        except (OSError, subprocess.CalledProcessError):
            commit = None
    cuda = device == "cuda"
    return {
        "commit": commit,
        "commit_dirty": dirty,
        "device": torch.cuda.get_device_name(0) if cuda else (platform.processor() or "cpu"),
        "python": platform.python_version(),
        "versions": versions,
        "cpus": os.cpu_count(),
        "cpus_usable": usable_cores(),
    }


def render(result: dict) -> str:
    """The console report: per suite the steady-state figures, then the targets."""
    lines = []
    for label, s in result["suites"].items():
        lines.append(f"\n{label}: {s['docs']} docs, {s['windows']} windows, {s['real_tokens']} tokens")
        for name, r in s["contenders"].items():
            if "error" in r:
                lines.append(f"  {name}: {r['error'][:200]}")
                continue
            mfu = "n/a" if r["steady_mfu"] is None else f"{r['steady_mfu']:.1%}"
            lines.append(f"  {name}: steady {r['steady_docs_per_second']} docs/s, "
                         f"{r['steady_tokens_per_second']} tokens/s, MFU {mfu}; main thread "
                         f"{r.get('steady_main_us_per_doc')} µs/doc, GPU busy "
                         f"{r.get('gpu_busy_fraction')}; start-up "
                         f"{r['startup_seconds']} s; whole process {r['process_docs_per_second']} "
                         f"docs/s; GPU {r['gpu_peak_mb']} MiB, RSS {r['peak_rss_mb']} MiB")
    lines.append(f"\nGEMM peak {result['gemm_peak_tflops']} TFLOP/s; targets:")
    lines += [f"  {t['what']}: {t['value']} (target >= {t['target']}: {t['verdict']})"
              for t in result["targets"]]
    return "\n".join(lines)


def chart(result: dict, path: str) -> None:
    """One panel per suite: steady-state docs/s with MFU, bertbeam in blue."""
    plt = report.pyplot()
    suites = result["suites"]
    heights = [0.45 * len(s["contenders"]) + 0.9 for s in suites.values()]
    fig, axes = plt.subplots(len(suites), 1, figsize=(10, sum(heights) + 0.8),
                             gridspec_kw={"height_ratios": heights}, squeeze=False)
    for ax, (label, s) in zip(axes[:, 0], suites.items(), strict=True):
        report.rate_panel(ax, s["contenders"], "steady_docs_per_second", "steady_mfu")
        ax.set_title(f"{label}: {s['docs']:,} docs, {s['real_tokens']:,} tokens", fontsize=9)
    axes[-1, 0].set_xlabel("documents / second, steady state (higher is better)")
    fig.suptitle(f"bertbeam embed on {result['environment']['device']} ({result['dtype']}), "
                 f"commit {(result['environment']['commit'] or 'unknown')[:10]}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true",
                   help="tiny sizes on the CPU in float32, every contender in this process")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    p.add_argument("--commit", default=os.environ.get("BERTBEAM_COMMIT"),
                   help="the commit measured (default: $BERTBEAM_COMMIT, else git rev-parse HEAD)")
    p.add_argument("--token-budget", type=int, default=None,
                   help="padded tokens per batch, every contender (default 65,536; 2,048 in --smoke)")
    p.add_argument("--bertbeam-args", default="", help="more `bertbeam embed` flags, one string")
    p.add_argument("--reps", type=int, default=1, help="repetitions of every entry")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads per contender (default: the usable cores; 1 in --smoke, "
                        "where a shared CPU runs one thread faster than a team)")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds for all entries (default 460; no limit in --smoke)")
    p.add_argument("--in-process", action=argparse.BooleanOptionalAction, default=None,
                   help="run the contenders in this process, not each in its own (default: "
                        "only in --smoke, where an interpreter start costs more than the work)")
    for name in SIZES:
        p.add_argument(f"--{name.replace('_', '-')}", type=int, default=None,
                       help=f"default {SIZES[name][0]:,} ({SIZES[name][1]} in --smoke)")
    args = p.parse_args(argv)
    for name, (full, smoke) in SIZES.items():
        if getattr(args, name) is None:
            setattr(args, name, smoke if args.smoke else full)
        if getattr(args, name) <= 0:
            p.error(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.parity_long_docs >= args.parity_docs:
        p.error(f"--parity-long-docs ({args.parity_long_docs}) must be below --parity-docs ({args.parity_docs})")
    if args.budget is None and not args.smoke:
        args.budget = 460.0
    if args.threads is None:
        args.threads = 1 if args.smoke else usable_cores()
    if args.token_budget is None:
        args.token_budget = 2048 if args.smoke else 65536
    if args.in_process is None:
        args.in_process = args.smoke
    return args


def prepare(args: argparse.Namespace, tmp: Path) -> tuple[dict[str, str], dict[str, Suite], dict]:
    """Models, the suites' corpora, and per suite its window lengths, config and the FLOPs of
    every prefix of its windows (for contenders that ran on the first documents)."""
    from bertbeam.core.models import resolve_model_dir

    minilm = resolve_model_dir(MINILM)
    models = {"minilm": minilm, "bert-base": bert_base_dir(tmp, minilm, smoke=args.smoke)}
    long = write_texts(tmp / "corpus-long", long_texts(args.long_docs, tokens=args.long_doc_tokens))
    suites = {
        "minilm": Suite("minilm", "minilm", write_corpus(tmp / "corpus-minilm", args.minilm_docs),
                        SHORT_LENGTH, "truncate"),
        "bert-base": Suite("bert-base", "bert-base", write_corpus(tmp / "corpus-bert", args.bert_docs),
                           SHORT_LENGTH, "truncate"),
        "bert-base-long": Suite("bert-base-long", "bert-base", long, LONG_LENGTH, "chunk"),
    }
    shapes = {}
    for label, s in suites.items():
        windows, config = token_lengths(s.corpus, models[s.model], s.max_length, long_docs=s.long_docs)
        shapes[label] = {"windows": windows,
                         "flops": list(itertools.accumulate(report.window_flops(windows, config))),
                         "tokens": list(itertools.accumulate(windows))}
    return models, suites, shapes


def suite_reports(suites: dict[str, Suite], shapes: dict, runs: dict, peak: float | None) -> dict:
    """Per suite: its corpus and a report row per contender. A contender that ran on the first
    ``docs`` documents (of a truncating suite: one window each) is rated on those."""
    out = {}
    for label, s in suites.items():
        shape, rows = shapes[label], {}
        for (suite, entry), entry_runs in runs.items():
            if suite != label:
                continue
            docs = next((r["docs"] for r in entry_runs if "docs" in r), len(s.corpus.texts))
            last = (docs if docs < len(s.corpus.texts) else len(shape["windows"])) - 1
            rows[entry] = report.summarize(  # a tokenizer has no FLOP utilisation
                entry_runs, real_tokens=shape["tokens"][last], flops=shape["flops"][last],
                peak_flops=None if entry == "tokenizer" else peak)
            if "error" not in rows[entry]:  # CPU side (by thread) and GPU side apart
                rows[entry].update(report.cpu_figures(entry_runs, rows[entry]["docs"]))
            if docs < len(s.corpus.texts):
                rows[entry]["subset_of"] = len(s.corpus.texts)
        out[label] = {"model": s.model, "docs": len(s.corpus.texts), "windows": len(shape["windows"]),
                      "real_tokens": shape["tokens"][-1], "max_length": s.max_length,
                      "long_docs": s.long_docs, "model_gflops_total": round(shape["flops"][-1] / 1e9, 1),
                      "contenders": rows}
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    device, dtype = ("cpu", "float32") if args.smoke else ("cuda", "bfloat16")
    if device == "cuda" and not torch.cuda.is_available():
        print("benchmarks.gpu: torch sees no CUDA device; use --smoke for the CPU check.", file=sys.stderr)
        return 2
    if not args.in_process:
        # The parent's own tokenizer calls (token counts for the report) on every core too.
        os.environ["TOKENIZERS_PARALLELISM"] = "true"
    runner = run_in_process if args.in_process else run_contender
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / ("gpu-smoke.json" if args.smoke else "gpu.json")

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    started = time.time()
    deadline = time.perf_counter() + (args.budget or float("inf"))
    with tempfile.TemporaryDirectory(prefix="bertbeam-gpu-") as tmp_name:
        tmp = Path(tmp_name)
        models, suites, shapes = prepare(args, tmp)
        log(f"set up in {time.time() - started:.0f} s: " + ", ".join(
            f"{label} {len(s.corpus.texts)} docs / {shapes[label]['tokens'][-1]} tokens"
            for label, s in suites.items()))
        runs: dict[tuple[str, str], list[dict]] = {}
        parity_result: dict = {}
        env = environment(device, args.commit)

        def result(complete: bool) -> dict:
            gemm = [r for r in runs.get(("device", "gemm"), []) if "error" not in r]
            peak = max(r["docs"] / r["seconds"] for r in gemm) if gemm else None
            reports = suite_reports(suites, shapes, runs, peak)
            return {
                "complete": complete, "smoke": args.smoke, "dtype": dtype,
                "environment": env,
                "gemm_peak_tflops": round(peak / 1e12, 3) if peak else None,
                "gemm": runs.get(("device", "gemm"), [None])[0],
                "settings": {"token_budget": args.token_budget, "bertbeam_args": args.bertbeam_args,
                             "threads": args.threads, "four_cores": FOUR_CORES,
                             "st_encode_batch_size": LOOP_BATCH_SIZE, "reps": args.reps,
                             "budget_seconds": args.budget, "in_process": args.in_process,
                             **{name: getattr(args, name) for name in SIZES}},
                "definitions": DEFINITIONS, "flops_formula": report.FORMULA,
                "suites": reports, "parity": parity_result,
                "targets": targets(reports, parity_result), "ratios": ratios(reports),
                "wall_seconds": round(time.time() - started, 1),
            }

        for suite, entries in itertools.groupby(plan(suites, models, args, tmp, device, dtype),
                                                key=lambda entry: entry[0]):
            group = {label: (name, job) for _, label, name, job in entries}
            left = deadline - time.perf_counter()
            if left < MIN_ENTRY_SECONDS:
                for label in group:
                    runs[suite, label] = [{"error": f"skipped: the {args.budget:.0f} s budget was spent"}]
                log(f"{suite} {', '.join(group)}: skipped, the budget was spent")
                continue
            log(f"{suite}:")
            # A suite's entries in turn, each repetition starting one entry later, so that a
            # slow spell of the machine falls on all of them alike.
            measured = measure(group, args.reps, log=log, runner=runner,
                               timeout=None if args.budget is None else left)
            for label, entry_runs in measured.items():
                runs[suite, label] = entry_runs
            # After every suite, so that a run stopped from outside still leaves its figures.
            path.write_text(json.dumps(result(complete=False), indent=2) + "\n")
        try:
            parity_result.update(parity(runs, tmp))
        except Exception as exc:  # the figures above must land even so
            parity_result["error"] = f"{type(exc).__name__}: {exc}"[:2000]
        final = result(complete=True)
    path.write_text(json.dumps(final, indent=2) + "\n")
    chart(final, str(path.with_suffix(".png")))
    print(render(final))
    print(f"\nwrote {path} and {path.with_suffix('.png').name} in {final['wall_seconds']} s")
    failed = [label for s in final["suites"].values() for label, r in s["contenders"].items()
              if label.startswith("bertbeam") and "error" in r]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
