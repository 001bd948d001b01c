"""One run at a time per output directory: ``DIR/_LOCK.json``, created exclusively when a run
starts (an exclusive create on local disks, a create-if-absent on GCS), refreshed while it
runs (a heartbeat) and removed when it ends.

A second run into the same directory finds the lock and refuses with one line. A lock is a
lease: its holder renews it every :data:`HEARTBEAT_SECONDS` and names itself with an owner
token (host, kernel boot id, pid namespace, pid and the process's start time). A lock left by
a run that is gone is taken over:

* same host and boot, same pid namespace: at once when no process has that pid, or the
  process that has it started at another time (a restarted container is often pid 1 again:
  the pid alone would refuse it forever);
* same host name but another boot: at once (no process survives a reboot);
* otherwise (another host, another container's pids, a lock without a token): when its lease
  has not been renewed for :data:`STALE_SECONDS`, as a killed remote launcher cannot be asked.
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


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return None


def _boot_id() -> str | None:
    return _read("/proc/sys/kernel/random/boot_id")


def _pid_namespace() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def _process_start(pid: int) -> int | None:
    """The start time of process ``pid`` in clock ticks since boot (Linux), or None."""
    stat = _read(f"/proc/{pid}/stat")
    if not stat:
        return None
    try:
        return int(stat.rsplit(")", 1)[1].split()[19])  # field 22, after "pid (comm)"
    except (IndexError, ValueError):
        return None


def owner_token() -> dict[str, Any]:
    """What names this process as a lock's holder: host, boot id, pid namespace, pid and the
    process's start time (the last three are ``None`` where the system does not tell)."""
    pid = os.getpid()
    return {"host": socket.gethostname(), "boot_id": _boot_id(), "pid_namespace": _pid_namespace(),
            "pid": pid, "process_started": _process_start(pid)}


def is_stale(lock: dict[str, Any], *, now: dt.datetime | None = None) -> bool:
    """Whether the run that wrote ``lock`` is gone (see the module's rules): its process has
    ended or been replaced (same host, boot and pid namespace), the host has rebooted, or its
    lease has not been renewed for ``STALE_SECONDS``."""
    now = now or _now()
    try:
        beat = dt.datetime.fromisoformat(lock["heartbeat_at"])
    except (KeyError, TypeError, ValueError):
        return True  # not a lock bertbeam wrote completely
    lease_expired = (now - beat).total_seconds() > STALE_SECONDS
    me = owner_token()
    pid = lock.get("pid")
    if lock.get("host") != me["host"] or not isinstance(pid, int):
        return lease_expired
    if lock.get("boot_id") and me["boot_id"] and lock["boot_id"] != me["boot_id"]:
        return True  # the host has rebooted since: its process is gone
    same_pids = (lock.get("boot_id") == me["boot_id"] is not None
                 and lock.get("pid_namespace") == me["pid_namespace"] is not None)
    started = lock.get("process_started")
    if same_pids and isinstance(started, int):
        return not _pid_alive(pid) or _process_start(pid) != started
    return lease_expired  # no token to check (another container's pids, an older lock)


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
        self._owner = owner_token()

    def _record(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "started_at": self.started_at,
                "heartbeat_at": _now().isoformat(), "lease_seconds": STALE_SECONDS,
                **self._owner}

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
            try:
                if (self.read() or {}).get("run_id") != self.run_id:
                    return
                write_json_atomically(self.output, LOCK_FILE, self._record())
            except (OSError, ValueError):  # a full disk: the run reports it; the lease stays
                continue

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
