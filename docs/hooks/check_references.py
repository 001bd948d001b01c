"""MkDocs hook: every module path the docs and the README name must exist.

A page that says ``bertbeam/run/job.py`` or ``bertbeam.beam.reading`` after the file moved is a
stale reference; under ``mkdocs build --strict`` the warning logged here fails the build. Paths
under ``benchmarks/``, ``docker/``, ``docs/``, ``pipelines/`` and ``tests/`` are checked the same way.
"""

from __future__ import annotations

import importlib.util
import logging
import re
from pathlib import Path

log = logging.getLogger("mkdocs.plugins.check_references")

ROOT = Path(__file__).resolve().parents[2]
# A repository path with a file suffix: bertbeam/run/job.py, benchmarks/results/full.json, ...
_PATH = re.compile(r"(?<![\w/.-])((?:bertbeam|benchmarks|docker|pipelines|tests)/[\w./-]*\w"
                   r"|docs/[\w./-]*\.\w+)")  # docs/ needs a suffix: "docs/s" is a rate
# A dotted module name: bertbeam.core.engine (an attribute after the module is allowed).
_MODULE = re.compile(r"(?<![\w/.-])(bertbeam(?:\.[A-Za-z_]\w*)+)")


def _module_exists(dotted: str) -> bool:
    """True if ``dotted`` is a module of the repository, or one followed by its attributes."""
    parts = dotted.split(".")
    for end in range(len(parts), 0, -1):
        rel = Path(*parts[:end])
        if (ROOT / rel).with_suffix(".py").is_file() or (ROOT / rel / "__init__.py").is_file():
            break
    else:
        return False
    if end == len(parts):
        return True
    # An attribute after the module: import it (the build has bertbeam installed). A module that
    # fails to import is not a stale reference: that error propagates, with its own message.
    obj = importlib.import_module(".".join(parts[:end]))
    for name in parts[end:]:
        if not hasattr(obj, name):
            return False
        obj = getattr(obj, name)
    return True


def stale_references(text: str) -> list[str]:
    """The repository paths and ``bertbeam.*`` modules named in ``text`` that do not exist."""
    bad = []
    for path in sorted(set(_PATH.findall(text))):
        clean = path.rstrip(".")
        if any(ch in clean for ch in "*?[") or clean.startswith(("tests/tmp", "bertbeam/run/schemas/*")):
            continue
        if not (ROOT / clean).exists():
            bad.append(clean)
    for dotted in sorted(set(_MODULE.findall(text))):
        if not _module_exists(dotted):
            bad.append(dotted)
    return bad


def on_pre_build(config):
    readme = ROOT / "README.md"
    for ref in stale_references(readme.read_text(encoding="utf-8")):
        log.warning("README.md names %s, which does not exist", ref)


def on_page_markdown(markdown, page, config, files):
    for ref in stale_references(markdown):
        log.warning("%s names %s, which does not exist", page.file.src_uri, ref)
    return markdown
