"""Embed a Parquet corpus: ``python -m pipelines.embed --input GLOB --output DIR [options]``."""

from __future__ import annotations

import argparse
import sys

from apache_beam.options.pipeline_options import PipelineOptions

from bertbeam.io import Columns
from bertbeam.tasks.embed import EmbedTask
from bertbeam.vectordb import add_sink_args, sink_from_args
from pipelines.common import Job, add_common_args, main, run_spec


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bertbeam embed", description="Embed documents with a BERT-family model.",
        epilog="Other flags are Beam pipeline options (--runner, --direct_num_workers, ...).")
    add_common_args(p)
    p.add_argument("--pooling", choices=["auto", "mean", "cls", "max"], default="auto")
    p.add_argument("--normalize", choices=["auto", "yes", "no"], default="auto")
    p.add_argument("--chunk-pooling", choices=["mean", "first", "max"], default="mean",
                   help="how window embeddings of a long document are combined")
    add_sink_args(p)
    return p


def make_job(argv: list[str] | None) -> tuple[Job, list[str]]:
    args, beam_args = parser().parse_known_args(argv)
    task = EmbedTask(
        pooling=args.pooling,
        normalize=None if args.normalize == "auto" else args.normalize == "yes",
        chunk_pooling=args.chunk_pooling)
    job = Job(task=task, run=run_spec(args, PipelineOptions(beam_args)), input=args.input,
              output=args.output, columns=Columns(id=args.id_column, text=args.text_column),
              sink=sink_from_args(args))
    return job, beam_args


def run(argv: list[str] | None = None) -> int:
    return main(make_job, argv)


if __name__ == "__main__":
    sys.exit(run())
