"""Fingerprints: what a result row was computed from, so that a later run can tell whether
the row is still valid.

* the **text fingerprint** of a document: a hash of every input column the task reads (the
  text, or the question and its context);
* the **model fingerprint**: the hub revision of a hub model, else a digest of the files of
  the checkpoint directory (weights, config, tokenizer);
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
from pathlib import Path
from typing import Any

from bertbeam.config import RunSpec
from bertbeam.core.task import Task

RESULTS_FORMAT = 1
"""Bumped whenever bertbeam changes what a result row holds for the same inputs and options,
so that rows of an older bertbeam are recomputed rather than carried forward."""

TEXT_FINGERPRINT_CHARS = 32
STAMP_COLUMNS = ("text_fingerprint", "model_fingerprint", "job_fingerprint", "run_id")
"""The columns a job stamps on every result row it computes (after the task's columns)."""
_HUB_SNAPSHOT = re.compile(r"/snapshots/([0-9a-f]{40})/?$")
_PARTIAL_HASH_BYTES = 1 << 20


def _digest(parts: list[bytes]) -> str:
    h = hashlib.sha256()
    for part in parts:
        # Length-prefixed, so that ("ab", "c") and ("a", "bc") differ.
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return h.hexdigest()


def text_fingerprint(text: str, text_pair: str | None = None,
                     extra: dict[str, Any] | None = None) -> str:
    """The fingerprint of every input column a document's result row depends on: its text
    (and pair) and its carried columns (``extra``): 32 hex digits (128 bits of SHA-256). A
    row whose carried title changed is recomputed, never carried forward with the old one.

    Example::

        text_fingerprint("The cat sat.")                # text tasks
        text_fingerprint("Who?", "Ann did.")            # qa: question and context
    """
    parts = [text.encode("utf-8", "surrogatepass")]
    if text_pair is not None:
        parts.append(text_pair.encode("utf-8", "surrogatepass"))
    if extra:
        parts.append(repr(sorted(extra.items())).encode("utf-8", "surrogatepass"))
    return _digest(parts)[:TEXT_FINGERPRINT_CHARS]


def model_fingerprint(local_dir: str) -> str:
    """``rev:<commit>`` for a hub snapshot, else 16 hex digits of SHA-256 over the checkpoint
    directory's files: names, sizes and contents (files over 2 MiB by their size and first
    and last MiB, which any retraining changes), hidden files and folders left out. It
    costs milliseconds even for large checkpoints.

    The search index's manifest (``bertbeam.index``) records this digest too, so an index and
    the rows it was built from name a model alike.

    Example::

        model_fingerprint(resolve_model_dir("gs://bucket/models/minilm"))
    """
    revision = _HUB_SNAPSHOT.search(str(Path(local_dir).resolve()).replace(os.sep, "/"))
    if revision:
        return f"rev:{revision.group(1)}"
    digest = hashlib.sha256()
    root = Path(local_dir)
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if any(part.startswith(".") for part in rel.split("/")):
            continue  # cache markers and locks are not the model
        size = path.stat().st_size
        digest.update(f"{rel}\0{size}\0".encode())
        with path.open("rb") as f:
            if size <= 2 * _PARTIAL_HASH_BYTES:
                digest.update(f.read())
            else:
                digest.update(f.read(_PARTIAL_HASH_BYTES))
                f.seek(-_PARTIAL_HASH_BYTES, os.SEEK_END)
                digest.update(f.read())
    return digest.hexdigest()[:16]


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
