"""``bertbeam embed``: embed a Parquet corpus."""

from __future__ import annotations

import argparse
import sys

from apache_beam.options.pipeline_options import PipelineOptions

from bertbeam.jobs.common import Job, add_common_args, main, new_parser, run_spec
from bertbeam.jobs.control import run_control
from bertbeam.reading import Columns
from bertbeam.tasks.embed import EmbedTask


def parser() -> argparse.ArgumentParser:
    p = new_parser("bertbeam embed", "Embed documents with a BERT-family model.")
    add_common_args(p)
    p.add_argument("--pooling", choices=["auto", "mean", "cls", "max"], default="auto",
                   help="auto: as the sentence-transformers config says, else mean")
    p.add_argument("--normalize", choices=["auto", "yes", "no"], default="auto",
                   help="auto: as the checkpoint says (plain checkpoints are normalized)")
    p.add_argument("--chunk-pooling", choices=["mean", "first", "max"], default="mean",
                   help="how window embeddings of a long document are combined")
    return p


def make_job(argv: list[str] | None) -> tuple[Job, list[str]]:
    args, beam_args = parser().parse_known_args(argv)
    task = EmbedTask(
        pooling=args.pooling,
        normalize=None if args.normalize == "auto" else args.normalize == "yes",
        chunk_pooling=args.chunk_pooling)
    job = Job(task=task, run=run_spec(args, PipelineOptions(beam_args)), input=args.input,
              output=args.output, columns=Columns(id=args.id_column, text=args.text_column),
              control=run_control(args, beam_args))
    return job, beam_args


def run(argv: list[str] | None = None) -> int:
    return main(make_job, argv, parser())


if __name__ == "__main__":
    sys.exit(run())
