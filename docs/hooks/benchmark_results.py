"""MkDocs hook: the benchmark figures as pages, from the files the benchmarks write.

- ``benchmarks/RESULTS.md`` (the measurement history) becomes the page ``benchmark-history.md``
  (its ``../docs/X.md`` links, right on GitHub, become ``X.md``);
- every chart under ``benchmarks/results/`` is copied to ``assets/benchmarks/``;
- ``<!-- benchmark-table: NAME -->`` in a page is replaced by the table of
  ``benchmarks/results/NAME.json``, so the performance page shows the committed figures, never a
  copy of them that can go stale.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

log = logging.getLogger("mkdocs.plugins.benchmark_results")

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"
_MARKER = re.compile(r"<!-- benchmark-table: ([\w-]+) -->")


def on_files(files, config):
    from mkdocs.structure.files import File  # here: tests import this module without mkdocs

    history = (ROOT / "benchmarks" / "RESULTS.md").read_text(encoding="utf-8")
    history = re.sub(r"\((?:benchmarks/)?results/([\w.-]+\.png)\)", r"(assets/benchmarks/\1)", history)
    history = re.sub(r"\(\.\./docs/([\w/.#-]+)\)", r"(\1)", history)  # links that work on GitHub too
    files.append(File.generated(config, "benchmark-history.md", content=history))
    for png in sorted(RESULTS.glob("*.png")):
        files.append(File.generated(config, f"assets/benchmarks/{png.name}",
                                    content=png.read_bytes()))
    return files


def _fmt(value, digits: int = 1, suffix: str = "") -> str:
    if value is None:
        return "—"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value:,.{digits}f}{suffix}"
    return str(value)


def table(name: str) -> str:
    """The Markdown table of ``benchmarks/results/NAME.json`` (raises if the file is missing)."""
    data = json.loads((RESULTS / f"{name}.json").read_text(encoding="utf-8"))
    render = _gpu_table if "suites" in data else _cpu_table
    return render(data)


# How the CPU benchmark's contenders (benchmarks/run.py) read in a table, in the table's order.
CPU_CONTENDERS = {
    "bertbeam": "**bertbeam**",
    "bertbeam-int8": "bertbeam int8",
    "bertbeam-onnx": "bertbeam ONNX",
    "bertbeam-onnx-int8": "bertbeam ONNX int8",
    "bertbeam-bf16": "bertbeam bf16",
    "sorted-loop": "sorted loop",
    "st-encode": "sentence-transformers",
    "mltransform": "Beam MLTransform",
    "arrival-loop": "arrival-order loop",
}
_FLOAT32 = {"bertbeam", "bertbeam-onnx", "sorted-loop", "st-encode", "mltransform", "arrival-loop"}


def _cpu_table(data: dict) -> str:
    contenders = data["contenders"]
    rows = ["| contender | docs/s | tokens/s | padding eff. | MFU | peak RSS MiB | whole-process docs/s |",
            "|---|---:|---:|---:|---:|---:|---:|"]
    for name, label in CPU_CONTENDERS.items():
        c = contenders.get(name)
        if not c or c.get("docs_per_second") is None:
            continue
        mfu = _fmt(100 * c["mfu"], 0, "%") if c.get("mfu") is not None and name in _FLOAT32 else "—"
        rows.append(f"| {label} | {_fmt(c['docs_per_second'])} | {_fmt(c.get('tokens_per_second'), 0)}"
                    f" | {_fmt(c.get('padding_efficiency'), 3)} | {mfu} | {_fmt(c.get('peak_rss_mb'), 0)}"
                    f" | {_fmt(c.get('process_docs_per_second'))} |")
    corpus, machine = data.get("corpus", {}), data.get("machine", {})
    notes = [f"{_fmt(corpus.get('docs'), 0)} documents ({_fmt(corpus.get('mean_tokens'))} tokens on "
             f"average, truncated at {corpus.get('max_length')}), {data.get('model')}, median of "
             f"{data.get('repetitions')} interleaved repetitions, {machine.get('threads')} threads "
             f"on {machine.get('cpus')} CPUs"]
    if machine.get("gemm_peak_gflops"):
        notes.append(f"GEMM peak {_fmt(machine['gemm_peak_gflops'])} GFLOP/s (MFU is model FLOP/s "
                     f"over it, float32 contenders only)")
    if data.get("commit"):
        notes.append(f"commit `{data['commit']}`")
    out = ["\n".join(rows), "", "; ".join(notes) + "."]
    ratios, fidelity = data.get("ratios") or {}, data.get("fidelity") or data.get("int8_fidelity") or {}
    if ratios:
        out += ["", "| ratio (docs/s) | measured | cosine to float32 (mean / min) |", "|---|---:|---:|"]
        for key, r in ratios.items():
            cos = fidelity.get(key.split(" / ")[0])
            cos = f"{cos['mean_cosine']:.5f} / {cos['min_cosine']:.5f}" if cos else "—"
            names = [CPU_CONTENDERS.get(n, n).strip("*") for n in key.split(" / ")]
            out.append(f"| {' / '.join(names)} | {r['ratio']:.2f}× | {cos} |")
    return "\n".join(out)


def _gpu_table(data: dict) -> str:
    rows = ["| suite | contender | steady docs/s | steady tokens/s | MFU | start-up s "
            "| docs/s, whole process | GPU peak MiB |",
            "|---|---|---:|---:|---:|---:|---:|---:|"]
    for suite, s in data["suites"].items():
        for name, r in s.get("contenders", {}).items():
            if "error" in r:
                rows.append(f"| {suite} | {name} | failed | | | | | |")
                continue
            mfu = _fmt(100 * r["steady_mfu"], 1, "%") if r.get("steady_mfu") is not None else "—"
            rows.append(f"| {suite} | {name} | {_fmt(r.get('steady_docs_per_second'))} | "
                        f"{_fmt(r.get('steady_tokens_per_second'), 0)} | {mfu} | "
                        f"{_fmt(r.get('startup_seconds'))} | {_fmt(r.get('process_docs_per_second'))} | "
                        f"{_fmt(r.get('gpu_peak_mb'), 0)} |")
    env = data.get("environment", {})
    notes = [f"{env['device']}" if env.get("device") else "GPU"]
    if data.get("gemm_peak_tflops"):
        notes.append(f"bf16 GEMM peak {_fmt(data['gemm_peak_tflops'])} TFLOP/s")
    if env.get("commit"):
        notes.append(f"commit `{str(env['commit'])[:10]}`")
    return "\n".join(rows) + "\n\n" + "; ".join(notes) + "."


def on_page_markdown(markdown, page, config, files):
    def replace(match: re.Match) -> str:
        try:
            return table(match.group(1))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("%s: benchmark table %s: %s", page.file.src_uri, match.group(1), exc)
            return ""

    return _MARKER.sub(replace, markdown)
