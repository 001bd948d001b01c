"""From raw contender outcomes to the report: rates, model FLOP utilisation, ratios, table, chart.

Model FLOPs count the useful work only, on real tokens at each document's real length
(truncated to the window), so padding shows up as lost utilisation:

    FLOPs(doc of n tokens) = 2 · n · P  +  4 · L · n² · d
    P = L · (4·d² + 2·d·f)      weights of the Q, K, V, output and two FFN matrices per layer

with L layers, hidden size d and FFN size f (embeddings, biases, layer norms and softmax
left out). Utilisation = model FLOPs / seconds / the GEMM peak measured in the same run.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

FORMULA = "FLOPs(doc of n tokens) = 2*n*P + 4*L*n^2*d, P = L*(4*d^2 + 2*d*f)"


def encoder_shape(config: Any) -> tuple[int, int, int]:
    """(layers, hidden, ffn) of a BERT-family config (DistilBERT names them differently)."""
    layers = getattr(config, "num_hidden_layers", None) or config.n_layers
    hidden = getattr(config, "hidden_size", None) or config.dim
    ffn = getattr(config, "intermediate_size", None) or config.hidden_dim
    return int(layers), int(hidden), int(ffn)


def model_flops(lengths: Sequence[int], config: Any) -> float:
    """Useful forward FLOPs of the encoder over documents of these token lengths."""
    return float(sum(window_flops(lengths, config)))


def window_flops(lengths: Sequence[int], config: Any) -> list[int]:
    """Useful forward FLOPs of the encoder on each window (or document) of these lengths."""
    layers, d, f = encoder_shape(config)
    params = layers * (4 * d * d + 2 * d * f)
    return [2 * n * params + 4 * layers * n * n * d for n in lengths]


def summarize(runs: list[dict], *, real_tokens: int, flops: float, peak_flops: float | None) -> dict:
    """One row per contender from its repetitions: medians of times, max of peak memory.

    ``steady_*`` rates divide by the contender's steady window, where it reports one
    (start-up apart; ``benchmarks.contenders`` says where each begins and ends);
    ``process_docs_per_second`` by the whole process, interpreter start and imports included;
    ``shutdown_seconds`` run from the last model batch to the process's exit (``run.with_shutdown``)."""
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return {"error": runs[0]["error"] if runs else "not run"}
    seconds = statistics.median(r["seconds"] for r in ok)
    docs = ok[0]["docs"]
    padded = ok[0].get("padded_tokens")
    counted = ok[0].get("real_tokens")
    row = {
        "docs": docs,
        "seconds": round(seconds, 3),
        "seconds_all": [round(r["seconds"], 3) for r in ok],
        "docs_per_second": round(docs / seconds, 2),
        "tokens_per_second": round(real_tokens / seconds, 1),
        "padding_efficiency": round(counted / padded, 4) if padded else None,
        "model_flops_per_second": round(flops / seconds / 1e9, 2) * 1e9,
        "mfu": round(flops / seconds / peak_flops, 4) if peak_flops else None,
        "peak_rss_mb": max(r["peak_rss_mb"] for r in ok),
        **_steady(ok, docs=docs, real_tokens=real_tokens, flops=flops, peak_flops=peak_flops),
    }
    if len(ok) < len(runs):
        row["failed_repetitions"] = [r["error"] for r in runs if "error" in r]
    return row


def _steady(ok: list[dict], *, docs: int, real_tokens: int, flops: float,
            peak_flops: float | None) -> dict:
    def median(key: str) -> float | None:
        values = [r[key] for r in ok if r.get(key) is not None]
        return statistics.median(values) if values else None

    steady, startup, process = median("steady_seconds"), median("startup_seconds"), median("process_seconds")
    tokenize = median("tokenize_seconds")
    gpu = [r["gpu_peak_mb"] for r in ok if r.get("gpu_peak_mb") is not None]
    return {
        "startup_seconds": None if startup is None else round(startup, 3),
        "steady_seconds": None if steady is None else round(steady, 3),
        "steady_docs_per_second": round(docs / steady, 2) if steady else None,
        "steady_tokens_per_second": round(real_tokens / steady, 1) if steady else None,
        "steady_mfu": round(flops / steady / peak_flops, 4) if steady and peak_flops else None,
        "process_docs_per_second": round(docs / process, 2) if process else None,
        **{key: None if median(key) is None else round(median(key), 3)
           for key in ("shutdown_seconds", "exit_seconds")},
        "tokenize_seconds": None if tokenize is None else round(tokenize, 3),
        "untokenized_docs_per_second": (round(docs / (steady - tokenize), 2)
                                        if steady and tokenize is not None and steady > tokenize else None),
        "gpu_peak_mb": max(gpu) if gpu else None,
        "cores": ok[0].get("cores"),  # the CPU cores the contender could use
        "batches": ok[0].get("batches"),
    }


def cpu_figures(runs: list[dict], docs: int) -> dict:
    """Per-document CPU figures and phases of a contender's repetitions (medians): CPU of
    the main thread (and of it, the model's forward where the contender runs it there, and
    the rest) and of the rest of the process in the steady window, documents per
    CPU-second there, over the timed job and over the whole process (``process_cpu``, the
    parent's count), the phases of its process, and on a GPU the device's busy share of the
    steady window (``gpu_seconds``)."""
    ok = [r for r in runs if "error" not in r]

    def median(f) -> float | None:
        values = [v for v in (f(r) for r in ok) if v is not None]
        return statistics.median(values) if values else None

    def get(key: str):
        return lambda r: r.get(key)

    main = median(get("steady_main_cpu"))
    model = median(get("steady_model_main_cpu"))
    own = median(lambda r: r["steady_main_cpu"] - r["steady_model_main_cpu"]
                 if r.get("steady_model_main_cpu") is not None else None)
    total = median(get("steady_cpu"))
    native = median(lambda r: r["steady_cpu"] - r["steady_main_cpu"]
                    if r.get("steady_cpu") is not None else None)
    process_cpu = median(get("process_cpu"))
    imports = median(lambda r: r["process_seconds"] - r["seconds"] - (r.get("exit_seconds") or 0)
                     if r.get("process_seconds") else None)

    def us(value: float | None) -> float | None:
        return None if value is None else round(value / docs * 1e6, 2)

    def rate(value: float | None) -> float | None:
        return round(docs / value, 1) if value else None

    return {
        "steady_main_us_per_doc": us(main),
        "steady_model_main_us_per_doc": us(model),
        "steady_main_less_model_us_per_doc": us(own),
        "steady_native_us_per_doc": us(native),
        "steady_cpu_us_per_doc": us(total),
        "steady_docs_per_cpu_second": rate(total),
        "job_docs_per_cpu_second": rate(median(get("job_cpu"))),
        "process_docs_per_cpu_second": rate(process_cpu),
        "process_cpu_seconds": None if process_cpu is None else round(process_cpu, 2),
        "phases": {name: None if v is None else round(v, 3) for name, v in (
            ("imports", imports), ("startup", median(get("startup_seconds"))),
            ("first_batch", median(get("first_batch_seconds"))),
            ("steady", median(get("steady_seconds"))), ("shutdown", median(get("shutdown_seconds"))))},
        "threads_cpu": ok[0].get("threads_cpu") if ok else None,
        "gpu_busy_fraction": (round(gpu / steady, 3) if (gpu := median(get("gpu_seconds")))
                              and (steady := median(get("steady_seconds"))) else None),
    }


def ratio(rows: dict, a: str, b: str, *, key: str = "docs_per_second") -> float | None:
    """``key`` (docs/s by default) of ``a`` over that of ``b``, when both have it."""
    va, vb = rows.get(a, {}).get(key), rows.get(b, {}).get(key)
    if va is None or vb is None:
        return None
    return round(va / vb, 3)


def table(rows: dict) -> str:
    """A Markdown table of the contenders, GEMM excluded."""
    head = ("| contender | docs/s | tokens/s | padding eff. | model GFLOP/s | MFU | peak RSS MiB |\n"
            "|---|---:|---:|---:|---:|---:|---:|")
    lines = [head]
    for name, row in rows.items():
        if name == "gemm":
            continue
        if "error" in row:
            lines.append(f"| {name} | error: {row['error'][:120]} | | | | | |")
            continue
        eff = "n/a" if row["padding_efficiency"] is None else f"{row['padding_efficiency']:.3f}"
        mfu = "n/a" if row["mfu"] is None else f"{row['mfu']:.1%}"
        lines.append(
            f"| {name} | {row['docs_per_second']:.1f} | {row['tokens_per_second']:.0f} | {eff} | "
            f"{row['model_flops_per_second'] / 1e9:.1f} | {mfu} | {row['peak_rss_mb']:.0f} |")
    return "\n".join(lines)


def phases(rows: dict) -> str:
    """A Markdown table of where each contender's process time went: start-up (the timed job
    to its first model batch), steady state, and shutdown (last batch to process exit; the
    interpreter's teardown after the job returned apart), where the contender tells them."""
    lines = ["| contender | start-up s | steady s | shutdown s | of it, exit s | process s |",
             "|---|---:|---:|---:|---:|---:|"]

    def cell(value: float | None) -> str:
        return "" if value is None else f"{value:.2f}"

    for name, row in rows.items():
        if name == "gemm" or "error" in row:
            continue
        process = row["docs"] / row["process_docs_per_second"] if row.get("process_docs_per_second") else None
        lines.append(f"| {name} | {cell(row.get('startup_seconds'))} | {cell(row.get('steady_seconds'))} | "
                     f"{cell(row.get('shutdown_seconds'))} | {cell(row.get('exit_seconds'))} | "
                     f"{cell(process)} |")
    return "\n".join(lines)


def chart(rows: dict, path: str, *, title: str) -> None:
    """A PNG with two bar panels: docs/s (with MFU) and peak RSS, one bar per contender."""
    plt = pyplot()
    names = [n for n, r in rows.items() if n != "gemm" and "error" not in r]
    fig, (speed, memory) = plt.subplots(1, 2, figsize=(11, 0.6 * len(names) + 1.8))
    rate_panel(speed, rows, "docs_per_second", "mfu")
    speed.set_xlabel("documents / second (higher is better)")
    memory.barh(names, [rows[n]["peak_rss_mb"] for n in names], color=_colors(names))
    memory.set_xlabel("peak RSS, MiB (own process)")
    memory.invert_yaxis()
    memory.set_yticklabels([])
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def rate_panel(ax: Any, rows: dict, rate: str, mfu: str) -> None:
    """Horizontal bars of ``rows[name][rate]``, bertbeam's blue, each labelled with its value
    and ``rows[name][mfu]`` where known; contenders without the rate are left out."""
    names = [n for n, r in rows.items() if n != "gemm" and r.get(rate) is not None]
    rates = [rows[n][rate] for n in names]
    ax.barh(names, rates, color=_colors(names))
    for y, n in enumerate(names):
        share = rows[n].get(mfu)
        note = f" {rows[n][rate]:,.1f}" + (f"  (MFU {share:.0%})" if share is not None else "")
        ax.text(rows[n][rate], y, note, va="center", fontsize=8)
    ax.set_xlim(0, max(rates, default=1) * 1.45)
    ax.invert_yaxis()


def _colors(names: list[str]) -> list[str]:
    return ["tab:blue" if n.startswith("bertbeam") else "tab:gray" for n in names]


def pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
