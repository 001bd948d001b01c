"""MkDocs hook: the CLI reference pages, written at build time from ``bertbeam CMD --help``.

Each page under ``cli/`` is generated (never committed) from the installed command's own help
text, so a flag added, renamed or given a new default shows up in the next build. It reads the
``--help`` output rather than the parser objects, so it does not depend on how the flags are
declared (argparse or Beam ``PipelineOptions``). A command whose ``--help`` fails stops the build.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

log = logging.getLogger("mkdocs.plugins.cli_reference")

# page -> (title, what the command does, the guide that explains it, the commands on the page)
PAGES: dict[str, tuple[str, str, str, list[list[str]]]] = {
    "cli/embed.md": (
        "bertbeam embed",
        "Embed a Parquet corpus: one vector per document, written as typed Parquet.",
        "../embedding.md",
        [["embed"]],
    ),
    "cli/label.md": (
        "bertbeam label",
        "Label a Parquet corpus with a task: classify, ner, qa, fill-mask or zero-shot.",
        "../labeling.md",
        [["label"]],
    ),
    "cli/index-search.md": (
        "bertbeam index / search",
        "Build an approximate-nearest-neighbour index from embeddings, and search it.",
        "../search-and-sinks.md",
        [["index", "build"], ["search"]],
    ),
    "cli/train-evaluate.md": (
        "bertbeam train / distill / evaluate",
        "Fine-tune a classifier or a token tagger, distill a classifier into a smaller one, "
        "and score label results against gold labels.",
        "../training.md",
        [["train"], ["distill"], ["evaluate"]],
    ),
    "cli/report.md": (
        "bertbeam report",
        "Write a finished run's `_REPORT.html` (and its PNG charts).",
        "../nightly.md",
        [["report"]],
    ),
    "cli/check-gpu.md": (
        "bertbeam check-gpu",
        "A short job that fails fast when the workers see no GPU.",
        "../dataflow.md",
        [["check-gpu"]],
    ),
    "cli/demo-corpus.md": (
        "bertbeam demo-corpus",
        "Write a demo Parquet corpus made from Python's own docs (offline).",
        "../getting-started.md",
        [["demo-corpus"]],
    ),
}

_RUN = "import sys; from bertbeam.cli import main; sys.exit(main(sys.argv[1:]))"


def _help(argv: list[str]) -> str:
    """The text ``bertbeam ARGV --help`` prints, at a fixed width so builds are reproducible."""
    env = dict(os.environ, COLUMNS="80", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    done = subprocess.run([sys.executable, "-c", _RUN, *argv, "--help"], capture_output=True,
                          text=True, env=env, timeout=300, check=False)
    if done.returncode != 0 or not done.stdout.strip():
        from mkdocs.exceptions import PluginError  # here: tests import this module without mkdocs

        raise PluginError(f"`bertbeam {' '.join(argv)} --help` failed (exit {done.returncode}): "
                          f"{((done.stderr or done.stdout).strip().splitlines() or [''])[-1]}")
    return done.stdout.rstrip()


_ESCAPE = str.maketrans({c: "\\" + c for c in "\\*_[]|"} | {"<": "&lt;", ">": "&gt;"})


def _md(text: str) -> str:
    """Help text as Markdown: `code` spans kept, everything else taken literally."""
    parts = text.split("`")
    if len(parts) % 2 == 0:  # an unpaired backtick: take it literally too
        return text.translate(_ESCAPE).replace("`", "\\`")
    return "`".join(p if i % 2 else p.translate(_ESCAPE) for i, p in enumerate(parts))


def parse_help(text: str) -> tuple[str, list[str], list[tuple[str, list[tuple[str, str]]]]]:
    """argparse's ``--help`` layout: the usage, prose paragraphs, and option groups as
    ``(title, [(flags, help)])``. Prose after the groups (an epilog) joins the paragraphs."""
    lines = text.splitlines()
    end = next((i for i, line in enumerate(lines) if not line.strip()), len(lines))
    usage, prose, groups = "\n".join(lines[:end]), [], []
    paragraph: list[str] = []
    for line in [*lines[end:], ""]:
        if not line.strip():
            if paragraph:
                prose.append(" ".join(paragraph))
                paragraph = []
        elif re.match(r"^\S.*:$", line):
            groups.append((line[:-1], []))
        elif line.startswith("  ") and groups:
            body = line.strip()
            entries = groups[-1][1]
            if re.match(r"^ {2}\S", line):  # a new option or positional argument
                flags, help_ = re.match(r"^(\S.*?)(?:\s{2,}(.*))?$", body).groups()
                entries.append((flags, help_ or ""))
            elif entries:  # a continuation of the last option's help
                flags, help_ = entries[-1]
                entries[-1] = (flags, f"{help_} {body}".strip())
        else:
            paragraph.append(line.strip())
    return usage, prose, groups


def _page(title: str, what: str, guide: str, helps: list[tuple[list[str], str]]) -> str:
    out = [f"# {title}", "", what, "",
           f"This page is generated from the command's `--help` when the site is built. "
           f"For how to use it, see [the guide]({guide}).", ""]
    for argv, text in helps:
        command = f"bertbeam {' '.join(argv)}"
        if len(helps) > 1:
            out += [f"## {command}", ""]
        usage, prose, groups = parse_help(text)
        out += ["```text", usage, "```", ""]
        out += [_md(p) + "\n" for p in prose]
        for group, entries in groups:
            entries = [(f, h) for f, h in entries if f != "-h, --help"]
            if not entries:
                continue
            out += [f"{'###' if len(helps) > 1 else '##'} {group}", "",
                    "| option | what it does |", "|---|---|"]
            out += [f"| `{flags}` | {_md(help_)} |" for flags, help_ in entries]
            out.append("")
        out += [f'??? note "The full `{command} --help`"', "", "    ```text",
                *[f"    {line}" for line in text.splitlines()], "    ```", ""]
    return "\n".join(out)


def on_files(files, config):
    from mkdocs.structure.files import File  # here: tests import this module without mkdocs

    argvs = [argv for *_, cmds in PAGES.values() for argv in cmds]
    with ThreadPoolExecutor(max_workers=4) as pool:
        texts = dict(zip(map(tuple, argvs), pool.map(_help, argvs), strict=True))
    for path, (title, what, guide, cmds) in PAGES.items():
        content = _page(title, what, guide, [(argv, texts[tuple(argv)]) for argv in cmds])
        existing = files.get_file_from_path(path)
        if existing is not None:
            files.remove(existing)
        files.append(File.generated(config, path, content=content))
    log.debug("wrote %d CLI reference pages", len(PAGES))
    return files
