"""``bertbeam label --task T``: label a Parquet corpus with one task.

Each task's options come from the task itself (fields made with ``core.task.option``): their
flags, help and defaults (:class:`bertbeam.cli.options.LabelOptions`); a flag given to a task
that does not take it is refused.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from apache_beam.options.pipeline_options import PipelineOptions

from bertbeam.beam.reading import Columns
from bertbeam.cli.jobs import carry_columns, run_control, run_job, run_spec
from bertbeam.cli.options import (
    COMMAND_FLAGS,
    CommandParser,
    JobOptions,
    LabelOptions,
    StreamOptions,
    command_parser,
    options_by_flag,
    parse_command,
)
from bertbeam.run.job import Job
from bertbeam.tasks import make_task

OPTIONS = (LabelOptions, JobOptions, StreamOptions)


def parser() -> CommandParser:
    return command_parser("bertbeam label", "Label documents with a BERT-family model.", OPTIONS)


def pipeline_flags(argv: Sequence[str]) -> list[str]:
    """``argv`` as the pipeline's options read it: Beam's ``--labels`` are a Dataflow job's
    labels, so the zero-shot ``--labels`` travel as ``--candidate-labels``."""
    flags = []
    for arg in map(str, argv):
        if arg == "--labels" or arg.startswith("--labels="):
            arg = "--candidate-labels" + arg[len("--labels"):]
        flags.append(arg)
    return flags


def _read_labels(args: argparse.Namespace) -> tuple[tuple[str, ...], tuple[str | None, ...] | None]:
    from bertbeam.tasks.zero_shot import parse_labels  # as TASKS does: the task's module on use

    if args.candidate_labels is not None:
        return parse_labels(args.candidate_labels.split(","))
    if args.labels_file is None:
        raise ValueError("--task zero-shot needs --labels \"a,b,c\" or --labels-file FILE.")
    import fsspec  # on the first file opened (start-up)

    try:
        with fsspec.open(args.labels_file, "r", encoding="utf-8") as f:
            return parse_labels(f.read().splitlines())
    except OSError as exc:
        raise ValueError(f"Cannot read --labels-file {args.labels_file!r}: {exc}") from exc


def _task_options(args: argparse.Namespace) -> dict:
    """The task options given on the command line; one clear error for a flag the task
    does not take, or a bad combination."""
    given = {}
    for flag, owners in options_by_flag().items():
        dest = owners[0][1].name
        if not hasattr(args, dest):
            continue
        tasks = [t for t, _ in owners]
        if args.task not in tasks:
            raise ValueError(
                f"{flag} does not apply to --task {args.task}; it is for --task {' / '.join(tasks)}.")
        given[dest] = getattr(args, dest)
    for dest, (flag, tasks) in COMMAND_FLAGS.items():
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


def make_job(argv: Sequence[str]) -> tuple[Job, PipelineOptions]:
    """The job and its pipeline options (bertbeam's and Beam's) from ``argv``.

    Raises:
        ValueError: a bad flag, value or combination (one line).
    """
    args, beam_args = parse_command(parser(), OPTIONS, argv)
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
    options = PipelineOptions(pipeline_flags(argv))
    job = Job(task=task, run=run_spec(args, options), input=args.input,
              output=args.output, columns=columns, control=run_control(args, beam_args))
    task.check_tokenize(job.run.tokenize)
    return job, options


def run(argv: Sequence[str] | None = None) -> int:
    return run_job(make_job, argv)


if __name__ == "__main__":
    sys.exit(run())
