"""``bertbeam label --task T``: label a Parquet corpus with one task.

Each task's options come from the task itself (fields made with ``tasks.base.option``): their
flags, help and defaults; a flag given to a task that does not take it is refused.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict

from apache_beam.options.pipeline_options import PipelineOptions

from bertbeam.run.job import Job, add_common_args, carry_columns, main, new_parser, run_spec
from bertbeam.run.control import run_control
from bertbeam.beam.reading import Columns
from bertbeam.tasks import TASKS, make_task
from bertbeam.core.task import TaskOption, task_options

LABEL_TASKS = tuple(name for name in TASKS if name != "embed")

_COMMAND_FLAGS = {
    # argparse dest -> (flag, tasks that take it): flags of the command, not task options.
    "labels": ("--labels", ("zero-shot",)),
    "labels_file": ("--labels-file", ("zero-shot",)),
    "question_column": ("--question-column", ("qa",)),
    "context_column": ("--context-column", ("qa",)),
}


def _options_by_flag() -> dict[str, list[tuple[str, TaskOption]]]:
    """flag -> [(task, its option)] over every labeling task."""
    flags: dict[str, list[tuple[str, TaskOption]]] = defaultdict(list)
    for name in LABEL_TASKS:
        for opt in task_options(TASKS[name]):
            flags[opt.flag].append((name, opt))
    return flags


def parser() -> argparse.ArgumentParser:
    p = new_parser("bertbeam label", "Label documents with a BERT-family model.")
    p.add_argument("--task", required=True, choices=LABEL_TASKS)
    add_common_args(p, long_docs_default=None)  # the task's window policy decides
    g = p.add_argument_group("task options (default: the task's own, shown per task)")
    for flag, owners in _options_by_flag().items():
        _, first = owners[0]
        help_text = "; ".join(
            f"{task}: {opt.help}" + ("" if opt.default is None else f" (default: {opt.default})")
            for task, opt in owners).replace("%", "%%")
        if first.kind is bool:
            g.add_argument(flag, dest=first.name, action="store_const", const=True,
                           default=argparse.SUPPRESS, help=help_text)
        else:
            g.add_argument(flag, dest=first.name, type=first.kind, choices=first.choices,
                           default=argparse.SUPPRESS, help=help_text)
    g = p.add_argument_group("qa")
    g.add_argument("--question-column", default=None, help="input column; default: question")
    g.add_argument("--context-column", default=None, help="input column; default: context")
    g = p.add_argument_group("zero-shot")
    labels = g.add_mutually_exclusive_group()
    labels.add_argument("--labels", default=None,
                        help='comma-separated labels, each "label" or "label: description"')
    labels.add_argument("--labels-file", default=None,
                        help='file with one "label" or "label: description" a line')
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


def _task_options(args: argparse.Namespace) -> dict:
    """The task options given on the command line; one clear error for a flag the task
    does not take, or a bad combination."""
    given = {}
    for flag, owners in _options_by_flag().items():
        dest = owners[0][1].name
        if not hasattr(args, dest):
            continue
        tasks = [t for t, _ in owners]
        if args.task not in tasks:
            raise ValueError(
                f"{flag} does not apply to --task {args.task}; it is for --task {' / '.join(tasks)}.")
        given[dest] = getattr(args, dest)
    for dest, (flag, tasks) in _COMMAND_FLAGS.items():
        if getattr(args, dest) is not None and args.task not in tasks:
            raise ValueError(
                f"{flag} does not apply to --task {args.task}; it is for --task {' / '.join(tasks)}.")
    if "threshold" in given and not given.get("multi_label"):
        raise ValueError("--threshold applies with --multi-label only; add --multi-label.")
    if "top_k" in given and given.get("multi_label"):
        raise ValueError(
            "--top-k applies to single-label classification; with --multi-label, labels "
            "holds every label scoring at least --threshold.")
    if args.task == "zero-shot":
        given["labels"], given["descriptions"] = _read_labels(args)
    return given


def make_job(argv: list[str] | None) -> tuple[Job, list[str]]:
    args, beam_args = parser().parse_known_args(argv)
    task = make_task(args.task, **_task_options(args))
    if args.long_docs is None:
        args.long_docs = task.default_long_docs
    if args.task == "qa":
        question, context = args.question_column or "question", args.context_column or "context"
        columns = Columns(id=args.id_column, text=question, text_pair=context,
                          carry=carry_columns(args, [question, context]))
    else:
        columns = Columns(id=args.id_column, text=args.text_column,
                          carry=carry_columns(args, [args.text_column]))
    job = Job(task=task, run=run_spec(args, PipelineOptions(beam_args)), input=args.input,
              output=args.output, columns=columns, control=run_control(args, beam_args))
    task.check_tokenize(job.run.tokenize)
    return job, beam_args


def run(argv: list[str] | None = None) -> int:
    return main(make_job, argv, parser())


if __name__ == "__main__":
    sys.exit(run())
