"""How a run ends when it cannot finish: Ctrl-C and SIGTERM become one line and exit status
130 / 143; a full disk or a refused write becomes one line and exit status 1."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator

from apache_beam.runners.portability import local_job_service

INTERRUPTED = "bertbeam: interrupted; rerun to resume"
_ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}
_ENVIRONMENT_TEXTS = ("No space left on device", "Disk quota exceeded", "Read-only file system",
                      "Permission denied")


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C's KeyboardInterrupt so that the same cleanup runs."""


_received: list[int] = []


@contextlib.contextmanager
def interrupts() -> Iterator[None]:
    """Within the block, SIGINT raises KeyboardInterrupt and SIGTERM :class:`Terminated`, and
    either is remembered (:func:`interrupted_by`): Beam may wrap the exception raised inside
    a step into its own error (main thread only).

    A full disk or a refused write is logged by the runner with a traceback; those error
    logs are dropped within the block, as the launcher reports the failure in one line.

    Ctrl-C signals the whole process group, and each of Beam's local worker processes would
    print its own traceback; they are started in a session of their own instead, so the
    launcher alone sees Ctrl-C and stops them as it ends its run.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _raise(signum: int, frame: object) -> None:
        _received.append(signum)
        # The runner logs the failure of the step it was in, with a traceback, and its
        # worker threads report their workers' exit: the user asked for the stop, the one
        # line of :func:`interrupted` is what they get.
        logging.disable(logging.CRITICAL)
        threading.excepthook = lambda args: None
        raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()

    _received.clear()
    previous = {sig: signal.signal(sig, _raise) for sig in (signal.SIGINT, signal.SIGTERM)}
    hook, beams_subprocess = threading.excepthook, local_job_service.subprocess
    workers = _OwnSession()
    local_job_service.subprocess = workers
    quiet = _QuietEnvironmentErrors()
    handlers = list(logging.getLogger().handlers)
    for handler in handlers:
        handler.addFilter(quiet)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(quiet)
        local_job_service.subprocess = beams_subprocess
        if _received:
            workers.kill()  # before they report their broken connections
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if not _received:
            logging.disable(logging.NOTSET)
            threading.excepthook = hook


class _QuietEnvironmentErrors(logging.Filter):
    """Drops the error logs (with their tracebacks) of a full disk or a refused write while
    a run is under way: the runner logs the failing step, then the run fails with that error,
    and the launcher says it in one line (:func:`environment_error`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR:
            return True
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and environment_error(exc) is not None:
            return False
        message = record.getMessage()
        return not any(marker in message for marker in _ENVIRONMENT_TEXTS)


class _OwnSession:
    """The ``subprocess`` module as Beam's local job service sees it: workers start in a
    session of their own (Ctrl-C at the terminal does not reach them)."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen] = []

    def __getattr__(self, name: str) -> object:
        return getattr(subprocess, name)

    def Popen(self, *args: object, **kwargs: object) -> subprocess.Popen:  # noqa: N802 - the module's name
        process = subprocess.Popen(*args, start_new_session=True, **kwargs)
        self.started.append(process)
        return process

    def kill(self) -> None:
        """Ends every worker started (its whole session: the shell and its Python)."""
        for process in self.started:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)


def interrupted_by() -> int | None:
    """The signal that interrupted the last :func:`interrupts` block, if one did."""
    return _received[0] if _received else None


def interrupted(exc: BaseException | None = None) -> int:
    """Prints the one line of an interrupted run; returns its exit status (128 + signal)."""
    print(INTERRUPTED, file=sys.stderr)
    signum = interrupted_by() or (signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT)
    return 128 + signum


def environment_error(exc: BaseException) -> str | None:
    """One line for a failure of the machine rather than of bertbeam (a full disk, a
    read-only or forbidden location), found anywhere in the exception's chain; else None."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in _ENVIRONMENT_ERRNOS:
            return f"{current.strerror or current}: {current.filename or ''}".rstrip(": ")
        text = str(current)
        for marker in _ENVIRONMENT_TEXTS:
            if marker in text:
                line = next(ln for ln in text.splitlines() if marker in ln)
                return line.strip()[:300]
        current = current.__cause__ or current.__context__
    return None
