"""The ``bertbeam`` command: ``embed``, ``label``, ``index``, ``search``, ``demo-corpus``, ``check-gpu``."""

from __future__ import annotations

import sys

_USAGE = """usage: bertbeam COMMAND [options]

commands:
  embed          embed a Parquet corpus            (bertbeam embed --help)
  label          label a Parquet corpus with a task (bertbeam label --help)
  index build    build a search index from embeddings (bertbeam index build --help)
  search         search an index: bertbeam search --index DIR "query" [-k 10] [--json]
  demo-corpus    write a demo corpus: bertbeam demo-corpus DIR [--files N] [--limit N]
  check-gpu      fail fast when workers see no GPU (bertbeam check-gpu --help)
"""


def _demo_corpus(argv: list[str]) -> int:
    import argparse

    from bertbeam.demo import write_demo_corpus

    p = argparse.ArgumentParser(prog="bertbeam demo-corpus",
                                description="Write a Parquet corpus made from Python's own docs.")
    p.add_argument("directory")
    p.add_argument("--files", type=int, default=2)
    p.add_argument("--limit", type=int, default=None, help="at most this many documents")
    args = p.parse_args(argv)
    paths = write_demo_corpus(args.directory, files=args.files, limit=args.limit)
    print(f"wrote {len(paths)} files to {args.directory}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "embed":
        from pipelines.embed import run

        return run(rest)
    if command == "label":
        from pipelines.label import run

        return run(rest)
    if command == "check-gpu":
        from pipelines.check_gpu import run

        return run(rest)
    if command in ("index", "search"):
        from bertbeam.index_cli import run_index, run_search

        return (run_index if command == "index" else run_search)(rest)
    if command == "demo-corpus":
        return _demo_corpus(rest)
    print(f"bertbeam: unknown command {command!r}\n\n{_USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
