"""Fingerprints: what a result row was computed from, so that a later run can tell whether
the row is still valid.

* the **text fingerprint** of a document: a hash of every input column the task reads (the
  text, or the question and its context);
* the **model fingerprint**: the hub revision of a hub model, else a hash of the files of the
  checkpoint directory (weights, config, tokenizer);
* the **job fingerprint**: the model fingerprint and every option that changes results (task
  and its options, window length, long-document policy, stride, device, dtype, quantization)
  plus :data:`RESULTS_FORMAT`. Batching options, threads and streams are left out: they
  never change results.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

from bertbeam.config import RunSpec
from bertbeam.tasks.base import Task

RESULTS_FORMAT = 1
"""Bumped whenever bertbeam changes what a result row holds for the same inputs and options,
so that rows of an older bertbeam are recomputed rather than carried forward."""

TEXT_FINGERPRINT_CHARS = 32
_HUB_SNAPSHOT = re.compile(r"/snapshots/([0-9a-f]{40})/?$")
_SKIPPED = re.compile(r"(^|/)(\.[^/]*|README[^/]*|[^/]*\.md|[^/]*\.lock)$")


def _digest(parts: list[bytes]) -> str:
    h = hashlib.sha256()
    for part in parts:
        # Length-prefixed, so that ("ab", "c") and ("a", "bc") differ.
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return h.hexdigest()


def text_fingerprint(text: str, text_pair: str | None = None) -> str:
    """The fingerprint of a document's model input: 32 hex digits (128 bits of SHA-256).

    Example::

        text_fingerprint("The cat sat.")                # text tasks
        text_fingerprint("Who?", "Ann did.")            # qa: question and context
    """
    parts = [text.encode("utf-8", "surrogatepass")]
    if text_pair is not None:
        parts.append(text_pair.encode("utf-8", "surrogatepass"))
    return _digest(parts)[:TEXT_FINGERPRINT_CHARS]


def model_fingerprint(local_dir: str) -> str:
    """``rev:<commit>`` for a hub snapshot, else ``sha256:<hex>`` of the checkpoint's files
    (relative paths and contents; hidden files, READMEs and locks left out).

    Example::

        model_fingerprint(resolve_model_dir("gs://bucket/models/minilm"))
    """
    revision = _HUB_SNAPSHOT.search(str(Path(local_dir).resolve()).replace(os.sep, "/"))
    if revision:
        return f"rev:{revision.group(1)}"
    root = Path(local_dir)
    files = sorted(p for p in root.rglob("*") if p.is_file()
                   and not _SKIPPED.search(p.relative_to(root).as_posix()))
    stats = tuple((p.relative_to(root).as_posix(), p.stat().st_size, p.stat().st_mtime_ns)
                  for p in files)
    return _hash_files(str(root), stats)


@lru_cache(maxsize=16)
def _hash_files(root: str, stats: tuple[tuple[str, int, int], ...]) -> str:
    """SHA-256 over the files ``stats`` names; cached on (path, size, mtime) per process."""
    h = hashlib.sha256()
    for rel, size, _ in stats:
        h.update(f"{rel}\0{size}\0".encode())
        with open(Path(root) / rel, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return f"sha256:{h.hexdigest()[:32]}"


def job_fingerprint(task: Task, run: RunSpec, model_fp: str) -> str:
    """A hash of everything that determines a result row besides the document's text.

    Example::

        job_fingerprint(EmbedTask(), RunSpec(), model_fingerprint(local_dir))
    """
    m, t = run.model, run.tokenize
    described = {
        "results_format": RESULTS_FORMAT,
        "task": task.name,
        "task_options": {f.name: getattr(task, f.name) for f in dataclasses.fields(task)},
        "model": model_fp,
        "device": m.device, "dtype": m.dtype, "quantize": m.quantize,
        "max_length": t.max_length, "long_docs": t.long_docs, "stride": t.stride,
    }
    text = json.dumps(described, sort_keys=True, default=_plain)
    return _digest([text.encode()])[:TEXT_FINGERPRINT_CHARS]


def _plain(value: Any) -> Any:
    if isinstance(value, set | frozenset):
        return sorted(value, key=repr)
    return repr(value)
