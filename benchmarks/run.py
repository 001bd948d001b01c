"""Side-by-side throughput: bertbeam against its peers, on one corpus, in one run.

    python -m benchmarks.run --quick          # CI smoke: small corpus, one repetition
    python -m benchmarks.run --full           # real numbers: larger corpus, repetitions,
                                              # int8 and the linearity figures

Each contender runs in a process of its own (so its peak RSS is its own) with the same
thread count; repetitions are interleaved (the order rotates) and the median time counts.
Absolute figures on a shared machine are noisy: read the ratios, which are measured in the
same run. Writes ``<out>/<mode>.json`` and ``<out>/<mode>.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

from benchmarks import report
from benchmarks.contenders import CONTENDERS, Job, run_named, token_windows
from benchmarks.corpus import Corpus, write_corpus

SIZES = {"quick": 600, "full": 2400}
REPETITIONS = {"quick": 1, "full": 3}
DEFAULT_CONTENDERS = ("gemm", "bertbeam", "mltransform", "st-encode", "arrival-loop", "sorted-loop")
MAX_LENGTH = 256  # all-MiniLM-L6-v2's max_seq_length: every contender truncates there
REPO = Path(__file__).resolve().parent.parent
QUICK_BERTBEAM = "bertbeam@quick"  # the linearity entry: bertbeam on the quick-size corpus

# The targets of issue 5: (numerator, denominator, at least).
TARGETS = (
    ("bertbeam", "sorted-loop", 0.9),
    ("bertbeam", "mltransform", 3.0),
    ("bertbeam", "st-encode", 1.5),
    ("bertbeam-int8", "bertbeam", 1.8),
    ("bertbeam-onnx-int8", "bertbeam", 1.8),
    ("bertbeam-bf16", "bertbeam", None),  # no target: AMX CPUs only (docs/performance.md)
)
ONNX_CONTENDERS = {"bertbeam-onnx": "none", "bertbeam-onnx-int8": "int8"}
FULL_EXTRAS = ("bertbeam-int8", *ONNX_CONTENDERS, "bertbeam-bf16")
"""bertbeam run other ways (full mode only); their embeddings are compared with float32's."""


def run_contender(name: str, job: Job, *, timeout: float | None) -> dict:
    """Runs one contender in a fresh interpreter and returns its JSON report."""
    env = {**os.environ, "OMP_NUM_THREADS": str(job.threads), "MKL_NUM_THREADS": str(job.threads),
           "TOKENIZERS_PARALLELISM": "true", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    cmd = [sys.executable, "-m", "benchmarks.contenders", name, "--job", json.dumps(asdict(job))]
    start, cpu_before = time.perf_counter(), _children_cpu()
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
        exited_at = time.time()
    except subprocess.TimeoutExpired:
        return {"name": name, "error": f"timed out after {timeout:.0f} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"name": name, "error": f"exit {proc.returncode}: {' | '.join(tail)}"[:2000]}
    return {**with_shutdown(json.loads(lines[-1]), exited_at), "process_seconds": time.perf_counter() - start,
            "process_cpu": _children_cpu() - cpu_before}


def _children_cpu() -> float:
    """CPU seconds (user + system) of the child processes waited for so far: a contender's
    whole process, interpreter start and imports included, is the difference around it."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def with_shutdown(outcome: dict, exited_at: float) -> dict:
    """``outcome`` with its end apart: ``shutdown_seconds`` from the last model batch (or the
    end of the job, where no batch is timed) to the process's exit, of which ``exit_seconds``
    came after the job returned (the interpreter's teardown)."""
    returned = outcome.get("returned_at")
    if returned is None:
        return outcome
    last = outcome.get("last_batch_at") or returned
    return {**outcome, "shutdown_seconds": exited_at - last, "exit_seconds": exited_at - returned}


def run_in_process(name: str, job: Job, *, timeout: float | None) -> dict:
    """``run_contender`` in this process (no timeout, no own peak RSS): for smoke tests,
    where an interpreter start per contender costs more than the work."""
    start = time.perf_counter()
    return {**run_named(name, job), "process_seconds": time.perf_counter() - start}


def token_lengths(corpus: Corpus, model_dir: str, max_length: int, *,
                  long_docs: str = "truncate") -> tuple[list[int], object]:
    """Real tokens per model window (one per document, truncated, unless ``long_docs`` is
    ``chunk``) and the model config."""
    from transformers import AutoConfig, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    ids, _ = token_windows(tokenizer, corpus.texts, max_length=max_length, long_docs=long_docs)
    return [len(x) for x in ids], AutoConfig.from_pretrained(model_dir)


def measure(entries: dict[str, tuple[str, Job]], reps: int, *, timeout: float | None,
            log, runner=run_contender) -> dict[str, list[dict]]:
    """``reps`` rounds over ``entries`` (label -> contender and its job), each run by
    ``runner`` (a process of its own by default); each round starts one entry later, so slow
    spells of a shared machine fall on every entry alike."""
    labels = list(entries)
    runs: dict[str, list[dict]] = {label: [] for label in labels}
    for rep in range(reps):
        for label in labels[rep % len(labels):] + labels[:rep % len(labels)]:
            name, job = entries[label]
            work = Path(job.work_dir) / f"{label}-{rep}"
            result = runner(name, replace(job, work_dir=str(work)), timeout=timeout)
            runs[label].append(result)
            shown = result.get("error") or f"{result['seconds']:.1f} s, {result['peak_rss_mb']:.0f} MiB"
            log(f"  [{rep + 1}/{reps}] {label}: {shown}")
    return runs


def warm_onnx_exports(model_dir: str, names: list[str], log) -> dict[str, float]:
    """Exports the model for the ONNX contenders before anything is timed (the export is a
    once-per-model cost, cached like a model download); returns the seconds each took.

    In a process of its own: a contender forked from a parent that holds a model starts with
    the parent's pages in its peak RSS (Linux counts them at fork), which would blur every
    contender's memory figure."""
    seconds = {}
    for name in names:
        start = time.perf_counter()
        code = ("from bertbeam.config import ModelSpec; from bertbeam.core.models import load_model; "
                f"load_model(ModelSpec(uri={model_dir!r}, backend='onnx', "
                f"quantize={ONNX_CONTENDERS[name]!r}), 'AutoModel')")
        subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
        seconds[name] = round(time.perf_counter() - start, 1)
        log(f"  {name}: ONNX export ready in {seconds[name]} s (cached for the timed runs)")
    return seconds


def variant_fidelity(work_dir: str, reps: int, other: str) -> dict | None:
    """Cosine of another bertbeam variant's embeddings (int8, ONNX, bf16) to its torch fp32
    ones, document by document."""
    fp32 = Path(work_dir) / f"bertbeam-{reps - 1}" / "out"
    int8 = Path(work_dir) / f"{other}-{reps - 1}" / "out"
    if not (fp32.exists() and int8.exists()):
        return None
    return embedding_agreement(str(fp32), str(int8))


def embedding_agreement(reference: str, other: str) -> dict:
    """Per-document cosine of the embeddings in the bertbeam output ``other`` to those in
    ``reference``, matched by id, over every id of ``reference``."""
    import numpy as np
    import pyarrow.compute as pc

    from bertbeam.beam.writing import read_table

    a = read_table(reference, columns=["id", "embedding"]).sort_by("id")
    b = read_table(other, columns=["id", "embedding"])
    b = b.filter(pc.is_in(b.column("id"), value_set=a.column("id"))).sort_by("id")
    if a.column("id").to_pylist() != b.column("id").to_pylist():
        return {"error": f"{other} lacks {a.num_rows - b.num_rows} of the {a.num_rows} ids of {reference}"}
    va, vb = (np.stack(t.column("embedding").to_numpy(zero_copy_only=False)) for t in (a, b))
    cos = (va * vb).sum(1) / (np.linalg.norm(va, axis=1) * np.linalg.norm(vb, axis=1))
    return {"mean_cosine": round(float(cos.mean()), 6), "min_cosine": round(float(cos.min()), 6),
            "docs": len(cos)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", dest="mode", action="store_const", const="quick")
    mode.add_argument("--full", dest="mode", action="store_const", const="full")
    p.add_argument("--docs", type=int, default=None, help="corpus size (default: by mode)")
    p.add_argument("--reps", type=int, default=None, help="repetitions (default: by mode)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--contenders", default=None,
                   help=f"comma-separated subset of: {', '.join(CONTENDERS)}")
    p.add_argument("--model", default="embedded:all-MiniLM-L6-v2")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    p.add_argument("--timeout", type=float, default=1800, help="seconds per contender run")
    args = p.parse_args(argv)
    mode = args.mode or "quick"
    n_docs = args.docs or SIZES[mode]
    reps = args.reps or REPETITIONS[mode]
    names = (args.contenders.split(",") if args.contenders else
             [*DEFAULT_CONTENDERS, *(FULL_EXTRAS if mode == "full" else ())])
    unknown = [n for n in names if n not in CONTENDERS]
    if unknown:
        p.error(f"unknown contender {unknown[0]!r}; valid: {', '.join(CONTENDERS)}")

    from bertbeam.core.models import resolve_model_dir

    model_dir = resolve_model_dir(args.model)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    started = time.time()
    with tempfile.TemporaryDirectory(prefix="bertbeam-bench-") as tmp:
        corpus = write_corpus(Path(tmp) / "corpus", n_docs)
        lengths, config = token_lengths(corpus, model_dir, MAX_LENGTH)
        job = Job(corpus_glob=corpus.glob, model_dir=model_dir, threads=args.threads,
                  max_length=MAX_LENGTH, work_dir=str(Path(tmp) / "runs"))
        log(f"{mode}: {n_docs} docs, {sum(lengths)} tokens, {args.threads} threads, {reps} rep(s)")
        entries = {name: (name, job) for name in names}
        with_linearity = mode == "full" and "bertbeam" in names and not args.docs
        if with_linearity:
            # bertbeam on the quick-size prefix of the same corpus, in the same rotation.
            small = write_corpus(Path(tmp) / "corpus-quick", SIZES["quick"])
            entries[QUICK_BERTBEAM] = ("bertbeam", replace(job, corpus_glob=small.glob))
        exports = warm_onnx_exports(model_dir, [n for n in names if n in ONNX_CONTENDERS], log)
        runs = measure(entries, reps, timeout=args.timeout, log=log)
        fidelity = {other: variant_fidelity(job.work_dir, reps, other)
                    for other in FULL_EXTRAS if other in names} or None
        linearity = linearity_figures(runs[QUICK_BERTBEAM], runs["bertbeam"]) if with_linearity else None
    flops = report.model_flops(lengths, config)
    gemm = [r for r in runs.get("gemm", []) if "error" not in r]
    peak = max(r["docs"] / r["seconds"] for r in gemm) if gemm else None
    rows = {n: report.summarize(runs[n], real_tokens=sum(lengths), flops=flops, peak_flops=peak)
            for n in names}
    result = {
        "mode": mode,
        "machine": {"cpus": os.cpu_count(), "threads": args.threads,
                    "gemm_peak_gflops": round(peak / 1e9, 1) if peak else None,
                    "load_average_at_end": os.getloadavg()},
        "corpus": {"docs": n_docs, "real_tokens": sum(lengths), "max_length": MAX_LENGTH,
                   "mean_tokens": round(sum(lengths) / len(lengths), 1)},
        "model": args.model,
        "flops_formula": report.FORMULA,
        "model_gflops_total": round(flops / 1e9, 1),
        "repetitions": reps,
        "contenders": rows,
        "ratios": {f"{a} / {b}": {"ratio": report.ratio(rows, a, b), "target": t,
                                  "process_ratio": report.ratio(rows, a, b, key="process_docs_per_second")}
                   for a, b, t in TARGETS if a in rows and b in rows},
        "fidelity": fidelity,
        "onnx_export_seconds": exports or None,
        "linearity": linearity,
        "wall_seconds": round(time.time() - started, 1),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{mode}.json").write_text(json.dumps(result, indent=2) + "\n")
    report.chart(rows, str(out / f"{mode}.png"),
                 title=f"all-MiniLM-L6-v2 embeddings, {n_docs} docs, {args.threads} threads "
                       f"({os.cpu_count()}-core shared machine; median of {reps})")
    print(render(result))
    print(f"\nwrote {out / f'{mode}.json'} and {out / f'{mode}.png'}")
    # A peer may fail to run (that is reported); bertbeam itself failing is a failed run.
    broken = [n for n in names if n.startswith("bertbeam") and "error" in rows[n]]
    if broken:
        print(f"bertbeam contender failed: {rows[broken[0]]['error']}", file=sys.stderr)
        return 1
    return 0


def linearity_figures(quick_runs: list[dict], full_runs: list[dict]) -> dict:
    """bertbeam at the quick size beside the full size: docs/s and peak RSS should match."""
    out = {}
    for label, runs in (("quick", quick_runs), ("full", full_runs)):
        ok = [r for r in runs if "error" not in r]
        if not ok:
            return {"error": runs[0]["error"]}
        rate = sorted(r["docs"] / r["seconds"] for r in ok)[len(ok) // 2]
        out[label] = {"docs": ok[0]["docs"], "docs_per_second": round(rate, 2),
                      "peak_rss_mb": max(r["peak_rss_mb"] for r in ok)}
    out["docs_per_second_ratio"] = round(out["full"]["docs_per_second"] / out["quick"]["docs_per_second"], 3)
    out["peak_rss_ratio"] = round(out["full"]["peak_rss_mb"] / out["quick"]["peak_rss_mb"], 3)
    return out


def render(result: dict) -> str:
    """The human-readable report: table, ratios against targets, int8 and linearity."""
    lines = [report.table(result["contenders"]), "", report.phases(result["contenders"]), ""]
    m = result["machine"]
    lines.append(f"GEMM peak: {m['gemm_peak_gflops']} GFLOP/s on {m['threads']} threads; "
                 f"model FLOPs: {result['flops_formula']}")
    for key, r in result["ratios"].items():
        process = f", whole process {r['process_ratio']}" if r.get("process_ratio") is not None else ""
        if r["target"] is None:
            lines.append(f"{key}: {r['ratio']}{process} (no target)")
            continue
        verdict = "n/a" if r["ratio"] is None else ("meets" if r["ratio"] >= r["target"] else "BELOW")
        lines.append(f"{key}: {r['ratio']}{process} (target >= {r['target']}: {verdict})")
    for name, f in (result["fidelity"] or {}).items():
        if f and "error" not in f:
            lines.append(f"{name} vs fp32 cosine: mean {f['mean_cosine']}, min {f['min_cosine']} "
                         f"over {f['docs']} docs")
    lin = result["linearity"]
    if lin and "error" not in lin:
        lines.append(f"linearity: docs/s full/quick {lin['docs_per_second_ratio']}, "
                     f"peak RSS full/quick {lin['peak_rss_ratio']}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
