"""Example pipeline: zero-shot labels for a Parquet corpus with bertbeam's transforms.

    python pipelines/label.py --input 'demo/*.parquet' --output out/ --labels "code,prose"

``bertbeam label`` does this (and every other task) with launcher checks and a summary; copy
this file to build your own pipeline around ``LabelDocuments``.
"""

from __future__ import annotations

import argparse
import sys

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from bertbeam import (
    DEAD_LETTER,
    DEAD_LETTER_SCHEMA,
    EMBEDDED_MODEL,
    Columns,
    LabelDocuments,
    ModelSpec,
    ReadDocuments,
    RunSpec,
    WriteResults,
)
from bertbeam.run.runners import resolve_runner


def build_pipeline(p: beam.Pipeline, args: argparse.Namespace) -> None:
    """Parquet -> zero-shot labels -> ``results-*.parquet`` and ``dead_letter-*.parquet``."""
    read = p | "Read" >> ReadDocuments(args.input, Columns(id=args.id_column, text=args.text_column))
    label = LabelDocuments("zero-shot", labels=tuple(args.labels.split(",")),
                           run=RunSpec(model=ModelSpec(uri=args.model)), validate=False)
    out = read["documents"] | "Label" >> label
    out["results"] | "WriteResults" >> WriteResults(args.output, schema=label.schema())
    (
        (read[DEAD_LETTER], out[DEAD_LETTER])
        | "DeadLetters" >> beam.Flatten()
        | "WriteDeadLetter" >> WriteResults(args.output, schema=DEAD_LETTER_SCHEMA,
                                            prefix="dead_letter")
    )


def run(argv: list[str] | None = None) -> beam.runners.runner.PipelineResult:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--labels", required=True, help="comma-separated labels")
    parser.add_argument("--model", default=EMBEDDED_MODEL)
    parser.add_argument("--id-column", default="id")
    parser.add_argument("--text-column", default="text")
    args, beam_args = parser.parse_known_args(argv)
    options = PipelineOptions(beam_args)
    p = beam.Pipeline(runner=resolve_runner(options), options=options)
    build_pipeline(p, args)
    result = p.run()
    result.wait_until_finish()
    return result


if __name__ == "__main__":
    run(sys.argv[1:])
