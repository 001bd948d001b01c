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
