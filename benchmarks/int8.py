"""The int8 trade-off: fidelity to float32 and speed of dynamic-quantization variants.

    python -m benchmarks.int8 [--docs 256] [--reps 3]

MiniLM embeddings (mean pooled, normalized) of length-sorted demo texts in batches of 32;
speed is the median over interleaved repetitions, relative to float32 in the same run.
Writes ``benchmarks/results/int8.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

from benchmarks.corpus import benchmark_texts
from benchmarks.run import REPO


def _variants(model):
    import torch
    from torch.ao.quantization import (
        default_dynamic_qconfig,
        per_channel_dynamic_qconfig,
        quantize_dynamic,
    )

    from bertbeam.core.quantization import _full_range_linear, quantize_int8, quantized_layer_names

    names = quantized_layer_names(model)
    ffn_out = [n for n in names if n.endswith("output.dense") and "attention" not in n]

    def convert(qconfig, skip=(), full_range=False):
        spec = {n: qconfig for n in names if n not in skip}
        mapping = {torch.nn.Linear: _full_range_linear()} if full_range else None
        return quantize_dynamic(copy.deepcopy(model), spec, dtype=torch.qint8, mapping=mapping)

    return {
        "float32": lambda: model,
        "per-tensor, 7-bit activations (plain quantize_dynamic)": lambda: convert(default_dynamic_qconfig),
        "per-channel, 7-bit activations": lambda: convert(per_channel_dynamic_qconfig),
        "per-channel, 8-bit activations (bertbeam --quantize int8)": lambda: quantize_int8(copy.deepcopy(model)),
        "per-channel, 8-bit, FFN output kept float32": lambda: convert(
            per_channel_dynamic_qconfig, ffn_out, full_range=True),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.int8", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--docs", type=int, default=256)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = p.parse_args(argv)
    import torch
    from transformers import AutoModel, AutoTokenizer

    from bertbeam.core.models import resolve_model_dir
    from bertbeam.core.quantization import select_engine

    if args.threads:
        torch.set_num_threads(args.threads)
    select_engine()
    model_dir = resolve_model_dir("embedded:all-MiniLM-L6-v2")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir).eval()
    texts = sorted(benchmark_texts(args.docs), key=len)
    batches = [tokenizer(texts[i:i + 32], padding=True, truncation=True, max_length=256,
                         return_tensors="pt") for i in range(0, len(texts), 32)]

    def embed(m):
        out = []
        with torch.inference_mode():
            for enc in batches:
                hidden = m(**enc).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).float()
                out.append(torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1))
        return torch.cat(out)

    models = {name: build() for name, build in _variants(model).items()}
    reference = embed(model)
    rows = {}
    for name, m in models.items():
        cosine = (embed(m) * reference).sum(-1)
        rows[name] = {"mean_cosine": round(cosine.mean().item(), 4),
                      "min_cosine": round(cosine.min().item(), 4), "seconds": []}
    for _ in range(args.reps):
        for name, m in models.items():
            start = time.perf_counter()
            embed(m)
            rows[name]["seconds"].append(round(time.perf_counter() - start, 3))
    base = statistics.median(rows["float32"]["seconds"])
    print("| variant | mean cosine | min cosine | speed vs float32 |\n|---|---:|---:|---:|")
    for name, row in rows.items():
        row["speedup"] = round(base / statistics.median(row["seconds"]), 2)
        print(f"| {name} | {row['mean_cosine']:.4f} | {row['min_cosine']:.4f} | {row['speedup']:.2f}x |")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "int8.json").write_text(json.dumps({"docs": args.docs, "variants": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
