"""``bertbeam embed``: embed a Parquet corpus."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from apache_beam.options.pipeline_options import PipelineOptions

from bertbeam.beam.reading import Columns
from bertbeam.beam.vectordb import sink_from_args
from bertbeam.cli.jobs import carry_columns, run_control, run_job, run_spec
from bertbeam.cli.options import (
    CommandParser,
    EmbedOptions,
    JobOptions,
    StreamOptions,
    command_parser,
    parse_command,
)
from bertbeam.run.job import Job
from bertbeam.tasks.embed import EmbedTask

OPTIONS = (JobOptions, EmbedOptions, StreamOptions)


def parser() -> CommandParser:
    return command_parser("bertbeam embed", "Embed documents with a BERT-family model.", OPTIONS)


def make_job(argv: Sequence[str]) -> tuple[Job, PipelineOptions]:
    """The job and its pipeline options (bertbeam's and Beam's) from ``argv``.

    Raises:
        ValueError: a bad flag, value or combination (one line).
    """
    args, beam_args = parse_command(parser(), OPTIONS, argv)
    task = EmbedTask(
        pooling=args.pooling,
        normalize=None if args.normalize == "auto" else args.normalize == "yes",
        chunk_pooling=args.chunk_pooling, prompt_name=args.prompt_name, prompt=args.prompt,
        truncate_dim=args.truncate_dim)
    if args.long_docs is None:
        args.long_docs = task.default_long_docs
    options = PipelineOptions([str(a) for a in argv])
    job = Job(task=task, run=run_spec(args, options), input=args.input,
              output=args.output, columns=Columns(id=args.id_column, text=args.text_column,
                                                  carry=carry_columns(args, [args.text_column])),
              sink=sink_from_args(args), control=run_control(args, beam_args))
    return job, options


def run(argv: Sequence[str] | None = None) -> int:
    return run_job(make_job, argv)


if __name__ == "__main__":
    sys.exit(run())
