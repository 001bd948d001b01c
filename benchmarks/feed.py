"""Feed the model: what bertbeam spends per document around a model that costs (nearly) nothing.

    python -m benchmarks.feed --quick --out DIR       # CI smoke: small corpora, one repetition,
                                                      # every contender in this process
    python -m benchmarks.feed --out benchmarks/results   # 50,000 short docs, long docs, 3 reps

On a GPU the model is nearly free, so the CPU work around it decides the rate, and the part
of that work that holds Python's lock on one thread is what no number of cores spreads. Both
can be measured on a CPU with a model that costs nothing (``benchmarks.checkpoints``):

  short-null  the null model (the embeddings alone), 50,000 short demo docs (~51 tokens),
              truncated at 256, one stream of one thread (``--cpu-streams 1 --threads 1``),
              as a GPU worker runs its model
  short-tiny  the near-zero BERT (hidden 32, 1 layer), the same docs, default options
  long-tiny   the near-zero BERT, documents of ~2,000 tokens in 512-token windows (chunk)

Contenders, each a process of its own (``benchmarks.run.run_contender``), interleaved over
the repetitions: the tokenizer alone (one call), the project's sorted loop (one tokenizer
call, token-budget batches, numpy padding), the library path (``Engine.infer``, no Beam) and
``bertbeam embed`` as a user runs it. Figures per contender (medians): docs/s; CPU per
document in the steady window (from the first tokenizer call to the last batch), of the main
Python thread (its CPU clock; of it, the model's forward apart, so that the framework's own
serial work shows) and of the native threads (the rest of the process: tokenizer, torch,
the Parquet writer); documents per CPU-second in the steady window and over the whole process
(interpreter start and imports included: the parent's ``RUSAGE_CHILDREN``); phases (imports,
start-up to the first document, to the first batch, the stream, the tail to exit); batches;
the CPU of each live thread by name at the end. CPU seconds do not grow when a shared
machine makes a process wait, so they are the figures to compare on a loaded machine.
Writes ``<out>/feed.json`` (``feed-quick.json`` in --quick) with the commit and machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks import report
from benchmarks.checkpoints import random_bert
from benchmarks.contenders import Job
from benchmarks.corpus import long_texts, write_corpus, write_texts
from benchmarks.gpu import environment
from benchmarks.run import REPO, measure, run_contender, run_in_process, token_lengths

MINILM = "embedded:all-MiniLM-L6-v2"
SHORT_LENGTH = 256
LONG_LENGTH = 512
SIZES = {"full": {"short_docs": 50_000, "long_docs": 1_000, "long_doc_tokens": 2_000, "reps": 3},
         "quick": {"short_docs": 600, "long_docs": 4, "long_doc_tokens": 1_200, "reps": 1}}


@dataclass(frozen=True)
class Suite:
    """A corpus, a model and the options every contender of the suite runs with."""

    label: str
    model: str  # a benchmarks.checkpoints shape
    corpus: str  # "short" or "long"
    max_length: int
    long_docs: str
    contenders: tuple[str, ...]
    threads: int | None = None  # None: every usable core
    cpu_streams: int | None = None  # None: bertbeam's default


SUITES = (
    Suite("short-null", "null", "short", SHORT_LENGTH, "truncate",
          ("tokenizer", "sorted-loop", "library", "bertbeam"), threads=1, cpu_streams=1),
    Suite("short-tiny", "near-zero", "short", SHORT_LENGTH, "truncate",
          ("sorted-loop", "library", "bertbeam")),
    Suite("long-tiny", "near-zero", "long", LONG_LENGTH, "chunk", ("sorted-loop", "bertbeam")),
)
QUICK_SUITES = ("short-null", "long-tiny")
QUICK_CONTENDERS = {"long-tiny": ("bertbeam",)}

# The targets: (suite, what, key, numerator, denominator or None, at least / at most).
TARGETS = (
    ("short-null", "bertbeam main-thread CPU per document in the stream, µs (at most)",
     "steady_main_us_per_doc", "bertbeam", None, 20.0),
    ("short-null", "bertbeam / sorted-loop, docs per CPU-second in the stream",
     "steady_docs_per_cpu_second", "bertbeam", "sorted-loop", 0.9),
    ("short-null", "bertbeam / sorted-loop, docs per CPU-second, whole process",
     "process_docs_per_cpu_second", "bertbeam", "sorted-loop", 0.8),
    ("short-tiny", "bertbeam / sorted-loop, docs per CPU-second in the stream",
     "steady_docs_per_cpu_second", "bertbeam", "sorted-loop", 0.9),
    ("long-tiny", "bertbeam / sorted-loop, docs per CPU-second in the stream",
     "steady_docs_per_cpu_second", "bertbeam", "sorted-loop", 1.0),
)
DEFINITIONS = {
    "steady window": "bertbeam and library: the engine's first tokenizer call (Engine.encode) to "
                     "its last batch's outputs on the host; sorted-loop: its tokenizer call to the "
                     "end; tokenizer: its one call",
    "steady_main_us_per_doc": "CPU of the main (Python) thread in the steady window / documents",
    "steady_model_main_us_per_doc": "of the main thread's CPU, what the model's forward (and its "
                                    "pooling) took there: bertbeam and library: Engine._forward "
                                    "less its padding (collate); sorted-loop: the model call and "
                                    "mean pooling; tokenizer: none; 0 where the model runs on "
                                    "other threads",
    "steady_main_less_model_us_per_doc": "main-thread CPU per document without the model's: the "
                                         "framework's own serial work (reading, tokenizing, "
                                         "batching, padding, post-processing, writing)",
    "steady_native_us_per_doc": "CPU of the rest of the process (tokenizer and torch threads) in "
                                "the steady window / documents",
    "steady_docs_per_cpu_second": "documents / CPU seconds of the whole process in the steady window",
    "process_docs_per_cpu_second": "documents / CPU seconds of the contender's whole process "
                                   "(interpreter start, imports, launch, exit)",
    "phases": "imports: process start to the timed job; startup: job start to the first "
              "document; first_batch: job start to the first model batch; steady; shutdown: "
              "last batch to process exit",
}


def suite_report(suite: Suite, runs: dict[str, list[dict]], real_tokens: int) -> dict:
    """A row per contender: report.summarize's rates with the CPU figures beside them."""
    rows = {}
    for name, entry_runs in runs.items():
        row = report.summarize(entry_runs, real_tokens=real_tokens, flops=0.0, peak_flops=None)
        if "error" not in row:
            row.update(report.cpu_figures(entry_runs, row["docs"]))
            for key in ("model_flops_per_second", "mfu", "steady_mfu"):
                row.pop(key, None)
        rows[name] = row
    return rows


def ratios(rows: dict) -> dict:
    """bertbeam and the library over each other contender: per CPU-second (stream and whole
    process), main-thread CPU per document, and wall docs/s."""
    out = {}
    for a in ("bertbeam", "library"):
        for b in rows:
            if b == a or b == "bertbeam" or a not in rows:
                continue
            out[f"{a} / {b}"] = {
                "steady_per_cpu_second": report.ratio(rows, a, b, key="steady_docs_per_cpu_second"),
                "process_per_cpu_second": report.ratio(rows, a, b, key="process_docs_per_cpu_second"),
                "steady_docs_per_second": report.ratio(rows, a, b, key="steady_docs_per_second"),
                "main_us_per_doc": [rows[a].get("steady_main_us_per_doc"),
                                    rows[b].get("steady_main_us_per_doc")],
                "main_less_model_us_per_doc": [rows[a].get("steady_main_less_model_us_per_doc"),
                                               rows[b].get("steady_main_less_model_us_per_doc")],
            }
    return out


def targets(suites: dict) -> list[dict]:
    """The issue's targets with their measured values and met / BELOW."""
    out = []
    for suite, what, key, a, b, bound in TARGETS:
        rows = suites.get(suite, {}).get("contenders", {})
        value = rows.get(a, {}).get(key) if b is None else report.ratio(rows, a, b, key=key)
        if value is None:
            verdict = "n/a"
        elif b is None:  # an upper bound
            verdict = "met" if value <= bound else "ABOVE"
        else:
            verdict = "met" if value >= bound else "BELOW"
        out.append({"suite": suite, "what": what, "value": value, "target": bound, "verdict": verdict})
    return out


def render(result: dict) -> str:
    """The console report: a table per suite, then the targets."""
    lines = []
    for label, s in result["suites"].items():
        lines += [f"\n{label}: {s['docs']} docs, {s['real_tokens']} tokens ({s['model']}, "
                  f"max_length {s['max_length']}, {s['long_docs']}, {s['options']})",
                  "| contender | docs/s steady | main µs/doc | of which model | main less model | "
                  "native µs/doc | docs/CPU-s steady | docs/CPU-s process | batches | imports s | "
                  "startup s | steady s | shutdown s |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for name, r in s["contenders"].items():
            if "error" in r:
                lines.append(f"| {name} | error: {r['error'][:150]} |")
                continue
            ph = r["phases"]
            cells = [r.get("steady_docs_per_second"), r["steady_main_us_per_doc"],
                     r.get("steady_model_main_us_per_doc"), r.get("steady_main_less_model_us_per_doc"),
                     r["steady_native_us_per_doc"], r["steady_docs_per_cpu_second"],
                     r["process_docs_per_cpu_second"], r.get("batches"), ph["imports"],
                     ph["startup"], ph["steady"], ph["shutdown"]]
            lines.append(f"| {name} | " + " | ".join("" if c is None else f"{c:g}" for c in cells) + " |")
    lines.append("\ntargets:")
    lines += [f"  {t['suite']}: {t['what']}: {t['value']} (target {t['target']}: {t['verdict']})"
              for t in result["targets"]]
    return "\n".join(lines)


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.feed", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="CI smoke: small corpora, one repetition, in this process")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    p.add_argument("--name", default=None, help="output file stem (default feed, feed-quick)")
    p.add_argument("--suites", default=None, help=f"comma-separated subset of: "
                                                  f"{', '.join(s.label for s in SUITES)}")
    p.add_argument("--contenders", default=None, help="comma-separated subset, every suite")
    p.add_argument("--bertbeam-args", default="", help="more `bertbeam embed` flags, one string")
    p.add_argument("--commit", default=os.environ.get("BERTBEAM_COMMIT"))
    p.add_argument("--timeout", type=float, default=1200, help="seconds per contender run")
    p.add_argument("--in-process", action=argparse.BooleanOptionalAction, default=None,
                   help="every contender in this process (default: only in --quick, where an "
                        "interpreter start costs more than the work; no whole-process figures)")
    for name in SIZES["full"]:
        p.add_argument(f"--{name.replace('_', '-')}", type=int, default=None,
                       help=f"default {SIZES['full'][name]:,} ({SIZES['quick'][name]} in --quick)")
    args = p.parse_args(argv)
    mode = "quick" if args.quick else "full"
    for name, default in SIZES[mode].items():
        if getattr(args, name) is None:
            setattr(args, name, default)
        if getattr(args, name) <= 0:
            p.error(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    known = [s.label for s in SUITES]
    chosen = args.suites.split(",") if args.suites else (list(QUICK_SUITES) if args.quick else known)
    unknown = [s for s in chosen if s not in known]
    if unknown:
        p.error(f"unknown suite {unknown[0]!r}; valid: {', '.join(known)}")
    args.suites = chosen
    args.name = args.name or ("feed-quick" if args.quick else "feed")
    if args.in_process is None:
        args.in_process = args.quick
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from bertbeam.core.models import resolve_model_dir

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    os.environ["TOKENIZERS_PARALLELISM"] = "true"  # the parent's token counts, on every core
    started = time.time()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    load_before = os.getloadavg()
    suites = [s for s in SUITES if s.label in args.suites]
    wanted = set(args.contenders.split(",")) if args.contenders else None
    result_suites = {}
    with tempfile.TemporaryDirectory(prefix="bertbeam-feed-") as tmp_name:
        tmp = Path(tmp_name)
        minilm = resolve_model_dir(MINILM)
        models = {shape: random_bert(tmp / "models", minilm, shape)
                  for shape in {s.model for s in suites}}
        corpora = {}
        if any(s.corpus == "short" for s in suites):
            corpora["short"] = write_corpus(tmp / "corpus-short", args.short_docs)
        if any(s.corpus == "long" for s in suites):
            corpora["long"] = write_texts(tmp / "corpus-long",
                                          long_texts(args.long_docs, tokens=args.long_doc_tokens))
        log(f"set up in {time.time() - started:.0f} s")
        for suite in suites:
            corpus = corpora[suite.corpus]
            windows, _ = token_lengths(corpus, models[suite.model], suite.max_length,
                                       long_docs=suite.long_docs)
            job = Job(corpus_glob=corpus.glob, model_dir=models[suite.model],
                      threads=suite.threads or cores, max_length=suite.max_length,
                      work_dir=str(tmp / f"runs-{suite.label}"), long_docs=suite.long_docs,
                      cpu_streams=suite.cpu_streams, bertbeam_args=tuple(args.bertbeam_args.split()))
            names = QUICK_CONTENDERS.get(suite.label, suite.contenders) if args.quick else suite.contenders
            names = [n for n in names if wanted is None or n in wanted]
            log(f"{suite.label}: {len(corpus.texts)} docs, {len(windows)} windows, "
                f"{sum(windows)} tokens; {', '.join(names)}")
            runs = measure({n: (n, job) for n in names}, args.reps, timeout=args.timeout, log=log,
                           runner=run_in_process if args.in_process else run_contender)
            rows = suite_report(suite, runs, sum(windows))
            result_suites[suite.label] = {
                "model": suite.model, "docs": len(corpus.texts), "windows": len(windows),
                "real_tokens": sum(windows), "max_length": suite.max_length,
                "long_docs": suite.long_docs,
                "options": {"threads": job.threads, "cpu_streams": suite.cpu_streams or "default",
                            "bertbeam_args": args.bertbeam_args},
                "contenders": rows, "ratios": ratios(rows)}
    result = {
        "quick": args.quick,
        "environment": {**environment("cpu", args.commit), "machine": cpu_model(), "cpus_usable": cores,
                        "load_average_before": load_before, "load_average_after": os.getloadavg()},
        "settings": {"short_docs": args.short_docs, "long_docs": args.long_docs,
                     "long_doc_tokens": args.long_doc_tokens, "reps": args.reps,
                     "in_process": args.in_process},
        "definitions": DEFINITIONS,
        "suites": result_suites,
        "targets": targets(result_suites),
        "wall_seconds": round(time.time() - started, 1),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{args.name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(render(result))
    print(f"\nwrote {path} in {result['wall_seconds']} s")
    broken = [f"{label} {name}: {r['error']}" for label, s in result_suites.items()
              for name, r in s["contenders"].items() if name in ("bertbeam", "library") and "error" in r]
    if broken:
        print(f"bertbeam contender failed: {broken[0]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
