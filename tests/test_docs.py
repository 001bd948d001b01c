"""The README and the docs pages: short enough to read, and naming only paths that exist.

The full check is ``mkdocs build --strict`` (CI), whose hooks generate the CLI pages and fail on
stale references; these tests hold the cheap part of it in the default run.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = sorted((ROOT / "docs").glob("*.md"))


def _hook(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "docs" / "hooks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def checker():
    return _hook("check_references")


def test_the_checker_finds_stale_paths_and_modules(checker):
    """A moved module, a missing file and a missing attribute are reported; real ones are not."""
    text = ("`bertbeam/run/job.py`, `bertbeam.core.engine`, `bertbeam.cli.main:main`, docs/s, "
            "`bertbeam/jobs/common.py`, `bertbeam.jobs.common`, `tests/test_cli.py`, "
            "`bertbeam.core.engine.NoSuchThing`, `docs/nowhere.md`")
    assert checker.stale_references(text) == [
        "bertbeam/jobs/common.py", "docs/nowhere.md", "tests/test_cli.py",
        "bertbeam.core.engine.NoSuchThing", "bertbeam.jobs.common"]


@pytest.mark.parametrize("page", [README, *PAGES], ids=lambda p: p.name)
def test_pages_name_only_paths_that_exist(checker, page):
    assert checker.stale_references(page.read_text(encoding="utf-8")) == []


def test_readme_is_a_five_minute_read_with_the_ci_test_command():
    """README stays short, and its Quick start's test command is the one CI runs."""
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 300
    quick = text.split("## Quick start", 1)[1]
    block = re.search(r"```bash\n(.*?)```", quick, flags=re.S).group(1).strip().splitlines()
    assert len(block) == 2 and block[0].startswith('pip install "torch==2.13.0" -e . && ')
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert block[1] in ci


def test_every_nav_page_exists_or_is_generated():
    """Each page in mkdocs.yml's nav is a file under docs/ or one a build hook writes."""
    nav = re.findall(r":\s+([\w/.-]+\.md)\s*$", (ROOT / "mkdocs.yml").read_text(), flags=re.M)
    generated = set(_hook("cli_reference").PAGES) | {"benchmark-history.md"}
    missing = [p for p in nav if not (ROOT / "docs" / p).is_file() and p not in generated]
    assert nav and not missing, missing


def test_benchmark_tables_render_both_result_formats():
    """The performance page's tables: the CPU benchmark's contenders in a fixed order with
    their ratios and cosines, and the GPU benchmark's suites, a failed contender marked."""
    bench = _hook("benchmark_results")
    cpu = {"contenders": {
        "sorted-loop": {"docs_per_second": 163.06, "tokens_per_second": 8283.0,
                        "padding_efficiency": 0.9139, "mfu": 0.4736, "peak_rss_mb": 1127.6},
        "bertbeam": {"docs_per_second": 169.15, "tokens_per_second": 8592.7,
                     "padding_efficiency": 0.9834, "mfu": 0.4913, "peak_rss_mb": 809.4},
        "bertbeam-int8": {"docs_per_second": 220.5, "mfu": 0.64, "peak_rss_mb": 819.0},
        "gemm": {"docs_per_second": 3.6e11}},
        "ratios": {"bertbeam-int8 / bertbeam": {"ratio": 1.304, "target": 1.8}},
        "fidelity": {"bertbeam-int8": {"mean_cosine": 0.993016, "min_cosine": 0.981724}},
        "corpus": {"docs": 2400, "mean_tokens": 50.8, "max_length": 256}, "repetitions": 2,
        "machine": {"cpus": 2, "threads": 2}, "model": "m"}
    rows = [line for line in bench._cpu_table(cpu).splitlines() if line.startswith("| ")]
    assert rows[1].startswith("| **bertbeam** | 169.2 | 8,593 | 0.983 | 49% | 809 |")
    assert rows[2].startswith("| bertbeam int8 | 220.5 | — | — | — | 819 |")  # no MFU for int8
    assert rows[3].startswith("| sorted loop | 163.1 |")
    assert not any("gemm" in r.lower() for r in rows)
    assert "| bertbeam int8 / bertbeam | 1.30× | 0.99302 / 0.98172 |" in rows
    gpu = {"suites": {"minilm": {"contenders": {
        "bertbeam": {"steady_docs_per_second": 5000.0, "steady_tokens_per_second": 250000.0,
                     "steady_mfu": 0.123, "startup_seconds": 4.2, "process_docs_per_second": 3000.0,
                     "gpu_peak_mb": 2048.0},
        "st-encode": {"error": "CUDA out of memory"}}}},
        "environment": {"device": "NVIDIA H200", "commit": "0123456789abcdef"},
        "gemm_peak_tflops": 700.0}
    table = bench._gpu_table(gpu)
    assert "| minilm | bertbeam | 5,000.0 | 250,000 | 12.3% | 4.2 | 3,000.0 | 2,048 |" in table
    assert "| minilm | st-encode | failed |" in table
    assert table.endswith("NVIDIA H200; bf16 GEMM peak 700.0 TFLOP/s; commit `0123456789`.")


def test_cli_help_parses_into_groups_of_options():
    """The CLI reference reads argparse's layout: usage, prose, groups; continuation lines join
    their option's help; Markdown in help text is taken literally outside `code`."""
    ref = _hook("cli_reference")
    text = """usage: bertbeam x [-h] --input INPUT
                  [--long-flag-name LONG_FLAG_NAME]

Do x.

positional arguments:
  directory

job options (JobOptions):
  --input INPUT         a glob: *.parquet
  --long-flag-name LONG_FLAG_NAME
                        first line
                        second line (default: 2)

Other flags go to `Beam`."""
    usage, prose, groups = ref.parse_help(text)
    assert usage.splitlines()[1].strip() == "[--long-flag-name LONG_FLAG_NAME]"
    assert prose == ["Do x.", "Other flags go to `Beam`."]
    assert groups == [("positional arguments", [("directory", "")]),
                      ("job options (JobOptions)", [
                          ("--input INPUT", "a glob: *.parquet"),
                          ("--long-flag-name LONG_FLAG_NAME", "first line second line (default: 2)")])]
    page = ref._page("bertbeam x", "X.", "../x.md", [(["x"], text)])
    assert "| `--input INPUT` | a glob: \\*.parquet |" in page
    assert "Other flags go to `Beam`." in page
