"""How a run ends when it cannot finish: Ctrl-C and SIGTERM become one line and exit status
130 / 143; a full disk or a refused write becomes one line and exit status 1."""

from __future__ import annotations

import errno
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

INTERRUPTED = "bertbeam: interrupted; rerun to resume"
_ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}
_ENVIRONMENT_TEXTS = ("No space left on device", "Disk quota exceeded", "Read-only file system",
                      "Permission denied")


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C's KeyboardInterrupt so that the same cleanup runs."""


@contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _raise(signum: int, frame: object) -> None:
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def interrupted(exc: KeyboardInterrupt) -> int:
    """Prints the one line of an interrupted run; returns its exit status (128 + signal)."""
    print(INTERRUPTED, file=sys.stderr)
    return 128 + (signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT)


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
