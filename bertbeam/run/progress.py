"""Live progress of a local job on stderr: a progress bar on a terminal, a plain line every few
seconds otherwise, nothing with ``--quiet``.

The counts come from the workers through :mod:`bertbeam.core.tally` (Beam's local runner reports
counters only at the end). Done = computed + carried forward + dead-lettered, out of the
rows the input files' footers hold. Read = rows read so far: documents are done only once
their batch has run, and the batcher first gathers up to ``BatchSpec.buffer_size`` windows,
so for the first seconds of a run the read count is the one that moves. Every poll also
appends a throughput sample that the summary keeps for the report.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any, Literal, TextIO

from tqdm import tqdm

from bertbeam.core import metrics, tally

Mode = Literal["bar", "lines", "off"]
LINE_SECONDS = 5.0
BAR_SECONDS = 0.5
MAX_SAMPLES = 120
_SAMPLES = "samples.json"


def choose_mode(stream: TextIO, *, quiet: bool, local: bool) -> Mode:
    """``off`` when quiet or on a remote runner (its job page shows progress), ``bar`` on a
    terminal, ``lines`` otherwise."""
    if quiet or not local:
        return "off"
    isatty = getattr(stream, "isatty", None)
    return "bar" if isatty is not None and isatty() else "lines"


def done_count(counts: dict[str, int]) -> int:
    """Documents finished: computed, carried forward or dead-lettered."""
    return sum(counts.get(name, 0) for name in (
        metrics.WRITTEN, metrics.CARRIED_FORWARD, metrics.DEAD_LETTERED))


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else (f"{minutes}m{secs:02d}s" if minutes else f"{secs}s")


def read_count(counts: dict[str, int]) -> int | None:
    """Documents read so far (never fewer than done), or ``None`` when no worker counts reads."""
    if metrics.READ not in counts:
        return None
    return max(counts[metrics.READ], done_count(counts))


def eta_rate(samples: list[list[float]], done: int, elapsed: float) -> float:
    """Documents done per second since the first were done (0 until a later sample): the
    seconds before, while the batcher gathers its first windows, would make an ETA of the
    average since the start far too long (19 minutes at 20 of 2,338 documents done, for a
    run that ended 19 s later)."""
    first = next((s for s in samples if s[1] > 0), None)
    if first is None or elapsed <= first[0] or done <= first[1]:
        return 0.0
    return (done - first[1]) / (elapsed - first[0])


def summary_fields(samples: list[list[float]]) -> dict[str, list]:
    """The samples as ``_SUMMARY.json`` keeps them: ``throughput`` (``[seconds, done, real
    tokens, dead-lettered]``, the schema-2 layout) and, when the workers counted reads,
    ``throughput_read`` (documents read at each sample, ``None`` where unknown)."""
    fields: dict[str, list] = {"throughput": [list(s[:4]) for s in samples]}
    reads = [s[4] if len(s) > 4 else None for s in samples]
    if any(r is not None for r in reads):
        fields["throughput_read"] = reads
    return fields


def read_samples(directory: str) -> list[list[float]]:
    """The throughput samples ``[seconds, documents done, real tokens, dead-lettered,
    documents read]`` of the run whose tally directory is ``directory`` (at most
    :data:`MAX_SAMPLES`; samples of bertbeam 0.2.0 and earlier have no read count)."""
    try:
        return json.loads((Path(directory) / _SAMPLES).read_text())
    except (OSError, ValueError):
        return []


def thin(samples: list[list[float]], limit: int = MAX_SAMPLES) -> list[list[float]]:
    """At most ``limit`` samples, evenly spread, the last one kept."""
    if len(samples) <= limit:
        return samples
    step = len(samples) / (limit - 1)
    return [samples[int(i * step)] for i in range(limit - 1)] + [samples[-1]]


class LiveProgress:
    """Context manager around a local run: names a fresh tally directory for the workers
    (``$BERTBEAM_TALLY_DIR``), polls it and renders progress on ``stream``.

    Example::

        with LiveProgress(total=20000, mode="lines", label="bertbeam embed") as live:
            pipeline.run().wait_until_finish()
        live.samples  # [[seconds, done, tokens, dead, read], ...]
    """

    def __init__(self, total: int, *, mode: Mode, label: str, stream: TextIO | None = None):
        self.total = total
        self.mode = mode
        self.label = label
        self.stream = stream or sys.stderr
        self.directory: str | None = None
        self.samples: list[list[float]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._saved_env: str | None = None
        self._bar: Any = None
        self._started = 0.0
        self._printed = -1  # documents done at the last line printed

    def __enter__(self) -> LiveProgress:
        self.directory, self._saved_env = tally.open_run()
        self._started = time.monotonic()
        if self.mode == "bar":
            # A terminal that reports no width (0 columns) would get an empty bar.
            width = shutil.get_terminal_size((100, 24)).columns or 100
            self._bar = tqdm(total=self.total, unit="docs", desc=self.label, file=self.stream,
                             ncols=width, mininterval=0, smoothing=0.1)
        self._thread = threading.Thread(target=self._poll, name="bertbeam-progress", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sample(final=exc[0] is None)
        if self._bar is not None:
            self._bar.close()
        if self.directory is not None:
            tally.close_run(self.directory, self._saved_env)

    def _poll(self) -> None:
        interval = BAR_SECONDS if self.mode == "bar" else LINE_SECONDS
        self.sample()
        while not self._stop.wait(interval):
            self.sample()

    def sample(self, final: bool = False) -> None:
        """Reads the totals, keeps a sample, renders it."""
        if self.directory is None:
            return
        counts = tally.read_totals(self.directory)
        if final and done_count(counts) < self.total:
            counts = tally.settled_totals(self.directory)  # wait for the workers' last flush
        elapsed = time.monotonic() - self._started
        done = done_count(counts)
        tokens = counts.get(metrics.REAL_TOKENS, 0)
        dead = counts.get(metrics.DEAD_LETTERED, 0)
        read = read_count(counts)
        self.samples = thin([*self.samples, [round(elapsed, 2), done, tokens, dead, read]])
        with contextlib.suppress(OSError):
            (Path(self.directory) / _SAMPLES).write_text(json.dumps(self.samples))
        if self.mode == "bar":
            self._bar.update(done - self._bar.n)
            read_part = f"{read:,} read, " if read is not None else ""
            self._bar.set_postfix_str(f"{read_part}{tokens / max(elapsed, 1e-9):,.0f} tokens/s, "
                                      f"{dead} dead-lettered", refresh=True)
        elif self.mode == "lines" and not (final and done == self._printed == self.total):
            print(self.line(done, tokens, dead, elapsed, read), file=self.stream, flush=True)
            self._printed = done

    def line(self, done: int, tokens: int, dead: int, elapsed: float, read: int | None = None) -> str:
        """``bertbeam embed: 1200/20000 documents (6.0%), 5,296 read, 40.1 docs/s, 2,600
        tokens/s, 0 dead-lettered, ETA 7m00s`` (no read count when ``read`` is ``None``)."""
        rate = done / elapsed if elapsed > 0 else 0.0
        pace = eta_rate(self.samples, done, elapsed)
        eta = format_duration((self.total - done) / pace) if pace > 0 else "unknown"
        share = f" ({100 * done / self.total:.1f}%)" if self.total else ""
        read_part = f", {read:,} read" if read is not None else ""
        return (f"{self.label}: {done}/{self.total} documents{share}{read_part}, {rate:.1f} docs/s, "
                f"{tokens / elapsed if elapsed > 0 else 0:,.0f} tokens/s, {dead} dead-lettered, "
                f"ETA {eta}")


REMOTE_SECONDS = 30.0


class RemoteProgress:
    """Progress of a job on a remote runner, from the runner's own metrics: polls
    ``PipelineResult.metrics()`` every ``interval`` seconds while the job runs and prints a
    line (documents done out of ``total``, dead-lettered); where the runner serves no
    metrics before the job ends, says so once.

    Example::

        result = pipeline.run()
        with RemoteProgress(result, total=20000, label="bertbeam embed"):
            result.wait_until_finish()
    """

    def __init__(self, result: Any, total: int | None, *, label: str, quiet: bool = False,
                 stream: TextIO | None = None, interval: float = REMOTE_SECONDS):
        self.result, self.total, self.label, self.quiet = result, total, label, quiet
        self.stream = stream or sys.stderr
        self.interval = interval
        self.lines: list[str] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = 0.0

    def __enter__(self) -> RemoteProgress:
        self._started = time.monotonic()
        if not self.quiet:
            self._thread = threading.Thread(target=self._poll, name="bertbeam-remote-progress",
                                            daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _poll(self) -> None:
        while not self._stop.wait(self.interval):
            if not self.sample():
                return

    def sample(self) -> bool:
        """Prints one line from the runner's counters; ``False`` when it serves none (said
        once), so polling stops."""
        try:
            counts = metrics.query_counters(self.result)
        except Exception as exc:  # NotImplementedError, or the service's own error
            job_id = getattr(self.result, "job_id", None)
            where = f" (job {job_id()})" if callable(job_id) else ""
            self._print(f"{self.label}: no progress until the job ends: the runner serves no "
                        f"metrics while it runs ({type(exc).__name__}); follow the job in the "
                        f"runner's own UI{where}.")
            return False
        done, dead = done_count(counts), counts.get(metrics.DEAD_LETTERED, 0)
        elapsed = time.monotonic() - self._started
        total = f"/{self.total}" if self.total else ""
        share = f" ({100 * done / self.total:.1f}%)" if self.total else ""
        self._print(f"{self.label}: {done}{total} documents{share} after "
                    f"{format_duration(elapsed)}, {dead} dead-lettered (the runner's counters, "
                    "which lag the workers)")
        return True

    def _print(self, line: str) -> None:
        self.lines.append(line)
        print(line, file=self.stream, flush=True)
