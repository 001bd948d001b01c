"""The end of a run: ``_SUMMARY.json`` and the report, once the outputs are committed.

One :class:`FinishRun` object does it wherever it runs: on the launcher after the pipeline
has finished (counters from Beam), or, with ``--no-wait``, inside the pipeline as its last
stage (:class:`WriteSummary`, counters from the local tally, when there is one), so that
the launcher can exit after ``run()``. Either way the summary is the same.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import apache_beam as beam

from bertbeam.beam.incremental import TEXT_FP, changes
from bertbeam.beam.sinks import SinkMismatchError, reconcile
from bertbeam.beam.writing import read_table
from bertbeam.core.memory import collector_paused
from bertbeam.core.metrics import COUNTERS
from bertbeam.core.tally import settled_totals
from bertbeam.run import runinfo, summary
from bertbeam.run.progress import read_samples, summary_fields

_LOG = logging.getLogger("bertbeam")


EXAMPLE_IDS = 5
"""Example ids the summary keeps for each kind of change since the previous run."""


class AccountingError(RuntimeError):
    """Some input rows are neither in the results nor in the dead letter (or the ``--sink``
    collection does not hold exactly the results)."""


class DeadLetterLimitError(RuntimeError):
    """More rows were dead-lettered than ``--max-dead-letter-fraction`` / ``--max-dead-letters``
    allow (the outputs and the summary are written all the same)."""


@dataclass(frozen=True)
class FinishRun:
    """Writes the summary (and the report) of one run; plain data, so it travels to workers."""

    input: str
    output: str
    task: str
    model: str
    run_id: str
    meta: dict[str, Any]
    pipeline_started: float
    process_started: float
    report: bool = True
    tally_dir: str | None = None
    previous_output: str | None = None
    read: int | None = None  # input units from the footers, counted once on the launcher
    max_dead_letter_fraction: float | None = None
    max_dead_letters: int | None = None
    previous_files: tuple[str, ...] = ()  # the earlier runs' results files the join read
    joined: bool = False  # whether the run joined the corpus with earlier runs
    sink: Any = None  # the --sink collection, read back after the write

    def __call__(self, counters: dict[str, int] | None = None,
                 samples: list[list[float]] | None = None) -> dict[str, Any]:
        """Builds and writes ``_SUMMARY.json`` (and the report); returns the summary.

        ``counters`` default to the tally's settled totals (the pipeline's last stage);
        ``samples`` to the tally's throughput samples.
        """
        tally_dir = self.tally_dir if self.tally_dir and os.path.isdir(self.tally_dir) else None
        if counters is None:
            # Unknown without a tally (a remote runner): None in the summary, not 0.
            counters = {**dict.fromkeys(COUNTERS, 0), **settled_totals(tally_dir)} if tally_dir else {}
        if samples is None:
            samples = read_samples(tally_dir) if tally_dir else []
        meta = runinfo.finished(self.meta, pipeline_started=self.pipeline_started,
                                process_started=self.process_started)
        meta.update(summary_fields(samples))
        report = summary.build_summary(
            counters, input_pattern=self.input, output_dir=self.output,
            wall_seconds=meta["pipeline_seconds"], model=self.model, task=self.task,
            run_id=self.run_id, metadata=meta, read=self.read,
            max_dead_letter_fraction=self.max_dead_letter_fraction,
            max_dead_letters=self.max_dead_letters)
        report.update(self._since_previous())
        mismatch = None
        if self.sink is not None:
            report["sink"], mismatch = self._reconcile_sink()
        summary.write_summary(self.output, report)
        if self.report:
            self._write_report()
        if mismatch is not None:
            raise AccountingError(mismatch)
        return report

    def _since_previous(self) -> dict[str, Any]:
        """``removed`` and ``since_previous`` (added / changed / unchanged / removed: counts
        and a few example ids) when the run joined earlier runs; ``removed`` is ``None``
        otherwise."""
        if not self.joined:
            return {"removed": None}

        found = changes(self.previous_files, self.output)
        return {"removed": len(found["removed"]),
                "since_previous": {key: {"count": len(ids), "examples": ids[:EXAMPLE_IDS]}
                                   for key, ids in found.items()}}

    def _reconcile_sink(self) -> tuple[dict[str, Any], str | None]:
        sink = self.sink
        where = {"kind": sink.kind, "location": getattr(sink, "uri", None) or sink.location,
                 "collection": sink.collection}
        table = read_table(self.output, "results", ["id", TEXT_FP])
        expected = (dict(zip(table.column("id").to_pylist(), table.column(TEXT_FP).to_pylist(),
                             strict=True)) if table.num_rows else {})
        try:
            return {**where, **reconcile(sink, expected)}, None
        except SinkMismatchError as exc:
            return {**where, "points": None, "leftovers_deleted": None, "verified": False}, str(exc)

    def _write_report(self) -> None:
        try:
            # not loaded by `import bertbeam`: on use (start-up)
            from bertbeam.run.report import write_report
        except ImportError as exc:
            _LOG.warning("No report: %s (pip install matplotlib).", exc)
            return

        with collector_paused():  # matplotlib's imports (memory.py)
            write_report(self.output, previous=self.previous_output)


def check_accounting(report: dict[str, Any]) -> None:
    """Raises AccountingError unless read = computed + carried_forward + dead_lettered."""
    if not report["accounted"]:
        raise AccountingError(
            f"{report['read']} rows read but {report['computed']} computed + "
            f"{report['carried_forward']} carried forward + {report['dead_lettered']} "
            "dead-lettered: rows are missing or duplicated.")


def check_dead_letters(report: dict[str, Any]) -> None:
    """Raises DeadLetterLimitError when the summary's verdict is ``too_many_dead_letters``."""
    line = summary.verdict_line(report)
    if line is not None:
        raise DeadLetterLimitError(line)


def _finish_in_pipeline(_: object, files: list[str], finish: FinishRun) -> str:
    report = finish()
    if finish.tally_dir is None:
        check_accounting(report)  # fails a remote job: nobody waits for an exit status
        check_dead_letters(report)
    return f"{finish.output.rstrip('/')}/{summary.SUMMARY_FILE}"


class WriteSummary(beam.PTransform):
    """(final results files, final dead-letter files) -> the ``_SUMMARY.json`` URL: the last
    stage of a ``--no-wait`` job, run once both writes have committed their files.

    Example::

        (written, dead_written) | WriteSummary(finish)
    """

    def __init__(self, finish: FinishRun):
        super().__init__()
        self._finish = finish

    def expand(self, written: tuple[beam.PCollection, ...]) -> beam.PCollection:
        files = written | "CommittedFiles" >> beam.Flatten()
        return (
            files.pipeline
            | "Once" >> beam.Create([None])
            | "Finish" >> beam.Map(_finish_in_pipeline, files=beam.pvalue.AsList(files),
                                   finish=self._finish)
        )
