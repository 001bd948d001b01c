"""A side channel for counters while a local job runs.

Beam's local runner reports counters only when the pipeline has finished, so live progress
needs another way out of the workers, which are threads of the launcher or, with
``--direct_running_mode=multi_processing``, processes it starts. The launcher names a fresh
local directory in ``$BERTBEAM_TALLY_DIR``, which its workers inherit; every
:func:`bertbeam.core.metrics.inc` in a process with that variable also adds to the process's
:class:`Tally`, and a daemon thread rewrites the process's totals to one small JSON file in
that directory (atomically, every :data:`FLUSH_SECONDS` while they change). The launcher sums
the files (:func:`read_totals`). Totals count attempted work: a bundle that fails and is
retried counts twice here, though never in the committed Beam counters.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from pathlib import Path

ENV = "BERTBEAM_TALLY_DIR"
FLUSH_SECONDS = 0.5
_COUNTS = "counts"


class Tally:
    """This process's counter totals for one run, flushed to ``DIRECTORY/counts/``."""

    def __init__(self, directory: str):
        self.directory = directory
        self.pid = os.getpid()
        self._counts: dict[str, int] = defaultdict(int)
        self._lock = threading.Lock()
        self._dirty = False
        folder = Path(directory) / _COUNTS
        folder.mkdir(parents=True, exist_ok=True)
        self._path = folder / f"{socket.gethostname()}-{self.pid}-{uuid.uuid4().hex[:8]}.json"
        threading.Thread(target=self._flush_while_running, name="bertbeam-tally",
                         daemon=True).start()

    def add(self, name: str, n: int) -> None:
        with self._lock:
            self._counts[name] += n
            self._dirty = True

    def flush(self) -> bool:
        """Writes the totals now; ``False`` once the run's directory is gone."""
        with self._lock:
            counts, self._dirty = dict(self._counts), False
        temp = self._path.with_name(f".{self._path.name}.tmp")
        try:
            temp.write_text(json.dumps(counts))
            os.replace(temp, self._path)
        except OSError:
            return False
        return True

    def _flush_while_running(self) -> None:
        while True:
            time.sleep(FLUSH_SECONDS)
            if self._dirty and not self.flush():
                return


_current: Tally | None = None
_current_lock = threading.Lock()


def open_run() -> tuple[str, str | None]:
    """A fresh local directory for a run's counts, named in ``$BERTBEAM_TALLY_DIR`` for the
    workers the launcher starts next; returns it and the variable's earlier value, for
    :func:`close_run`."""
    directory = tempfile.mkdtemp(prefix="bertbeam-tally-")
    earlier = os.environ.get(ENV)
    os.environ[ENV] = directory
    return directory, earlier


def close_run(directory: str, earlier: str | None) -> None:
    """Gives ``$BERTBEAM_TALLY_DIR`` its earlier value back and removes the run's directory."""
    if earlier is None:
        os.environ.pop(ENV, None)
    else:
        os.environ[ENV] = earlier
    shutil.rmtree(directory, ignore_errors=True)


def local_tally() -> Tally | None:
    """This process's Tally for the run named by ``$BERTBEAM_TALLY_DIR``, or ``None``."""
    global _current
    directory = os.environ.get(ENV)
    if not directory:
        return None
    tally = _current
    if tally is None or tally.directory != directory or tally.pid != os.getpid():
        with _current_lock:
            tally = _current
            if tally is None or tally.directory != directory or tally.pid != os.getpid():
                tally = _current = Tally(directory)
    return tally


def read_totals(directory: str) -> dict[str, int]:
    """The sum of every process's flushed totals (this process's flushed first)."""
    tally = _current
    if tally is not None and tally.directory == directory and tally.pid == os.getpid():
        tally.flush()
    totals: dict[str, int] = defaultdict(int)
    for path in (Path(directory) / _COUNTS).glob("*.json"):
        try:
            counts = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # replaced while being read: the next poll gets it
        for name, n in counts.items():
            totals[name] += int(n)
    return dict(totals)


def settled_totals(directory: str, timeout: float = 30.0) -> dict[str, int]:
    """Totals once every process has flushed: this process's tally is flushed at once, and
    the files are read until two reads :data:`FLUSH_SECONDS` x 3 apart agree. Call it when
    no work is left in flight (the last stage of a pipeline)."""
    deadline = time.monotonic() + timeout
    totals = read_totals(directory)
    while time.monotonic() < deadline:
        time.sleep(FLUSH_SECONDS * 3)
        again = read_totals(directory)
        if again == totals:
            break
        totals = again
    return totals
