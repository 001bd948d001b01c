"""What every task job shares: common flags, launcher checks, the run and its summary."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from bertbeam.run import checks, stopping, summary

from bertbeam.core import metrics

from bertbeam.beam import writing
from bertbeam.config import EMBEDDED_MODEL, BatchSpec, ModelSpec, RunSpec, TokenizeSpec
from bertbeam.core.deadletter import DEAD_LETTER, DEAD_LETTER_SCHEMA
from bertbeam.filesystems import url_to_fs
from bertbeam.run.finish import (
    AccountingError,
    DeadLetterLimitError,
    FinishRun,
    WriteSummary,
    check_accounting,
    check_dead_letters,
)
from bertbeam.beam.incremental import (
    CARRIED,
    REMOVED,
    JoinPrevious,
    KeyByText,
    Stamp,
    StampResults,
)
from bertbeam.run.control import RunControl, add_control_args
from bertbeam.beam.reading import Columns, InputError, ReadDocuments, carried_fields, check_input
from bertbeam.run.runlock import RunLock
from bertbeam.run.runners import is_local, local_processes, resolve_runner, torch_threads
from bertbeam.core.task import Task
from bertbeam.beam.tokenization import ChunkDocuments
from bertbeam.beam.transforms import InferChunks, with_carried
from bertbeam.beam.sinks import FitSink, SyncToSink
from bertbeam.beam.writing import WriteResults

_LOG = logging.getLogger("bertbeam")

__all__ = ["AccountingError", "Job", "Prepared", "build", "execute", "main", "preflight"]


class _DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows ``(default: X)`` after each flag's help, except where there is no default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.default is False:
            return action.help or ""
        return super()._get_help_string(action)


def new_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """A parser that shows each default in --help and takes no abbreviations (a typo must
    not silently mean another flag); unknown flags go on to Beam, which suggests the
    nearest bertbeam or Beam flag."""
    return argparse.ArgumentParser(
        prog=prog, description=description, allow_abbrev=False,
        formatter_class=_DefaultsHelpFormatter,
        epilog="Other flags are Beam pipeline options (--runner, --direct_num_workers, ...).")


def add_common_args(parser: argparse.ArgumentParser, *, long_docs_default: str | None = "chunk") -> None:
    parser.add_argument("--input", required=True, help="Parquet glob: local, gs:// or any fsspec URL")
    parser.add_argument("--output", required=True, help="output directory (local, gs://, fsspec URL)")
    parser.add_argument("--model", default=EMBEDDED_MODEL,
                        help=f"model directory or URI (default: {EMBEDDED_MODEL})")
    parser.add_argument("--id-column", default="id", help="input column with the document id")
    parser.add_argument("--text-column", default="text", help="input column with the text")
    parser.add_argument("--carry-columns", default=None,
                        help="comma-separated input columns (any type) copied unchanged into "
                             "each result row, e.g. title,url,lang")
    parser.add_argument("--keep-text", action="store_true",
                        help="copy the text column(s) into the results too")
    parser.add_argument("--max-length", type=int, default=None, help="tokens per window")
    parser.add_argument("--long-docs", choices=["truncate", "chunk"], default=long_docs_default,
                        help="long documents: overlapping windows (chunk) or the first (truncate)")
    parser.add_argument("--stride", type=int, default=None, help="tokens shared by adjacent windows")
    parser.add_argument("--token-budget", type=int, default=BatchSpec.token_budget,
                        help="padded tokens in flight per worker (batch size x padded length; "
                             "CPU streams share it)")
    parser.add_argument("--buffer-size", type=int, default=BatchSpec.buffer_size,
                        help="windows sorted together before batches are cut")
    parser.add_argument("--max-batch-size", type=int, default=BatchSpec.max_batch_size,
                        help="windows per batch at most")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                        help="auto: a GPU where the worker has one")
    parser.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default="auto",
                        help="auto: bfloat16 on GPUs that have it, float32 otherwise")
    parser.add_argument("--quantize", choices=["none", "int8"], default="none",
                        help="int8: dynamic int8 linear layers on CPU")
    parser.add_argument("--backend", choices=["torch", "onnx"], default="torch",
                        help="onnx: ONNX Runtime's fused kernels on CPU (pip install 'bertbeam[onnx]')")
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="torch threads per worker process (default: cores / local workers)")
    parser.add_argument("--cpu-streams", type=_streams, default="auto",
                        help="CPU batches run at once per worker process, each on its share of "
                             "--threads (default: auto = min(threads, 4))")
    parser.add_argument("--model-cache-dir", default=None, help="local cache for remote models")
    parser.add_argument("--allow-pickle-weights", action="store_true",
                        help="accept .bin/.pt weights (pickle can run code)")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="run model code shipped with the checkpoint")
    add_control_args(parser)


def carry_columns(args: argparse.Namespace, text_columns: list[str]) -> tuple[str, ...]:
    """The columns ``--carry-columns`` and ``--keep-text`` ask to carry, in that order."""
    names = [c.strip() for c in (args.carry_columns or "").split(",") if c.strip()]
    if args.keep_text:
        names += text_columns
    return tuple(dict.fromkeys(names))


def positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return number


def _streams(value: str) -> int | str:
    if value == "auto":
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'auto', got {value!r}") from None


def beam_options(beam_args: list[str], bertbeam_parser: argparse.ArgumentParser | None = None
                 ) -> PipelineOptions:
    """Beam pipeline options from the flags bertbeam did not parse; a flag that is neither
    bertbeam's nor Beam's is an error, not a warning (a typo must not run a nightly job),
    with the nearest flag of either kind as a suggestion."""
    import difflib

    from apache_beam.options.pipeline_options import _BeamArgumentParser

    parser = _BeamArgumentParser(allow_abbrev=False)
    for cls in {str(c): c for c in PipelineOptions.__subclasses__()}.values():
        cls._add_argparse_args(parser)
    _, unknown = parser.parse_known_args(beam_args)
    flags = [a for a in unknown if a.startswith("-")]
    if flags:
        known = [o for action in parser._actions for o in action.option_strings]
        if bertbeam_parser is not None:
            known += [o for action in bertbeam_parser._actions for o in action.option_strings]
        close = difflib.get_close_matches(flags[0].split("=", 1)[0], known, n=1)
        hint = f" Did you mean {close[0]}?" if close else ""
        raise ValueError(f"Unknown option {flags[0]!r}: neither a bertbeam nor a Beam option.{hint}")
    return PipelineOptions(beam_args)


def run_spec(args: argparse.Namespace, options: PipelineOptions) -> RunSpec:
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
                        max_batch_size=args.max_batch_size),
    )


@dataclass(frozen=True)
class Job:
    """One pipeline run, fully described: built on the launcher, checked before it starts."""

    task: Task
    run: RunSpec
    input: str
    output: str
    columns: Columns
    sink: Any = None  # a bertbeam.beam.sinks sink (--sink), or None
    control: RunControl = field(default_factory=RunControl)


@dataclass(frozen=True)
class Prepared:
    """What the launcher checks establish: the model's config and fingerprint, this run's
    stamp, the result schema (the task's columns, the carried ones, the stamp's) and the
    earlier runs' files to carry rows from."""

    config: Any
    local_dir: str
    stamp: Stamp
    schema: Any
    carry: tuple[Any, ...]
    previous_files: list[tuple[int, str]]
    started: float = field(default_factory=time.time)
    sink_points: int | None = None  # points in the --sink collection at launch
    sink_text: str | None = None  # the results column a sink takes as text (--keep-text)


def preflight(job: Job, options: PipelineOptions | None = None) -> Prepared:
    """Fails with one clear line before anything starts: input, output, columns, model, task
    fit, settings (:mod:`bertbeam.run.checks`), carried columns, ``--previous`` locations."""
    from bertbeam.core.engine import check_overflow, resolve_max_length
    from bertbeam.core.fingerprint import job_fingerprint, model_fingerprint
    from bertbeam.beam.incremental import previous_result_files
    from bertbeam.core.models import check_task_fit, check_weights, resolve_model_dir
    from bertbeam.run.runinfo import new_run_id

    started = time.time()
    checks.check_location("--input", job.input)
    checks.check_output_outside_input(job.input, job.output)
    check_input(job.input, job.columns)
    checks.check_output_writable(job.output)
    writing.check_no_foreign_files(job.output)
    spec = job.run.model
    checks.check_device(spec.device, local=options is None or is_local(options))
    local_dir = resolve_model_dir(spec.uri, spec.cache_dir)
    check_weights(local_dir, spec.uri, allow_pickle_weights=spec.allow_pickle_weights)
    checks.check_checkpoint_files(local_dir, spec.uri)
    config = checks.load_config(local_dir, spec.uri, trust_remote_code=spec.trust_remote_code)
    check_task_fit(config, job.task.model_class, spec.uri)
    checks.check_head_weights(local_dir, spec.uri, config, job.task.model_class)
    tokenizer = checks.load_tokenizer(local_dir, spec)
    checks.check_onnx_export(local_dir, spec, config, tokenizer, job.task.model_class)
    max_length = resolve_max_length(tokenizer, config, local_dir, job.run.tokenize)
    checks.check_window(tokenizer, max_length, job.run.tokenize, pairs=job.task.pair_input)
    if job.run.tokenize.long_docs == "chunk":
        check_overflow(tokenizer, max_length, job.run.tokenize.resolved_stride(max_length))
    carry = tuple(carried_fields(job.input, job.columns))
    model_fp = model_fingerprint(local_dir)
    stamp = Stamp(job_fingerprint=job_fingerprint(job.task, job.run, model_fp),
                  model_fingerprint=model_fp, run_id=new_run_id(started))
    schema = stamp.schema(with_carried(job.task.schema(config), carry))
    previous = previous_result_files(job.control.previous, stamp, schema)
    sink_points, text = None, job.columns.text if job.columns.text in schema.names else None
    if job.sink is not None:
        sink_points = job.sink.check(
            schema, text_column=text, local=options is None or is_local(options),
            processes=1 if options is None else local_processes(options))
    return Prepared(config, local_dir, stamp, schema, carry, previous, started,
                    sink_points=sink_points, sink_text=text)


def build(p: beam.Pipeline, job: Job, prepared: Prepared,
          finish: FinishRun | None = None) -> None:
    """Read -> [join with earlier runs] -> infer -> write results and dead letter [-> a vector
    database: ``--sink``] [-> write the summary: ``finish``, for ``--no-wait``]; the shape
    every task pipeline has."""
    # Documents travel in chunks from the reader on (after the join with earlier runs, which
    # pairs documents one by one), and results are record batches up to the Parquet files.
    # ReadDocuments has checked ids and texts already (with the same reasons).
    chunk_size = job.run.tokenize.chunk_size
    joining = bool(prepared.previous_files)
    read = p | "ReadDocuments" >> ReadDocuments(job.input, job.columns,
                                                chunk_size=None if joining else chunk_size)
    chunks, carried, removed = read["documents"], (), ()
    if joining:
        joined = chunks | "JoinPrevious" >> JoinPrevious(prepared.previous_files,
                                                         prepared.stamp.job_fingerprint)
        chunks = joined["documents"] | "ChunkDocuments" >> ChunkDocuments(chunk_size)
        carried, removed = (joined[CARRIED],), (joined[REMOVED],)
    infer = InferChunks(job.task, run=job.run, carry=prepared.carry, config=prepared.config)
    inferred = chunks | "KeyByText" >> KeyByText() | "Infer" >> infer
    stamped = inferred | "StampResults" >> StampResults(prepared.stamp)
    computed = stamped["results"]
    dead_letters = [read[DEAD_LETTER], stamped[DEAD_LETTER]]
    if job.sink is not None:
        # Rows the collection cannot take go to the dead letter, not to the results.
        fitted = computed | "FitSink" >> FitSink(job.sink, prepared.sink_text)
        computed = fitted["results"]
        dead_letters.append(fitted[DEAD_LETTER])
    results = computed
    if carried:
        results = (results, *carried) | "AllResults" >> beam.Flatten()
    written = results | "WriteResults" >> WriteResults(job.output, schema=prepared.schema)
    synced = ()
    if job.sink is not None:
        # Computed rows only, unless the collection is empty (a first run with --sink); the
        # ids that left the corpus are deleted. FinishRun reads the collection back.
        upserts = results if prepared.sink_points == 0 else computed
        synced = ((upserts, *removed) | "SyncSink" >> SyncToSink(job.sink, prepared.sink_text),)
    dead_written = (
        tuple(dead_letters)
        | "AllDeadLetters" >> beam.Flatten()
        | "WriteDeadLetter" >> WriteResults(job.output, schema=DEAD_LETTER_SCHEMA, prefix="dead_letter")
    )
    if finish is not None:
        (written, dead_written, *synced) | "WriteSummary" >> WriteSummary(finish)


def execute(job: Job, beam_args: list[str],
            bertbeam_parser: argparse.ArgumentParser | None = None) -> dict | None:
    """Runs ``job``, writes ``_SUMMARY.json`` (and the report) and returns the summary; with
    ``--no-wait`` on a remote runner, returns ``None`` once the job is submitted (its last
    stage writes the summary).

    Raises AccountingError when read != computed + carried_forward + dead_lettered, and
    DeadLetterLimitError when more rows were dead-lettered than the job's limits allow (the
    outputs and the summary are written first either way).
    """
    from bertbeam.core.memory import collector_paused

    options = beam_options(beam_args, bertbeam_parser)
    with collector_paused():  # the checks import torch and transformers (memory.py)
        prepared = preflight(job, options)
    # One run at a time; the temporary files of this run (on failure) and of interrupted
    # earlier runs are removed while the lock is held.
    with RunLock(job.output):
        try:
            return _run(job, options, prepared)
        finally:
            writing.remove_temp_dirs(job.output)


def _run(job: Job, options: PipelineOptions, prepared: Prepared) -> dict | None:
    from bertbeam.run import progress, runinfo
    from bertbeam.beam.reading import count_input_rows
    from bertbeam.run.report import REPORT_FILE

    fs, root = url_to_fs(job.output)
    fs.makedirs(root, exist_ok=True)
    for name in (summary.SUMMARY_FILE, REPORT_FILE):
        if fs.exists(f"{root.rstrip('/')}/{name}"):
            # A stale summary must not vouch for files this run is about to replace.
            fs.rm(f"{root.rstrip('/')}/{name}")
    local = is_local(options)
    runtime = runinfo.resolve_runtime(job.run.model, local=local)
    meta = run_metadata(job, prepared, runtime, options)
    total = count_input_rows(job.input)
    label = f"bertbeam {job.task.name}"
    if not job.control.quiet:
        print(start_line(label, job, prepared, runtime, total), file=sys.stderr, flush=True)
    mode = progress.choose_mode(sys.stderr, quiet=job.control.quiet, local=local)
    with progress.LiveProgress(total, mode=mode, label=label) as live:
        finish = FinishRun(
            input=job.input, output=job.output, task=job.task.name, model=job.run.model.uri,
            run_id=prepared.stamp.run_id, meta=meta, pipeline_started=time.time(),
            process_started=runinfo.process_started(), report=job.control.report,
            tally_dir=live.directory if local else None,
            previous_output=job.control.previous[0] if job.control.previous else None,
            read=total, max_dead_letter_fraction=job.control.max_dead_letter_fraction,
            max_dead_letters=job.control.max_dead_letters,
            previous_files=tuple(sorted({url for _, url in prepared.previous_files})),
            joined=bool(prepared.previous_files), sink=job.sink)
        p = beam.Pipeline(runner=resolve_runner(options), options=options)
        build(p, job, prepared, None if job.control.wait else finish)
        result = p.run()
        if not job.control.wait:
            if not local:
                print(f"{label}: submitted; the job writes {job.output.rstrip('/')}/"
                      f"{summary.SUMMARY_FILE} when it ends.", file=sys.stderr)
                return None
            result.wait_until_finish()
            report = summary.read_summary(job.output)
            check_accounting(report)  # a local launcher is still here to exit with status 3
            check_dead_letters(report)
            return report
        result.wait_until_finish()
    job_id = result.job_id() if callable(getattr(result, "job_id", None)) else None
    finish = dataclasses.replace(finish, meta={**meta, "job_id": job_id})
    report = finish(metrics.query_counters(result), live.samples if local else [])
    check_accounting(report)
    check_dead_letters(report)
    return report


def run_metadata(job: Job, prepared: Prepared, runtime: dict[str, Any],
                 options: PipelineOptions) -> dict[str, Any]:
    """Everything ``_SUMMARY.json`` says about the run besides its counts and timings."""
    from apache_beam.options.pipeline_options import GoogleCloudOptions, StandardOptions

    from bertbeam.run import runinfo
    from bertbeam.core.models import split_revision

    runner = options.view_as(StandardOptions).runner
    embedding = prepared.schema.field("embedding") if "embedding" in prepared.schema.names else None
    model_fp = prepared.stamp.model_fingerprint
    return {
        "schema_version": runinfo.SUMMARY_SCHEMA_VERSION,
        "run_id": prepared.stamp.run_id,
        "runner": runner if isinstance(runner, str) else type(runner).__name__ if runner else "DirectRunner",
        "job_name": options.view_as(GoogleCloudOptions).job_name,
        "job_id": None,
        "started_at": runinfo.utc_iso(runinfo.process_started()),
        "versions": runinfo.versions(),
        "input": job.input,
        "output": job.output,
        "previous": list(job.control.previous),
        "model_revision": (split_revision(job.run.model.uri)[1]
                           or (model_fp[4:] if model_fp.startswith("rev:") else None)),
        "model_fingerprint": model_fp,
        "job_fingerprint": prepared.stamp.job_fingerprint,
        **runtime,
        "embedding_dimension": embedding.type.list_size if embedding is not None else None,
        "options": job.control.options,
    }


def start_line(label: str, job: Job, prepared: Prepared, runtime: dict[str, Any], total: int) -> str:
    """The line a job prints when it starts: what runs where, resolved."""
    threads = runtime["threads"] if runtime["threads"] is not None else "auto"
    streams = runtime["streams"] if runtime["streams"] is not None else "auto"
    previous = (f"; carrying unchanged rows from {len(job.control.previous)} earlier run(s)"
                if job.control.previous else "")
    return (f"{label}: {total} documents; model {job.run.model.uri} "
            f"({prepared.stamp.model_fingerprint}); backend {runtime['backend']}, device "
            f"{runtime['device']}, dtype "
            f"{runtime['dtype']}, {threads} threads, {streams} streams{previous}"
            f"{_bf16_hint(job.run.model, runtime)}")


def _bf16_hint(model: ModelSpec, runtime: dict[str, Any]) -> str:
    """A pointer to ``--dtype bfloat16`` where a local CPU run chose float32 by default on a
    CPU with AMX (README: Performance, bfloat16 on CPU)."""
    if (runtime["device"] != "cpu" or model.dtype != "auto" or model.quantize != "none"
            or model.backend != "torch"):
        return ""
    from bertbeam.core.models import cpu_runs_bf16_natively

    if not cpu_runs_bf16_natively():
        return ""
    return ("; this CPU has AMX: --dtype bfloat16 runs about twice as fast "
            "(not bit-exact; README: bfloat16 on CPU)")


def main(make_job: Callable[[list[str] | None], tuple[Job, list[str]]], argv: list[str] | None,
         parser: argparse.ArgumentParser | None = None) -> int:
    """Runs a task job from argv; returns the process exit code."""
    from bertbeam.core.engine import BrokenTokenizerError
    from bertbeam.core.models import ModelLoadError

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        with stopping.interrupts():
            job, beam_args = make_job(argv)
            _set_log_level(job.control)
            report = execute(job, beam_args, parser)
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

