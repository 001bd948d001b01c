"""Label a Parquet corpus with one task: ``python -m pipelines.label --task T --input GLOB --output DIR``.

Tasks: classify, ner, qa, fill-mask, zero-shot (see ``bertbeam label --help``).
"""

from __future__ import annotations

import argparse
import sys

from apache_beam.options.pipeline_options import PipelineOptions

from bertbeam.io import Columns
from bertbeam.tasks import TASKS, make_task
from pipelines.common import Job, add_common_args, main, run_spec

LABEL_TASKS = tuple(name for name in TASKS if name != "embed")

_TASK_FLAGS = {
    # argparse dest -> (flag, task option, tasks that take it)
    "top_k": ("--top-k", "top_k", ("classify", "fill-mask", "zero-shot")),
    "multi_label": ("--multi-label", "multi_label", ("classify",)),
    "threshold": ("--threshold", "threshold", ("classify",)),
    "chunk_merge": ("--chunk-merge", "chunk_merge", ("classify",)),
    "aggregation": ("--aggregation", "aggregation", ("ner",)),
    "max_answer_length": ("--max-answer-length", "max_answer_length", ("qa",)),
    "temperature": ("--temperature", "temperature", ("zero-shot",)),
    "labels": ("--labels", None, ("zero-shot",)),
    "labels_file": ("--labels-file", None, ("zero-shot",)),
    "question_column": ("--question-column", None, ("qa",)),
    "context_column": ("--context-column", None, ("qa",)),
}
"""Task-specific flags; they default to None so that a flag given to the wrong task is caught."""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bertbeam label", description="Label documents with a BERT-family model.",
        epilog="Other flags are Beam pipeline options (--runner, --direct_num_workers, ...).")
    p.add_argument("--task", required=True, choices=LABEL_TASKS)
    add_common_args(p, long_docs_default=None)  # chunk, except fill-mask: truncate
    g = p.add_argument_group("classify / fill-mask / zero-shot")
    g.add_argument("--top-k", type=int, default=None,
                   help="labels listed (classify, zero-shot: default 1) or tokens per mask "
                        "(fill-mask: default 5)")
    g.add_argument("--multi-label", action="store_const", const=True, default=None,
                   help="classify: independent sigmoid per label; labels = all over --threshold")
    g.add_argument("--threshold", type=float, default=None,
                   help="classify --multi-label: minimum score in labels (default 0.5)")
    g.add_argument("--chunk-merge", choices=["mean", "max"], default=None,
                   help="classify: how window logits of a long document combine (default mean)")
    g = p.add_argument_group("ner")
    g.add_argument("--aggregation", choices=["none", "simple", "first", "average", "max"],
                   default=None, help="entity aggregation, as in transformers (default simple)")
    g = p.add_argument_group("qa")
    g.add_argument("--question-column", default=None, help="default: question")
    g.add_argument("--context-column", default=None, help="default: context")
    g.add_argument("--max-answer-length", type=int, default=None, help="tokens (default 15)")
    g = p.add_argument_group("zero-shot")
    labels = g.add_mutually_exclusive_group()
    labels.add_argument("--labels", default=None,
                        help='comma-separated labels, each "label" or "label: description"')
    labels.add_argument("--labels-file", default=None,
                        help='file with one "label" or "label: description" a line')
    g.add_argument("--temperature", type=float, default=None,
                   help="softmax temperature over cosine similarities")
    return p


def _read_labels(args: argparse.Namespace) -> tuple[tuple[str, ...], tuple[str | None, ...] | None]:
    from bertbeam.tasks.zero_shot import parse_labels

    if args.labels is not None:
        return parse_labels(args.labels.split(","))
    if args.labels_file is None:
        raise ValueError("--task zero-shot needs --labels \"a,b,c\" or --labels-file FILE.")
    import fsspec

    try:
        with fsspec.open(args.labels_file, "r", encoding="utf-8") as f:
            return parse_labels(f.read().splitlines())
    except OSError as exc:
        raise ValueError(f"Cannot read --labels-file {args.labels_file!r}: {exc}") from exc


def _check_flags(args: argparse.Namespace) -> None:
    """One clear error for a flag that the task does not take, or a bad combination."""
    for dest, (flag, _, tasks) in _TASK_FLAGS.items():
        if getattr(args, dest) is not None and args.task not in tasks:
            raise ValueError(
                f"{flag} does not apply to --task {args.task}; it is for --task "
                f"{' / '.join(tasks)}.")
    if args.threshold is not None and not args.multi_label:
        raise ValueError("--threshold applies with --multi-label only; add --multi-label.")
    if args.top_k is not None and args.multi_label:
        raise ValueError(
            "--top-k applies to single-label classification; with --multi-label, labels "
            "holds every label scoring at least --threshold.")
    if args.task == "fill-mask" and args.long_docs == "chunk":
        raise ValueError(
            "--task fill-mask reads the first window of each document: use --long-docs truncate.")


def _task_options(args: argparse.Namespace) -> dict:
    options = {option: getattr(args, dest) for dest, (_, option, _) in _TASK_FLAGS.items()
               if option is not None and getattr(args, dest) is not None}
    if args.task == "ner":
        options.setdefault("aggregation", "simple")
    elif args.task == "qa":
        options.setdefault("max_answer_length", 15)
    elif args.task == "zero-shot":
        options["labels"], options["descriptions"] = _read_labels(args)
    return options


def make_job(argv: list[str] | None) -> tuple[Job, list[str]]:
    args, beam_args = parser().parse_known_args(argv)
    _check_flags(args)
    if args.long_docs is None:
        args.long_docs = "truncate" if args.task == "fill-mask" else "chunk"
    task = make_task(args.task, **_task_options(args))
    if args.task == "qa":
        columns = Columns(id=args.id_column, text=args.question_column or "question",
                          text_pair=args.context_column or "context")
    else:
        columns = Columns(id=args.id_column, text=args.text_column)
    job = Job(task=task, run=run_spec(args, PipelineOptions(beam_args)), input=args.input,
              output=args.output, columns=columns)
    return job, beam_args


def run(argv: list[str] | None = None) -> int:
    return main(make_job, argv)


if __name__ == "__main__":
    sys.exit(run())
