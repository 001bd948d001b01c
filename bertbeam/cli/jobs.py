"""What ``bertbeam embed`` and ``bertbeam label`` share: their options made into a Job's
parts, and the run of a Job from argv with its exit status."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from apache_beam.options.pipeline_options import PipelineOptions

from bertbeam.beam.reading import InputError
from bertbeam.cli.options import StreamOptions
from bertbeam.config import BatchSpec, ModelSpec, RunSpec, TokenizeSpec
from bertbeam.core.engine import BrokenTokenizerError
from bertbeam.core.models import ModelLoadError
from bertbeam.run import stopping, streaming, summary
from bertbeam.run.control import RunControl
from bertbeam.run.finish import AccountingError, DeadLetterLimitError
from bertbeam.run.job import Job, execute
from bertbeam.run.runners import torch_threads

MakeJob = Callable[[Sequence[str]], tuple[Job, PipelineOptions]]


def carry_columns(args: argparse.Namespace, text_columns: list[str]) -> tuple[str, ...]:
    """The columns ``--carry-columns`` and ``--keep-text`` ask to carry, in that order."""
    names = [c.strip() for c in (args.carry_columns or "").split(",") if c.strip()]
    if args.keep_text:
        names += text_columns
    return tuple(dict.fromkeys(names))


def run_spec(args: argparse.Namespace, options: PipelineOptions) -> RunSpec:
    """The model, tokenize and batch settings of ``args`` (``--threads`` by default: the
    cores over the local runner's workers, :func:`bertbeam.run.runners.torch_threads`)."""
    return RunSpec(
        model=ModelSpec(
            uri=args.model, device=args.device, dtype=args.dtype, quantize=args.quantize,
            backend=args.backend,
            num_threads=args.threads or torch_threads(options), cpu_streams=args.cpu_streams,
            allow_pickle_weights=args.allow_pickle_weights,
            trust_remote_code=args.trust_remote_code, cache_dir=args.model_cache_dir),
        tokenize=TokenizeSpec(max_length=args.max_length, long_docs=args.long_docs,
                              stride=args.stride),
        batch=BatchSpec(token_budget=args.token_budget, buffer_size=args.buffer_size,
                        max_batch_size=args.max_batch_size,
                        max_wait=getattr(args, "max_wait", BatchSpec.max_wait)),
    )


def run_control(args: argparse.Namespace, beam_args: list[str]) -> RunControl:
    """How the job runs, and every option it was given (for ``_SUMMARY.json``)."""
    return RunControl(
        previous=tuple(args.previous), wait=args.wait, report=args.report, quiet=args.quiet,
        log_level=args.log_level, max_dead_letter_fraction=args.max_dead_letter_fraction,
        max_dead_letters=args.max_dead_letters,
        options={"bertbeam": {k: v for k, v in sorted(vars(args).items())}, "beam": list(beam_args)})


def stream_spec(options: PipelineOptions) -> streaming.StreamSpec:
    """The windows, watch and stop of a ``--streaming`` job (:class:`StreamOptions`)."""
    flags = options.view_as(StreamOptions)
    return streaming.StreamSpec(window_seconds=flags.window_seconds,
                                watch_interval=flags.watch_interval,
                                drain_timeout=flags.drain_timeout,
                                tombstone_column=flags.tombstone_column)


def run_job(make_job: MakeJob, argv: Sequence[str] | None) -> int:
    """Runs the task job ``make_job`` builds from argv; returns the process exit status: 0,
    1 (the run failed: a machine or service fault), 2 (a mistake in the command line, the
    input or the model), 3 (rows unaccounted for), 4 (over the dead-letter limits), or 130
    and the like for an interrupt."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        with stopping.interrupts():
            job, options = make_job(sys.argv[1:] if argv is None else argv)
            _set_log_level(job.control)
            if streaming.is_streaming(job, options):
                streaming.execute(job, options, stream_spec(options))
                return 0
            report = execute(job, options)
    except (InputError, ModelLoadError, ValueError, BrokenTokenizerError) as exc:
        print(f"bertbeam: error: {exc}", file=sys.stderr)
        return 2
    except AccountingError as exc:
        print(f"bertbeam: error: {exc}", file=sys.stderr)
        return 3
    except DeadLetterLimitError as exc:
        print(f"bertbeam: error: {exc}", file=sys.stderr)
        return 4
    except KeyboardInterrupt as exc:
        return stopping.interrupted(exc)
    except Exception as exc:
        if stopping.interrupted_by() is not None:
            return stopping.interrupted(exc)
        line = stopping.environment_error(exc)
        if line is None:
            raise
        print(f"bertbeam: error: the run failed: {line}", file=sys.stderr)
        return 1
    if report is not None:
        print(summary.summary_line(report))
    return 0


def _set_log_level(control: RunControl) -> None:
    """``--log-level`` for bertbeam's loggers; Beam's and the rest stay at WARNING (ERROR with
    ``--quiet``, which also quiets bertbeam unless a level is given)."""
    quiet = logging.ERROR if control.quiet else logging.WARNING
    logging.getLogger().setLevel(quiet)
    logging.getLogger("bertbeam").setLevel(control.log_level or quiet)
