"""Locations: every bertbeam path is an fsspec URL (local, ``gs://`` via gcsfs, ``memory://``,
any fsspec protocol), so inputs, outputs, models and the summary accept the same forms."""

from __future__ import annotations

import json
import uuid
from typing import Any


def url_to_fs(url: str) -> tuple[Any, str]:
    """The fsspec filesystem of ``url`` and the path within it."""
    import fsspec

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


def write_json_atomically(directory: str, name: str, value: Any) -> str:
    """Writes ``value`` as ``directory/name``: to a temporary object first, then moved into
    place, so that a reader never sees a partial file. Returns its URL."""
    fs, root = url_to_fs(directory)
    final = f"{root.rstrip('/')}/{name}"
    temp = f"{root.rstrip('/')}/.{name}.{uuid.uuid4().hex}.tmp"
    try:
        with fs.open(temp, "w") as f:
            json.dump(value, f, indent=2, sort_keys=False)
        fs.mv(temp, final)
    finally:
        if fs.exists(temp):
            fs.rm(temp)
    return fs.unstrip_protocol(final)
