"""Fingerprints: what a result row was computed from, so that a later run can tell whether
the row is still valid.

* the **text fingerprint** of a document: a hash of every input column the task reads (the
  text, or the question and its context);
* the **model fingerprint**: the hub revision of a hub model, else a digest of the files of
  the checkpoint directory (weights, config, tokenizer);
* the **job fingerprint**: the model fingerprint and every option that changes results (task
  and its options, window length, long-document policy, stride, device, dtype, quantization,
  backend)
  plus :data:`RESULTS_FORMAT`. Batching options, threads and streams are left out: they
  never change results.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import uuid
from pathlib import Path
from typing import Any

from bertbeam.config import RunSpec, default_cache_dir
from bertbeam.core.task import Task

RESULTS_FORMAT = 1
"""Bumped whenever bertbeam changes what a result row holds for the same inputs and options,
so that rows of an older bertbeam are recomputed rather than carried forward."""

TEXT_FINGERPRINT_CHARS = 32
STAMP_COLUMNS = ("text_fingerprint", "model_fingerprint", "job_fingerprint", "run_id")
"""The columns a job stamps on every result row it computes (after the task's columns)."""
_HUB_SNAPSHOT = re.compile(r"/snapshots/([0-9a-f]{40})/?$")
_HASH_BLOCK_BYTES = 1 << 20


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


def text_fingerprints(texts: list[str]) -> list[str]:
    """:func:`text_fingerprint` of each of ``texts`` (documents without a pair or carried
    columns), in one loop without a call per text: the same digests, about half the CPU
    (the fingerprint is per-document work on the pipeline's main thread, issue 24)."""
    sha256 = hashlib.sha256
    digests = []
    for text in texts:
        data = text.encode("utf-8", "surrogatepass")
        digests.append(sha256(len(data).to_bytes(8, "little") + data).hexdigest()[:TEXT_FINGERPRINT_CHARS])
    return digests


def model_fingerprint(local_dir: str) -> str:
    """``rev:<commit>`` for a hub snapshot (the hub's own content address), else 16 hex digits
    of SHA-256 over the checkpoint directory's files: names, sizes and whole contents (read
    in a stream), hidden files and folders left out.

    Hashing a large checkpoint takes seconds, so the result is cached in the user's cache
    (``$BERTBEAM_CACHE/fingerprints``, never in the model directory, which may be read-only
    or shared) under the directory's path, keyed by every file's name, size, modification
    and change times and inode: any write to a file makes the next call hash again. An
    unwritable cache only costs the hashing.

    The search index's manifest (``bertbeam.index``) records this digest too, so an index and
    the rows it was built from name a model alike.

    Example::

        model_fingerprint(resolve_model_dir("gs://bucket/models/minilm"))
    """
    resolved = Path(local_dir).resolve()
    revision = _HUB_SNAPSHOT.search(str(resolved).replace(os.sep, "/"))
    if revision:
        return f"rev:{revision.group(1)}"
    files = _model_files(resolved)
    signature = _digest([json.dumps([[rel, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
                                     for rel, _, st in files]).encode()])
    entry = _cache_entry(resolved)
    cached = _read_cache(entry, signature)
    if cached:
        return cached
    fingerprint = _hash_files(files)
    _write_cache(entry, signature, fingerprint)
    return fingerprint


def fingerprint_matches(local_dir: str, recorded: str) -> bool:
    """Whether the checkpoint at ``local_dir`` is the one ``recorded`` names: its
    :func:`model_fingerprint`, or the digest an older bertbeam recorded (files over 2 MiB by
    their size and first and last MiB), so that indexes and results of an older bertbeam stay
    usable with an unchanged model."""
    current = model_fingerprint(local_dir)
    if recorded == current:
        return True
    if current.startswith("rev:") or not re.fullmatch(r"[0-9a-f]{16}", recorded or ""):
        return False
    return recorded == _legacy_fingerprint(Path(local_dir).resolve())


def _legacy_fingerprint(root: Path) -> str:
    digest = hashlib.sha256()
    edge = _HASH_BLOCK_BYTES
    for rel, path, st in _model_files(root):
        digest.update(f"{rel}\0{st.st_size}\0".encode())
        with path.open("rb") as f:
            if st.st_size <= 2 * edge:
                digest.update(f.read())
            else:
                digest.update(f.read(edge))
                f.seek(-edge, os.SEEK_END)
                digest.update(f.read())
    return digest.hexdigest()[:16]


def _model_files(root: Path) -> list[tuple[str, Path, os.stat_result]]:
    files = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if any(part.startswith(".") for part in rel.split("/")):
            continue  # cache markers and locks are not the model
        files.append((rel, path, path.stat()))
    return files


def _hash_files(files: list[tuple[str, Path, os.stat_result]]) -> str:
    digest = hashlib.sha256()
    for rel, path, st in files:
        digest.update(f"{rel}\0{st.st_size}\0".encode())
        with path.open("rb") as f:
            while block := f.read(_HASH_BLOCK_BYTES):
                digest.update(block)
    return digest.hexdigest()[:16]


def _cache_entry(resolved: Path) -> Path:
    name = hashlib.sha256(str(resolved).encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return default_cache_dir() / "fingerprints" / f"{name}.json"


def _read_cache(entry: Path, signature: str) -> str | None:
    try:
        data = json.loads(entry.read_text())
    except (OSError, ValueError):
        return None
    if isinstance(data, dict) and data.get("signature") == signature:
        value = data.get("fingerprint")
        return value if isinstance(value, str) and re.fullmatch(r"[0-9a-f]{16}", value) else None
    return None


def _write_cache(entry: Path, signature: str, fingerprint: str) -> None:
    temp = entry.with_name(f".{entry.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        entry.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        temp.write_text(json.dumps({"signature": signature, "fingerprint": fingerprint}))
        os.replace(temp, entry)
    except OSError:  # a read-only home: the next run hashes again
        with contextlib.suppress(OSError):
            temp.unlink()


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
        "device": m.device, "dtype": m.dtype, "quantize": m.quantize, "backend": m.backend,
        "max_length": t.max_length, "long_docs": t.long_docs, "stride": t.stride,
    }
    text = json.dumps(described, sort_keys=True, default=_plain)
    return _digest([text.encode()])[:TEXT_FINGERPRINT_CHARS]


def _plain(value: Any) -> Any:
    if isinstance(value, set | frozenset):
        return sorted(value, key=repr)
    return repr(value)
