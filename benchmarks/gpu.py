"""GPU throughput in under five minutes: ``bertbeam embed --device cuda --dtype bfloat16``.

    python -m benchmarks.gpu            # on a machine with one CUDA GPU
    python -m benchmarks.gpu --smoke    # tiny sizes on the CPU: checks that the script works

Two models: the embedded all-MiniLM-L6-v2 and a BERT-base-sized random model
(``BertConfig()`` defaults: 12 layers, hidden 768, FFN 3072, saved with MiniLM's tokenizer,
which has the same 30522-token vocabulary). For each: bertbeam through Beam on the local
runner, and the hand-written length-sorted loop as the no-framework ceiling, plus a bf16
GEMM for the device's measured peak. Reports tokens/s and model-FLOP utilisation (the
formula is in ``benchmarks/report.py``) and writes ``<out>/gpu.json`` (``gpu-smoke.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import report
from benchmarks.contenders import Job
from benchmarks.corpus import write_corpus
from benchmarks.run import MAX_LENGTH, REPO, measure, token_lengths

# (docs, token budget) per model: sized so that the whole script stays under five minutes.
GPU_SIZES = {"minilm": (20000, 32768), "bert-base": (8000, 32768)}
SMOKE_SIZES = {"minilm": (48, 2048), "bert-base": (24, 2048)}
CONTENDERS = ["gemm", "bertbeam", "sorted-loop"]


def bert_base_dir(root: Path, tokenizer_dir: str, *, smoke: bool) -> str:
    """Writes a random BERT-base checkpoint (a small one for ``smoke``) with MiniLM's tokenizer."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    config = BertConfig() if not smoke else BertConfig(hidden_size=64, num_hidden_layers=2,
                                                        num_attention_heads=2, intermediate_size=256)
    torch.manual_seed(0)
    directory = root / "bert-base-random"
    BertModel(config).save_pretrained(directory)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(directory)
    return str(directory)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU in float32")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = p.parse_args(argv)
    from bertbeam.models import resolve_model_dir

    device, dtype = ("cpu", "float32") if args.smoke else ("cuda", "bfloat16")
    sizes = SMOKE_SIZES if args.smoke else GPU_SIZES
    started = time.time()
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="bertbeam-gpu-") as tmp:
        minilm = resolve_model_dir("embedded:all-MiniLM-L6-v2")
        models = {"minilm": minilm, "bert-base": bert_base_dir(Path(tmp), minilm, smoke=args.smoke)}
        for label, model_dir in models.items():
            n_docs, budget = sizes[label]
            corpus = write_corpus(Path(tmp) / f"corpus-{label}", n_docs)
            lengths, config = token_lengths(corpus, model_dir, MAX_LENGTH)
            job = Job(corpus_glob=corpus.glob, model_dir=model_dir, threads=os.cpu_count() or 1,
                      max_length=MAX_LENGTH, work_dir=str(Path(tmp) / f"runs-{label}"),
                      device=device, dtype=dtype, token_budget=budget)
            print(f"{label}: {n_docs} docs, {sum(lengths)} tokens on {device} ({dtype})",
                  file=sys.stderr, flush=True)
            runs = measure(CONTENDERS, job, 1, timeout=240,
                           log=lambda m: print(m, file=sys.stderr, flush=True))
            gemm = [r for r in runs["gemm"] if "error" not in r]
            peak = gemm[0]["docs"] / gemm[0]["seconds"] if gemm else None
            flops = report.model_flops(lengths, config)
            results[label] = {
                "docs": n_docs, "token_budget": budget,
                "gemm_peak_tflops": round(peak / 1e12, 2) if peak else None,
                "contenders": {n: report.summarize(runs[n], real_tokens=sum(lengths), flops=flops,
                                                   peak_flops=peak) for n in CONTENDERS[1:]},
            }
            results[label]["bertbeam / sorted-loop"] = report.ratio(
                results[label]["contenders"], "bertbeam", "sorted-loop")
    summary = {"device": device, "dtype": dtype, "smoke": args.smoke, "models": results,
               "flops_formula": report.FORMULA, "wall_seconds": round(time.time() - started, 1)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / ("gpu-smoke.json" if args.smoke else "gpu.json")
    path.write_text(json.dumps(summary, indent=2) + "\n")
    for label, r in results.items():
        print(f"\n{label} (GEMM peak {r['gemm_peak_tflops']} TFLOP/s)\n{report.table(r['contenders'])}")
    print(f"\nwrote {path} in {summary['wall_seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
