"""A task job on unbounded input (``--streaming``): documents from ``watch:GLOB`` or
``pubsub:...`` embedded or labeled as they arrive, in fixed windows, written per window.

The inference is the batch job's (``InferChunks``, the same engine); what differs is around
it: the source, the windows, duplicate ids per window (first arrival kept) and per-window
Parquet files written bundle by bundle. On the local runner the job runs until Ctrl-C or
SIGTERM; then no file that has landed is left half done: the launcher waits until every row
of the files that had landed is in the results or the dead letter, and only then stops.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.transforms.window import FixedWindows

from bertbeam.beam.batching import BatchByTokens
from bertbeam.beam.inference import RunModel
from bertbeam.beam.postprocess import Postprocess
from bertbeam.beam.reading import carried_fields
from bertbeam.beam.sinks import FitSink, SyncFn
from bertbeam.beam.sources import (
    DELETED,
    PUBSUB,
    WATCH,
    ReadPubSubDocuments,
    SplitDeletions,
    StreamSource,
    WatchDocuments,
)
from bertbeam.beam.tokenization import ChunkDocuments, Tokenize
from bertbeam.beam.transforms import InferChunks, with_carried
from bertbeam.beam.window_files import WriteWindowFiles, count_window_rows, window_files
from bertbeam.beam.windowing import DropRepeatedIds
from bertbeam.core.deadletter import DEAD_LETTER, DEAD_LETTER_SCHEMA
from bertbeam.core.engine import engine_spec, resolve_max_length
from bertbeam.core.models import check_task_fit, check_weights, resolve_model_dir
from bertbeam.filesystems import expand_glob, url_to_fs, write_json_atomically
from bertbeam.run import checks
from bertbeam.run.finish import AccountingError
from bertbeam.run.job import Job
from bertbeam.run.live import LiveStream
from bertbeam.run.runners import is_local, local_processes, resolve_runner
from bertbeam.run.summary import STREAM_FILE

_LOG = logging.getLogger("bertbeam")


@dataclass(frozen=True, kw_only=True)
class StreamSpec:
    """How a streaming job windows, watches and stops.

    Attributes:
        window_seconds: length of the fixed windows; results and dead letters are written in
            files per window, and ids are unique per window.
        watch_interval: seconds between two matches of a ``watch:`` glob.
        drain_timeout: on Ctrl-C, the longest the launcher waits for the files that have
            landed to be written, in seconds.
        tombstone_column: an input field (Parquet column, JSON field or message attribute)
            that, when true, makes its row the deletion of its id: nothing is computed, the
            id is deleted from the ``--sink`` and written to the window's ``deleted-*``
            file. One event per id per window: the first to arrive is kept.
        progress_seconds: seconds between two live lines (rate, latency, backlog) of a
            local run.
    """

    window_seconds: int = 60
    watch_interval: float = 2.0
    drain_timeout: float = 120.0
    tombstone_column: str | None = None
    progress_seconds: float = 5.0

    def __post_init__(self) -> None:
        if isinstance(self.window_seconds, bool) or not isinstance(self.window_seconds, int) or (
                self.window_seconds <= 0):
            raise ValueError(f"window_seconds must be a positive integer, got {self.window_seconds!r}.")
        for name in ("watch_interval", "drain_timeout", "progress_seconds"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ValueError(f"{name} must be a positive number of seconds, got {value!r}.")


@dataclass(frozen=True)
class Prepared:
    source: StreamSource
    config: Any
    schema: pa.Schema
    carry: tuple[pa.Field, ...]
    sink_text: str | None = None  # the results column a --sink takes as text (--keep-text)


def preflight(job: Job, spec: StreamSpec, options: PipelineOptions | None = None) -> Prepared:
    """The launcher checks of a streaming job, each failing in one line: the source, an
    output that holds no results yet (a restarted watch reads its files again), the model
    and the task (the batch job's checks)."""
    source = StreamSource.parse(job.input)
    checks.check_location("--output", job.output)
    if source.kind == "watch":
        checks.check_location("--input", source.location)
        checks.check_output_outside_input(source.location, job.output)
    if job.control.previous:
        raise ValueError("--previous applies to batch runs; a --streaming run computes every "
                         "document it receives.")
    checks.check_output_writable(job.output)
    if window_files(job.output) or expand_glob(f"{job.output.rstrip('/')}/results-*.parquet"):
        raise ValueError(f"Output {job.output!r} already holds results; a streaming run writes "
                         "into a new or empty directory.")
    spec_model = job.run.model
    local_dir = resolve_model_dir(spec_model.uri, spec_model.cache_dir)
    check_weights(local_dir, spec_model.uri, allow_pickle_weights=spec_model.allow_pickle_weights)
    config = checks.load_config(local_dir, spec_model.uri, trust_remote_code=spec_model.trust_remote_code)
    check_task_fit(config, job.task.model_class, spec_model.uri)
    tokenizer = checks.load_tokenizer(local_dir, spec_model)
    max_length = resolve_max_length(tokenizer, config, local_dir, job.run.tokenize)
    checks.check_window(tokenizer, max_length, job.run.tokenize, pairs=job.task.pair_input)
    carry: tuple[pa.Field, ...] = ()
    if job.columns.carry:
        if source.kind == "pubsub":
            carry = tuple(pa.field(c, pa.string()) for c in job.columns.carry)
        elif expand_glob(source.location):
            carry = tuple(carried_fields(source.location, job.columns))
        else:
            raise ValueError(f"--carry-columns and --keep-text read the columns' types from a "
                             f"file of {source.location!r}, and none has landed yet.")
    if spec.tombstone_column and source.kind == "watch":
        _warn_without_tombstones(source.location, spec.tombstone_column)
    schema = with_carried(job.task.schema(config), carry)
    sink_text = job.columns.text if job.columns.text in schema.names else None
    if job.sink is not None:
        local = options is None or is_local(options)
        job.sink.check(schema, text_column=sink_text, local=local,
                       processes=1 if options is None else local_processes(options))
    return Prepared(source, config, schema, carry, sink_text)


def _warn_without_tombstones(pattern: str, column: str, files_checked: int = 20) -> None:
    """One line on stderr when files have landed and none of (the first ``files_checked`` of)
    them has the tombstone column: a file without it deletes nothing, which a misspelt
    ``--tombstone-column`` would make true of every file."""
    files = expand_glob(pattern)[:files_checked]
    if not files:
        return
    for url in files:
        fs, path = url_to_fs(url)
        try:
            with fs.open(path, "rb") as f:
                if column in pq.ParquetFile(f).schema_arrow.names:
                    return
        except Exception:  # noqa: BLE001 - an unreadable file is the reader's dead letter
            continue
    print(f"bertbeam: warning: none of the {len(files)} file(s) of {pattern!r} checked has "
          f"the column {column!r} (--tombstone-column); only files that have it delete ids.",
          file=sys.stderr)


class _StopWhenAskedFn(beam.DoFn):
    """Local runs only: fails the pipeline once the launcher has drained it and created
    ``flag``: the FnApiRunner has no cancel, and its watch never ends by itself."""

    def __init__(self, flag: str):
        self._flag = flag

    def process(self, tick: Any) -> Iterator[Any]:
        if os.path.exists(self._flag):
            raise _Stopped("stopped by the launcher")
        return iter(())


class _Stopped(RuntimeError):
    pass


def build(p: beam.Pipeline, job: Job, prepared: Prepared, spec: StreamSpec,
          stop_flag: str | None = None) -> None:
    """Source -> fixed windows -> first of each id per window -> InferChunks -> Parquet per
    window (results and dead letter). The step labels are stable, so a Dataflow job can be
    updated in place (``--update``) by a later bertbeam."""
    source, window = prepared.source, FixedWindows(spec.window_seconds)
    tombstone = spec.tombstone_column
    if source.kind == "watch":
        reader = WatchDocuments(source.location, job.columns, interval=spec.watch_interval,
                                tombstone=tombstone)
    else:
        reader = ReadPubSubDocuments(source.location, job.columns, tombstone=tombstone)
    read = p | "ReadDocuments" >> reader
    docs = read["documents"] | "Window" >> beam.WindowInto(window)
    first = docs | "DropRepeatedIds" >> DropRepeatedIds()
    kept = first["documents"]
    if tombstone is not None:
        split = kept | "SplitDeletions" >> SplitDeletions()
        kept = split["documents"]
        _delete(split[DELETED], job, prepared)
    chunks = kept | "ChunkDocuments" >> ChunkDocuments(
        job.run.tokenize.chunk_size, max_wait=job.run.batch.max_wait)
    # InferChunks' stages one by one, and one writer per dead-letter output rather than a
    # Flatten: the local runner (FnApiRunner) runs a Flatten's read only after every stage
    # that feeds it has finished, which a watch never does; each writer here is fused into
    # the stage that makes its dead letters.
    task, run = job.task, InferChunks(job.task, run=job.run).run
    tokenized = chunks | "Tokenize" >> Tokenize(task, run=run)
    finished = (
        tokenized["windows"]
        | "BatchByTokens" >> BatchByTokens(run.batch, engine=engine_spec(task, run))
        | "RunModel" >> RunModel(task, run=run)
        | "Postprocess" >> Postprocess(task, run=run, schema=prepared.schema)
    )
    results = finished["results"]
    dead = {"Read": read[DEAD_LETTER] | "WindowDeadLetter" >> beam.WindowInto(window),
            "Duplicate": first[DEAD_LETTER], "Tokenize": tokenized[DEAD_LETTER],
            "Infer": finished[DEAD_LETTER]}
    if job.sink is not None:
        # The batch job's sink code, bundle by bundle: rows the collection cannot take are
        # dead letters; the others are upserted under deterministic point ids, so a bundle
        # that runs again writes the same points.
        fitted = results | "FitSink" >> FitSink(job.sink, prepared.sink_text)
        results, dead["Sink"] = fitted["results"], fitted[DEAD_LETTER]
        results | "SyncSink" >> beam.ParDo(SyncFn(job.sink, prepared.sink_text))
    results | "WriteResults" >> WriteWindowFiles(job.output, schema=prepared.schema,
                                                 record_latency=True)
    for stage, letters in dead.items():
        letters | f"Write{stage}DeadLetter" >> WriteWindowFiles(
            job.output, schema=DEAD_LETTER_SCHEMA, prefix="dead_letter")
    if stop_flag is not None:
        # this part of Beam only where it is used (start-up)
        from apache_beam.transforms.periodicsequence import PeriodicImpulse

        (p | "StopTicks" >> PeriodicImpulse(fire_interval=0.5)
         | "StopWhenAsked" >> beam.ParDo(_StopWhenAskedFn(stop_flag)))


DELETED_SCHEMA = pa.schema([pa.field("id", pa.string(), nullable=False)])
"""The columns of the ``deleted-*`` files: the ids a tombstone deleted, per window."""


def _delete(ids: beam.PCollection, job: Job, prepared: Prepared) -> None:
    """The deletions: each id written to its window's ``deleted-*`` file and, with a sink,
    deleted from the collection (by its deterministic point id, so a retried bundle deletes
    the same points)."""
    if job.sink is not None:
        ids | "SyncDeletions" >> beam.ParDo(SyncFn(job.sink, prepared.sink_text))
    (ids
     | "DeletedRows" >> beam.Map(lambda doc_id: {"id": doc_id})
     | "WriteDeleted" >> WriteWindowFiles(job.output, schema=DELETED_SCHEMA, prefix=DELETED))


def accounted_rows(output: str) -> int:
    """Rows written so far into the results, dead-letter and deleted files of ``output``."""
    return sum(count_window_rows(output, prefix) for prefix in ("results", "dead_letter", DELETED))


def is_streaming(job: Job, options: PipelineOptions) -> bool:
    """Whether ``job`` runs as a streaming job (Beam's ``--streaming``); a ``watch:`` or
    ``pubsub:`` input without it is refused in one line."""
    if options.view_as(StandardOptions).streaming:
        return True
    if job.input.startswith((WATCH, PUBSUB)):
        raise ValueError(f"Input {job.input!r} is unbounded: add --streaming.")
    return False


def execute(job: Job, options: PipelineOptions, spec: StreamSpec) -> dict | None:
    """Runs the streaming job. On a remote runner (Dataflow) it submits the job and returns
    (drain it to stop: in-flight windows are written). On the local runner it runs until
    Ctrl-C / SIGTERM, drains the files that had landed, writes ``_SUMMARY.json`` and returns
    the summary."""
    options.view_as(StandardOptions).streaming = True
    prepared = preflight(job, spec, options)
    fs, root = url_to_fs(job.output)
    fs.makedirs(root, exist_ok=True)
    write_json_atomically(job.output, STREAM_FILE, _job_record(job, spec))
    if not is_local(options):
        p = beam.Pipeline(runner=resolve_runner(options), options=options)
        build(p, job, prepared, spec)
        result = p.run()
        print(f"bertbeam: streaming job submitted ({type(result).__name__}); drain it to stop.")
        return None
    if prepared.source.kind == "pubsub":
        raise ValueError("Reading Pub/Sub needs a streaming runner that reaches it "
                         "(--runner DataflowRunner); locally, use --input 'watch:GLOB'.")
    return _run_locally(job, options, spec, prepared)


def _run_locally(job: Job, options: PipelineOptions, spec: StreamSpec, prepared: Prepared) -> dict:
    started = time.time()
    flag = os.path.join(tempfile.mkdtemp(prefix="bertbeam-stop-"), "stop")
    p = beam.Pipeline(runner=resolve_runner(options), options=options)
    build(p, job, prepared, spec, stop_flag=flag)
    failure: list[BaseException] = []

    def run() -> None:
        try:
            p.run().wait_until_finish()
        except BaseException as exc:  # noqa: BLE001 - reported by the launcher
            failure.append(exc)

    stop = threading.Event()
    live = LiveStream(prepared.source.location, label=f"bertbeam {job.task.name}",
                      every=spec.progress_seconds, quiet=bool(job.control.quiet))

    def _ask_stop(signum: int, frame: object) -> None:
        if stop.is_set():  # asked twice: stop now, whatever is in flight
            logging.getLogger("apache_beam").setLevel(logging.CRITICAL + 1)
            open(flag, "w").close()
            raise KeyboardInterrupt()
        stop.set()

    previous = {s: signal.signal(s, _ask_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    thread = threading.Thread(target=run, name="bertbeam-streaming", daemon=True)
    try:
        with live:
            thread.start()
            print(f"bertbeam {job.task.name}: watching {prepared.source.location} (windows of "
                  f"{spec.window_seconds} s); Ctrl-C stops once the files landed are written.",
                  file=sys.stderr, flush=True)
            while not stop.wait(0.2):
                if not thread.is_alive():
                    break
            if failure or not thread.is_alive():
                _fail(failure)
            files, expected = live.landed.count()
            print(f"bertbeam: stopping: writing the rest of the {files} file(s) that have "
                  "landed (Ctrl-C again stops now).", file=sys.stderr, flush=True)
            deadline = time.time() + spec.drain_timeout
            accounted = 0
            while time.time() < deadline and thread.is_alive():
                accounted = accounted_rows(job.output)
                if accounted >= expected:
                    break
                time.sleep(0.2)
            if failure:
                _fail(failure)
            # The stop is a failure to the runner, which logs it with a traceback: not the
            # user's.
            beam_log = logging.getLogger("apache_beam")
            level, beam_log.level = beam_log.level, logging.CRITICAL + 1
            open(flag, "w").close()
            thread.join(timeout=30)
            beam_log.setLevel(level)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    summary = _summary(job, prepared, spec, files=files, read=expected,
                       wall=time.time() - started)
    summary.update(live.summary())
    write_json_atomically(job.output, "_SUMMARY.json", summary)
    if not summary["accounted"]:
        raise AccountingError(
            f"{expected - accounted} of the {expected} rows of the {files} file(s) that had "
            f"landed were not written within {spec.drain_timeout:.0f} s of the stop; "
            "they are not in the output.")
    deleted = f", {summary['deleted']} deleted" if spec.tombstone_column else ""
    print(f"bertbeam {job.task.name}: stopped; {summary['written']} written, "
          f"{summary['dead_lettered']} dead-lettered{deleted} of {expected} rows in {files} "
          f"file(s), {summary['windows']} window(s), {summary['wall_seconds']:.1f} s.")
    return summary


def _fail(failure: list[BaseException]) -> None:
    """The pipeline failed (a machine fault, a worker error): one line, exit status 1."""
    line = "it ended on its own"
    if failure:
        text = str(failure[0]).strip().splitlines()
        line = (text[-1] if text else type(failure[0]).__name__)[:300]
    print(f"bertbeam: error: the streaming run failed: {line}", file=sys.stderr)
    raise SystemExit(1)


def _job_record(job: Job, spec: StreamSpec) -> dict:
    """What ``_STREAM.json`` says of the job, from its launch: what a report of its windows
    reads while it runs."""
    return {
        "task": job.task.name,
        "model": job.run.model.uri,
        "mode": "streaming",
        "input": job.input,
        "window_seconds": spec.window_seconds,
        "tombstone_column": spec.tombstone_column,
        "started_at": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "options": getattr(job.control, "options", None),
    }


def _summary(job: Job, prepared: Prepared, spec: StreamSpec, *, files: int, read: int,
             wall: float) -> dict:
    written = count_window_rows(job.output)
    dead = count_window_rows(job.output, "dead_letter")
    deleted = count_window_rows(job.output, DELETED)
    windows = {url.rsplit("/", 1)[-1].split("-", 2)[1]
               for prefix in ("results", "dead_letter", DELETED)
               for url in window_files(job.output, prefix)}
    return {
        **_job_record(job, spec),
        "started_at": dt.datetime.fromtimestamp(time.time() - wall, dt.UTC).strftime(
            "%Y-%m-%dT%H:%M:%SZ"),
        "files": files,
        "read": read,
        "written": written,
        "computed": written,
        "carried_forward": 0,
        "dead_lettered": dead,
        "deleted": deleted,
        "accounted": written + dead + deleted >= read,
        "windows": len(windows),
        "wall_seconds": round(wall, 3),
        "docs_per_second": round(written / wall, 2) if wall > 0 else None,
    }
