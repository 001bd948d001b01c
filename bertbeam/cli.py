"""The ``bertbeam`` command: ``embed``, ``label``, ``train``, ``evaluate``, ``demo-corpus``,
``check-gpu``."""

from __future__ import annotations

import sys

_USAGE = """usage: bertbeam COMMAND [options]

commands:
  embed          embed a Parquet corpus            (bertbeam embed --help)
  label          label a Parquet corpus with a task (bertbeam label --help)
  train          fine-tune a classifier or tagger   (bertbeam train --help)
  evaluate       score label results against gold   (bertbeam evaluate --help)
  demo-corpus    write a demo corpus: bertbeam demo-corpus DIR [--files N] [--limit N] [--labels]
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
    p.add_argument("--labels", action="store_true",
                   help="write labelled train.parquet and test.parquet (id, text, label) instead")
    args = p.parse_args(argv)
    if args.labels:
        from bertbeam.training.demo import write_demo_labels

        paths = write_demo_labels(args.directory, limit=args.limit)
        print(f"wrote {', '.join(paths)}")
        return 0
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
    if command in ("train", "evaluate"):
        from bertbeam.training import cli

        return cli.run_train(rest) if command == "train" else cli.run_evaluate(rest)
    if command == "demo-corpus":
        return _demo_corpus(rest)
    print(f"bertbeam: unknown command {command!r}\n\n{_USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
