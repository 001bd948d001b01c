"""``bertbeam embed``: embed a Parquet corpus."""

from __future__ import annotations

import argparse
import sys
from typing import get_args

from apache_beam.options.pipeline_options import PipelineOptions

from bertbeam.run.job import Job, add_common_args, carry_columns, main, new_parser, run_spec
from bertbeam.run.control import run_control
from bertbeam.beam.reading import Columns
from bertbeam.tasks.embed import EmbedTask, Pooling
from bertbeam.beam.vectordb import add_sink_args, sink_from_args


def parser() -> argparse.ArgumentParser:
    p = new_parser("bertbeam embed", "Embed documents with a BERT-family model.")
    add_common_args(p)
    p.add_argument("--pooling", choices=get_args(Pooling), default="auto",
                   help="token pooling; auto: the checkpoint's Pooling module, else mean")
    p.add_argument("--normalize", choices=["auto", "yes", "no"], default="auto",
                   help="auto: as the checkpoint says (plain checkpoints are normalized)")
    prompt = p.add_mutually_exclusive_group()
    prompt.add_argument("--prompt-name", default=None,
                        help="one of the checkpoint's prompts (default: its default_prompt_name)")
    prompt.add_argument("--prompt", default=None,
                        help="a prompt text put before every document; '' turns a default prompt off")
    p.add_argument("--truncate-dim", type=int, default=None,
                   help="keep the first N dimensions of each embedding (Matryoshka models)")
    p.add_argument("--chunk-pooling", choices=["mean", "first", "max"], default="mean",
                   help="how window embeddings of a long document are combined")
    add_sink_args(p)
    return p


def make_job(argv: list[str] | None) -> tuple[Job, list[str]]:
    args, beam_args = parser().parse_known_args(argv)
    task = EmbedTask(
        pooling=args.pooling,
        normalize=None if args.normalize == "auto" else args.normalize == "yes",
        chunk_pooling=args.chunk_pooling, prompt_name=args.prompt_name, prompt=args.prompt,
        truncate_dim=args.truncate_dim)
    job = Job(task=task, run=run_spec(args, PipelineOptions(beam_args)), input=args.input,
              output=args.output, columns=Columns(id=args.id_column, text=args.text_column,
                              carry=carry_columns(args, [args.text_column])),
              sink=sink_from_args(args), control=run_control(args, beam_args))
    return job, beam_args


def run(argv: list[str] | None = None) -> int:
    return main(make_job, argv, parser())


if __name__ == "__main__":
    sys.exit(run())
