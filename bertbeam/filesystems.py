"""Locations: every bertbeam path is an fsspec URL (local, ``gs://`` via gcsfs, ``memory://``,
any fsspec protocol), so inputs, outputs, models and the summary accept the same forms."""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Iterator
from typing import IO, Any


class UnsafeTargetError(ValueError):
    """A file bertbeam is about to write is a symbolic link: writing through it would land
    outside the output directory (a user or environment error, one line)."""


def url_to_fs(url: str) -> tuple[Any, str]:
    """The fsspec filesystem of ``url`` and the path within it."""
    import fsspec  # on the first file opened (start-up)

    return fsspec.core.url_to_fs(url)


def join(fs: Any, root: str, name: str) -> str:
    """The full URL of ``name`` inside directory ``root`` of ``fs``."""
    return fs.unstrip_protocol(f"{root.rstrip('/')}/{name}")


def expand_glob(pattern: str) -> list[str]:
    """Sorted full URLs of the files matching ``pattern``."""
    fs, path = url_to_fs(pattern)
    try:
        matches = fs.glob(path) if any(c in path for c in "*?[") else ([path] if fs.exists(path) else [])
    except FileNotFoundError:  # a bucket that does not exist
        return []
    return sorted(fs.unstrip_protocol(m) for m in matches if not fs.isdir(m))


def _is_local(fs: Any) -> bool:
    from fsspec.implementations.local import LocalFileSystem  # on the first file opened (start-up)

    return isinstance(fs, LocalFileSystem)


def refuse_symlink(path: str) -> None:
    """Raises :class:`UnsafeTargetError` when the local ``path`` is a symbolic link."""
    if os.path.islink(path):
        raise UnsafeTargetError(
            f"{path} is a symbolic link (to {os.readlink(path)}); bertbeam does not write through "
            "links in its output directory. Remove the link, or choose another output.")


@contextlib.contextmanager
def replacing(url: str, mode: str = "wb", **kwargs: Any) -> Iterator[IO[Any]]:
    """Opens ``url`` for writing safely: the data goes to a new temporary file in the same
    directory (created exclusively, never through a link) and is renamed onto ``url`` when the
    block ends without an error, so a reader never sees a partial file and a symbolic link
    planted at ``url`` is refused (:class:`UnsafeTargetError`) instead of written through.
    On an error the temporary file is removed and ``url`` is left as it was.

    Example::

        with replacing("out/_REPORT-speed.png") as f:
            f.write(png_bytes)
    """
    if "w" not in mode:
        raise ValueError(f"replacing() opens files for writing ('w' modes), got mode {mode!r}.")
    fs, path = url_to_fs(url)
    directory, _, name = path.rstrip("/").rpartition("/")
    temp = f"{directory}/.{name}.{uuid.uuid4().hex[:12]}.tmp"
    if not _is_local(fs):  # object stores have no links; a written object appears whole
        try:
            with fs.open(temp, mode, **kwargs) as f:
                yield f
            fs.mv(temp, path)
        finally:
            if fs.exists(temp):
                fs.rm(temp)
        return
    refuse_symlink(path)
    # O_EXCL | O_NOFOLLOW: a link planted at the temporary name is not followed either; 0o666
    # lets the umask decide the permissions, as for any other file the user creates.
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o666)
    try:
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
        refuse_symlink(path)
        os.replace(temp, path)  # replaces a link planted meanwhile, never its target
    except OSError as exc:
        if exc.filename or exc.errno is None:
            raise
        # A write's error names no file: say which one (a full disk's one line).
        raise OSError(exc.errno, exc.strerror, path) from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temp)


def write_file_safely(url: str, data: bytes | str) -> str:
    """Writes ``data`` (bytes, or text as UTF-8) as ``url`` through :func:`replacing`; returns
    ``url``."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    with replacing(url, "wb") as f:
        f.write(data)
    return url


def write_json_atomically(directory: str, name: str, value: Any) -> str:
    """Writes ``value`` as ``directory/name``: to a temporary object first, then moved into
    place, so that a reader never sees a partial file (and a link is never written through).
    Returns its URL."""
    fs, root = url_to_fs(directory)
    final = f"{root.rstrip('/')}/{name}"
    with replacing(fs.unstrip_protocol(final), "w", encoding="utf-8") as f:
        json.dump(value, f, indent=2, sort_keys=False)
    return fs.unstrip_protocol(final)
