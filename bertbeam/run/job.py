"""One task job from its options to its outputs: the launcher checks (``preflight``), the
pipeline (``build``), the run and its summary (``execute``). The command line that makes a
Job is :mod:`bertbeam.cli`."""

from __future__ import annotations

import dataclasses
import logging
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import apache_beam as beam
import pyarrow as pa
from apache_beam.options.pipeline_options import (
    GoogleCloudOptions,
    PipelineOptions,
    StandardOptions,
)

from bertbeam.beam import writing
from bertbeam.beam.incremental import (
    CARRIED,
    REMOVED,
    JoinPrevious,
    KeyByText,
    Stamp,
    StampResults,
    previous_result_files,
)
from bertbeam.beam.reading import (
    Columns,
    ReadDocuments,
    carried_fields,
    check_input,
    count_input_rows,
)
from bertbeam.beam.sinks import FitSink, SyncToSink
from bertbeam.beam.sinks import check_runner as check_sink_runner
from bertbeam.beam.tokenization import ChunkDocuments
from bertbeam.beam.transforms import InferChunks, with_carried
from bertbeam.beam.writing import WriteResults
from bertbeam.config import ModelSpec, RunSpec
from bertbeam.core import metrics
from bertbeam.core.deadletter import DEAD_LETTER, DEAD_LETTER_SCHEMA
from bertbeam.core.engine import check_overflow, resolve_max_length
from bertbeam.core.fingerprint import job_fingerprint, model_fingerprint
from bertbeam.core.memory import collector_paused
from bertbeam.core.models import (
    check_task_fit,
    check_weights,
    cpu_runs_bf16_natively,
    resolve_model_dir,
    split_revision,
)
from bertbeam.core.task import Task
from bertbeam.filesystems import url_to_fs
from bertbeam.run import checks, progress, runinfo, summary
from bertbeam.run.control import RunControl
from bertbeam.run.finish import (
    AccountingError,
    FinishRun,
    WriteSummary,
    check_accounting,
    check_dead_letters,
)
from bertbeam.run.report import REPORT_FILE
from bertbeam.run.runinfo import new_run_id
from bertbeam.run.runlock import RunLock
from bertbeam.run.runners import (
    describe_dry_run,
    is_dry_run,
    is_local,
    is_remote,
    local_processes,
    resolve_runner,
)

_LOG = logging.getLogger("bertbeam")

__all__ = ["AccountingError", "Job", "Prepared", "build", "execute", "preflight"]


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
    offline: bool = False  # a dry run: the pipeline is built, no location is read


def preflight(job: Job, options: PipelineOptions | None = None) -> Prepared:
    """Fails with one clear line before anything starts: input, output, columns, model, task
    fit, settings (:mod:`bertbeam.run.checks`), carried columns, ``--previous`` locations."""
    started = time.time()
    local = options is None or not is_remote(options)  # workers on this machine
    dry = options is not None and is_dry_run(options)
    spec = job.run.model
    checks.check_location("--input", job.input)
    checks.check_location("--output", job.output)
    if not local:
        checks.check_remote_locations({"--input": job.input, "--output": job.output}, spec.uri)
        for location in job.control.previous:
            checks.check_remote_locations({"--previous": location}, spec.uri)
    if job.sink is not None and not local:
        check_sink_runner(job.sink.kind, job.sink.location, local=False, processes=1)
    checks.check_output_outside_input(job.input, job.output)
    if not dry:  # a dry run builds the job offline: no footer read, no bucket touched
        checks.check_reachable([job.input, job.output, *job.control.previous, spec.uri])
        check_input(job.input, job.columns)
        checks.check_output_writable(job.output)
        writing.check_no_foreign_files(job.output)
    checks.check_device(spec.device, local=local)
    local_dir = (checks.offline_model_dir(spec.uri, spec.cache_dir) if dry
                 else resolve_model_dir(spec.uri, spec.cache_dir))
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
    carry = (tuple(pa.field(c, pa.string()) for c in job.columns.carry) if dry
             else tuple(carried_fields(job.input, job.columns)))
    model_fp = model_fingerprint(local_dir)
    stamp = Stamp(job_fingerprint=job_fingerprint(job.task, job.run, model_fp),
                  model_fingerprint=model_fp, run_id=new_run_id(started))
    schema = stamp.schema(with_carried(job.task.schema(config), carry))
    previous = ([(i, f"{loc.rstrip('/')}/results-00000-of-00001.parquet")
                 for i, loc in enumerate(job.control.previous)] if dry
                else previous_result_files(job.control.previous, stamp, schema))
    sink_points, text = None, job.columns.text if job.columns.text in schema.names else None
    if job.sink is not None and not dry:
        sink_points = job.sink.check(
            schema, text_column=text, local=local,
            processes=1 if options is None else local_processes(options))
    return Prepared(config, local_dir, stamp, schema, carry, previous, started,
                    sink_points=sink_points, sink_text=text, offline=dry)


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
    check = not prepared.offline
    written = results | "WriteResults" >> WriteResults(job.output, schema=prepared.schema,
                                                       check_output=check)
    synced = ()
    if job.sink is not None:
        # Computed rows only, unless the collection is empty (a first run with --sink); the
        # ids that left the corpus are deleted. FinishRun reads the collection back.
        upserts = results if prepared.sink_points == 0 else computed
        synced = ((upserts, *removed) | "SyncSink" >> SyncToSink(job.sink, prepared.sink_text),)
    dead_written = (
        tuple(dead_letters)
        | "AllDeadLetters" >> beam.Flatten()
        | "WriteDeadLetter" >> WriteResults(job.output, schema=DEAD_LETTER_SCHEMA,
                                            prefix="dead_letter", check_output=check)
    )
    if finish is not None:
        (written, dead_written, *synced) | "WriteSummary" >> WriteSummary(finish)


def execute(job: Job, options: PipelineOptions) -> dict | None:
    """Runs ``job`` with the pipeline ``options`` (Beam's and bertbeam's), writes ``_SUMMARY.json`` (and the report) and returns the summary; with
    ``--no-wait`` on a remote runner, returns ``None`` once the job is submitted (its last
    stage writes the summary).

    Raises AccountingError when read != computed + carried_forward + dead_lettered, and
    DeadLetterLimitError when more rows were dead-lettered than the job's limits allow (the
    outputs and the summary are written first either way).
    """
    with collector_paused():  # the checks import torch and transformers (memory.py)
        prepared = preflight(job, options)
    if is_dry_run(options):
        return _dry_run(job, options, prepared)
    # One run at a time; the temporary files of this run (on failure) and of interrupted
    # earlier runs are removed while the lock is held.
    with RunLock(job.output):
        try:
            return _run(job, options, prepared)
        finally:
            writing.remove_temp_dirs(job.output)


def _dry_run(job: Job, options: PipelineOptions, prepared: Prepared) -> None:
    """``--dry_run=True``: builds the job as the runner would submit it, prints its steps,
    options and worker settings, and submits nothing (no lock, no output touched)."""
    finish = None
    if not job.control.wait:  # the job's last stage writes the summary: build it too
        meta = run_metadata(job, prepared, runinfo.resolve_runtime(job.run.model, local=False),
                            options)
        finish = FinishRun(
            input=job.input, output=job.output, task=job.task.name, model=job.run.model.uri,
            run_id=prepared.stamp.run_id, meta=meta, pipeline_started=time.time(),
            process_started=runinfo.process_started(), report=job.control.report,
            previous_output=job.control.previous[0] if job.control.previous else None,
            max_dead_letter_fraction=job.control.max_dead_letter_fraction,
            max_dead_letters=job.control.max_dead_letters,
            previous_files=tuple(url for _, url in prepared.previous_files),
            joined=bool(prepared.previous_files), sink=job.sink)
    # Offline: no credential lookup either (Beam retries a missing one for ~20 s, logging
    # a traceback each time, before its own project-id validation speaks).
    options.view_as(GoogleCloudOptions).no_auth = True
    p = beam.Pipeline(runner=resolve_runner(options), options=options)
    build(p, job, prepared, finish)
    result = p.run()
    built = getattr(result, "job", None)
    if built is None:
        raise ValueError(f"--dry_run=True is a Dataflow option; the runner "
                         f"{type(p.runner).__name__} ran the job instead of building it.")
    print(describe_dry_run(f"bertbeam {job.task.name}", options, built))
    return None


def _run(job: Job, options: PipelineOptions, prepared: Prepared) -> dict | None:
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
                job_id = result.job_id() if callable(getattr(result, "job_id", None)) else None
                print(f"{label}: submitted job {job_id or '(the runner gave no id)'}; it writes "
                      f"{job.output.rstrip('/')}/{summary.SUMMARY_FILE} when it ends.")
                return None
            result.wait_until_finish()
            report = summary.read_summary(job.output)
            check_accounting(report)  # a local launcher is still here to exit with status 3
            check_dead_letters(report)
            return report
        if local:
            result.wait_until_finish()
        else:
            with progress.RemoteProgress(result, total, label=label, quiet=job.control.quiet):
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
    CPU with AMX (docs/performance.md)."""
    if (runtime["device"] != "cpu" or model.dtype != "auto" or model.quantize != "none"
            or model.backend != "torch"):
        return ""

    if not cpu_runs_bf16_natively():
        return ""
    return ("; this CPU has AMX: --dtype bfloat16 runs about twice as fast "
            "(not bit-exact; see docs/performance.md)")

