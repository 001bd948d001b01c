"""MkDocs hook: the benchmark figures as pages, from the files the benchmarks write.

- ``benchmarks/RESULTS.md`` (the measurement history) becomes the page ``benchmark-history.md``;
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

from mkdocs.structure.files import File

log = logging.getLogger("mkdocs.plugins.benchmark_results")

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"
_MARKER = re.compile(r"<!-- benchmark-table: ([\w-]+) -->")


def on_files(files, config):
    history = (ROOT / "benchmarks" / "RESULTS.md").read_text(encoding="utf-8")
    history = re.sub(r"\(benchmarks/results/([\w.-]+\.png)\)", r"(assets/benchmarks/\1)", history)
    files.append(File.generated(config, "benchmark-history.md", content=history))
    for png in sorted(RESULTS.glob("*.png")):
        files.append(File.generated(config, f"assets/benchmarks/{png.name}",
                                    content=png.read_bytes()))
    return files


def _fmt(value, digits: int = 1) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def table(name: str) -> str:
    """The Markdown table of ``benchmarks/results/NAME.json`` (raises if the file is missing)."""
    data = json.loads((RESULTS / f"{name}.json").read_text(encoding="utf-8"))
    render = _RENDERERS.get(name.split("-")[0])
    if render is None:
        raise ValueError(f"no table for benchmarks/results/{name}.json")
    return render(data)


def _cpu_table(data: dict) -> str:
    rows = ["| contender | docs/s | tokens/s | padding eff. | peak RSS MiB |",
            "|---|---:|---:|---:|---:|"]
    for c in data["contenders"]:
        if not isinstance(c, dict) or "docs_per_second" not in c:
            continue
        rows.append(f"| {c.get('label', c.get('name'))} | {_fmt(c.get('docs_per_second'))} | "
                    f"{_fmt(c.get('tokens_per_second'), 0)} | "
                    f"{_fmt(c.get('padding_efficiency'), 3)} | {_fmt(c.get('peak_rss_mib'), 0)} |")
    return "\n".join(rows)


_RENDERERS = {"full": _cpu_table, "quick": _cpu_table}


def on_page_markdown(markdown, page, config, files):
    def replace(match: re.Match) -> str:
        try:
            return table(match.group(1))
        except (OSError, ValueError, KeyError) as exc:
            log.warning("%s: benchmark table %s: %s", page.file.src_uri, match.group(1), exc)
            return ""

    return _MARKER.sub(replace, markdown)
