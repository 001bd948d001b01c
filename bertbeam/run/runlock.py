"""One run at a time per output directory: ``DIR/_LOCK.json``, created exclusively when a run
starts (an exclusive create on local disks, a create-if-absent on GCS), refreshed while it
runs and removed when it ends.

A second run into the same directory finds the lock and refuses with one line. A lock left by
a run that was killed is taken over when it is stale: its process is gone (same host), or it
has not been refreshed for :data:`STALE_SECONDS` (any host, as a killed remote launcher
cannot be asked).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import threading
import time
import uuid
from typing import Any

from bertbeam.filesystems import url_to_fs, write_json_atomically

LOCK_FILE = "_LOCK.json"
HEARTBEAT_SECONDS = 60.0
STALE_SECONDS = 600.0
PARTIAL_GRACE_SECONDS = 1.0


class OutputLockedError(ValueError):
    """Another run holds the output directory."""


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_stale(lock: dict[str, Any], *, now: dt.datetime | None = None) -> bool:
    """Whether the run that wrote ``lock`` is gone: its process has ended (same host), or its
    lock has not been refreshed for ``STALE_SECONDS``."""
    now = now or _now()
    try:
        beat = dt.datetime.fromisoformat(lock["heartbeat_at"])
    except (KeyError, TypeError, ValueError):
        return True  # not a lock bertbeam wrote completely
    if lock.get("host") == socket.gethostname() and isinstance(lock.get("pid"), int):
        return not _pid_alive(lock["pid"])
    return (now - beat).total_seconds() > STALE_SECONDS


class RunLock:
    """Holds ``output``'s lock while a run is in it; use as a context manager.

    Example::

        with RunLock("gs://bucket/out"):
            run_the_pipeline()
    """

    def __init__(self, output: str, *, heartbeat_seconds: float = HEARTBEAT_SECONDS):
        self.output = output
        self.run_id = uuid.uuid4().hex
        self.started_at = _now().isoformat()
        self._heartbeat_seconds = heartbeat_seconds
        self._fs, root = url_to_fs(output)
        self._path = f"{root.rstrip('/')}/{LOCK_FILE}"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _record(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "started_at": self.started_at,
                "heartbeat_at": _now().isoformat(), "host": socket.gethostname(),
                "pid": os.getpid()}

    def read(self) -> dict[str, Any] | None:
        """The lock as it is now (None: no lock; {} an unreadable one)."""
        try:
            with self._fs.open(self._path, "rb") as f:
                return json.loads(f.read() or b"{}")
        except FileNotFoundError:
            return None
        except ValueError:
            return {}

    def acquire(self) -> None:
        """Takes the lock, or a stale one over; raises OutputLockedError if a live run holds it."""
        for _ in range(2):
            try:
                with self._fs.open(self._path, "xb") as f:
                    f.write(json.dumps(self._record()).encode())
            except FileExistsError:
                held = self.read()
                if held == {}:  # being written this instant, or left partial by a crash
                    time.sleep(PARTIAL_GRACE_SECONDS)
                    held = self.read()
                if held is None:
                    continue  # released meanwhile
                if not is_stale(held):
                    raise OutputLockedError(
                        f"Output {self.output!r} is in use by run {held.get('run_id')!r} "
                        f"(started {held.get('started_at')} on {held.get('host')}, pid "
                        f"{held.get('pid')}); one run at a time per output. If no such run is "
                        f"alive, delete {LOCK_FILE} there.") from None
                if self.read() == held:  # still the stale one: take it over
                    self._fs.rm(self._path)
                continue
            self._thread = threading.Thread(target=self._beat, name="bertbeam-lock", daemon=True)
            self._thread.start()
            return
        raise OutputLockedError(f"Output {self.output!r}: another run took its lock at the same "
                                "moment; one run at a time per output.")

    def _beat(self) -> None:
        while not self._stop.wait(self._heartbeat_seconds):
            if (self.read() or {}).get("run_id") != self.run_id:
                return
            write_json_atomically(self.output, LOCK_FILE, self._record())

    def release(self) -> None:
        """Removes the lock if this run still holds it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if (self.read() or {}).get("run_id") == self.run_id:
            self._fs.rm(self._path)

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
