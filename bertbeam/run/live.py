"""Live metrics of a local streaming run: documents per second, end-to-end latency and
backlog, a line on stderr every few seconds, and their history for the summary.

The workers count what they write through :mod:`bertbeam.core.tally` (rows per output, and
the latency histogram of :mod:`bertbeam.beam.latency`); the launcher reads the totals, and
the difference between two readings gives the rate and the latency quantiles of that stretch
of time. The backlog is the rows of the files that have landed (their footers, read once per
file) not yet written anywhere: results, dead letter or deletions. On Dataflow the same
figures are the job's counters ``rows_written_*`` and its distribution ``latency_ms``.

Example::

    with LiveStream("watch:in/*.parquet", label="bertbeam embed", every=5) as live:
        ...  # run the pipeline
    live.summary()  # {"latency_seconds": {...}, "samples": [...]}
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from typing import Any, TextIO

import pyarrow.parquet as pq

from bertbeam.beam import latency
from bertbeam.beam.window_files import rows_counter
from bertbeam.core import tally
from bertbeam.filesystems import expand_glob, url_to_fs
from bertbeam.run.progress import MAX_SAMPLES, thin

OUTPUTS = ("results", "dead_letter", "deleted")


class LandedRows:
    """Rows in the files matching a glob now, each file's footer read once (a file that
    has landed does not change; one whose footer does not read counts one row: its one dead
    letter)."""

    def __init__(self, pattern: str):
        self.pattern = pattern
        self._rows: dict[str, int] = {}
        self._lock = threading.Lock()

    def count(self) -> tuple[int, int]:
        """(files, rows) matching now."""
        with self._lock:
            for url in expand_glob(self.pattern):
                if url not in self._rows:
                    self._rows[url] = _rows_of(url)
            return len(self._rows), sum(self._rows.values())


def _rows_of(url: str) -> int:
    fs, path = url_to_fs(url)
    try:
        with fs.open(path, "rb") as f:
            return pq.ParquetFile(f).metadata.num_rows
    except Exception:  # noqa: BLE001 - an unreadable file is one dead-lettered unit
        return 1


def _fmt(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return "over 1.5 h" if seconds == float("inf") else f"{seconds:.2g} s"


class LiveStream:
    """Context manager around a local streaming run: names a fresh tally directory for the
    workers, polls it every ``every`` seconds, prints a line on ``stream`` (none with
    ``quiet``) and keeps the samples.

    A sample is ``[seconds since start, results, dead letters, deletions, backlog rows,
    p50, p99]`` (the quantiles over the stretch since the previous sample, ``None`` when no
    row was written in it).
    """

    def __init__(self, pattern: str | None, *, label: str, every: float = 5.0,
                 quiet: bool = False, stream: TextIO | None = None):
        self.label = label
        self.every = every
        self.quiet = quiet
        self.stream = stream or sys.stderr
        self.samples: list[list[Any]] = []
        self.directory: str | None = None
        self.landed = LandedRows(pattern) if pattern else None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._saved_env: str | None = None
        self._started = 0.0
        self._last: tuple[float, dict[str, int]] | None = None

    def __enter__(self) -> LiveStream:
        self.directory, self._saved_env = tally.open_run()
        self._started = time.monotonic()
        self._last = (self._started, {})
        self._thread = threading.Thread(target=self._poll, name="bertbeam-live", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        with contextlib.suppress(OSError):
            self.sample(final=True)
        if self.directory:
            tally.close_run(self.directory, self._saved_env)

    def _poll(self) -> None:
        while not self._stop.wait(self.every):
            with contextlib.suppress(OSError):
                self.sample()

    def totals(self) -> dict[str, int]:
        return tally.read_totals(self.directory) if self.directory else {}

    def sample(self, final: bool = False) -> list[Any]:
        """Reads the totals, appends a sample and prints its line (unless ``quiet``)."""
        now = time.monotonic()
        counts = self.totals()
        written = [counts.get(rows_counter(o), 0) for o in OUTPUTS]
        backlog = None
        if self.landed is not None:
            _, landed = self.landed.count()
            backlog = max(0, landed - sum(written))
        since, before = self._last or (self._started, {})
        stretch = [a - b for a, b in zip(latency.histogram(counts), latency.histogram(before),
                                         strict=True)]
        p50, p99 = latency.quantile(stretch, 0.5), latency.quantile(stretch, 0.99)
        rate = (written[0] - before.get(rows_counter("results"), 0)) / max(now - since, 1e-9)
        sample = [round(now - self._started, 2), *written, backlog, p50, p99]
        self.samples.append(sample)
        self._last = (now, counts)
        if not self.quiet and not final:
            print(f"{self.label}: {written[0]:,} written, {written[1]:,} dead-lettered, "
                  f"{written[2]:,} deleted; {rate:.1f} docs/s; latency p50 {_fmt(p50)}, "
                  f"p99 {_fmt(p99)} (last {now - since:.0f} s)"
                  + ("" if backlog is None else f"; backlog {backlog:,} rows"),
                  file=self.stream, flush=True)
        return sample

    def summary(self) -> dict[str, Any]:
        """The run's latency quantiles (every row written, as of the last sample: the one
        taken on leaving the context) and its samples, for _SUMMARY.json."""
        counts = latency.histogram(self._last[1] if self._last else {})
        quantiles = {f"p{round(q * 100)}": latency.quantile(counts, q) for q in (0.5, 0.9, 0.99)}
        return {
            "latency_seconds": {k: (None if v is None else (round(v, 3) if v != float("inf")
                                                            else "inf"))
                                for k, v in quantiles.items()},
            "latency_rows": sum(counts),
            "samples": thin(self.samples, MAX_SAMPLES),
        }
