"""The ``bertbeam`` command: ``embed``, ``label``, ``train``, ``evaluate``, ``index``,
``search``, ``report``, ``demo-corpus``, ``check-gpu``."""

from __future__ import annotations

import difflib
import sys
from importlib import import_module

from bertbeam import __version__
from bertbeam.core import memory

_USAGE = """usage: bertbeam COMMAND [options]

commands:
  embed          embed a Parquet corpus            (bertbeam embed --help)
  label          label a Parquet corpus with a task (bertbeam label --help)
  train          fine-tune a classifier or tagger   (bertbeam train --help)
  evaluate       score label results against gold   (bertbeam evaluate --help)
  distill        a smaller classifier from a big one (bertbeam distill --help)
  index build    build a search index from embeddings (bertbeam index build --help)
  index search   search an index: bertbeam index search --index DIR "query" [-k 10] [--json]
  search         the same as index search
  report         write a finished run's _REPORT.html: bertbeam report OUTPUT [--previous OUTPUT]
  demo-corpus    write a demo corpus: bertbeam demo-corpus DIR [--files N] [--limit N] [--labels]
  check-gpu      fail fast when workers see no GPU (bertbeam check-gpu --help)

options:
  --version      print bertbeam's version
"""

_COMMANDS = {
    "embed": "bertbeam.cli.embed:run",
    "label": "bertbeam.cli.label:run",
    "report": "bertbeam.cli.report:run",
    "check-gpu": "bertbeam.cli.check_gpu:run",
    "train": "bertbeam.cli.train:run_train",
    "evaluate": "bertbeam.cli.train:run_evaluate",
    "distill": "bertbeam.cli.train:run_distill",
    "index": "bertbeam.cli.index:run_index",
    "search": "bertbeam.cli.index:run_search",
    "demo-corpus": "bertbeam.cli.demo:run",
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_USAGE)
        return 0 if argv else 2
    if argv[0] == "--version":
        print(f"bertbeam {__version__}")
        return 0
    command, rest = argv[0], argv[1:]
    memory.prepare_allocator()  # before any command imports torch (memory.py)
    target = _COMMANDS.get(command)
    if target is None:
        close = difflib.get_close_matches(command, list(_COMMANDS), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        print(f"bertbeam: unknown command {command!r}.{hint}\n\n{_USAGE}", file=sys.stderr)
        return 2
    module, name = target.split(":")
    with memory.collector_paused():  # the command's imports: Beam, pyarrow (memory.py)
        run = getattr(import_module(module), name)
    try:
        return run(rest)
    finally:
        memory.freeze_live_objects()  # a faster interpreter exit (memory.py)


if __name__ == "__main__":
    sys.exit(main())
