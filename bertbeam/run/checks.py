"""Launcher checks: what can be known wrong before the pipeline starts, each failing with one
line that names the problem, so that no compute is spent on a job bound to fail at the end.

* locations: ``--input`` / ``--output`` not empty, the output writable (and not a file, not
  under a file, its bucket existing), the output not matched by the input glob;
* the checkpoint: ``config.json`` readable JSON, tokenizer files present, every
  ``*.safetensors`` file complete (its header read, not its tensors), the task's head weights
  present with the shapes the config implies;
* settings against the resolved model: the window leaves room for text, the stride fits the
  window, ``--device cuda`` where the local machine has no CUDA device, ``--backend onnx``
  for a checkpoint the exporter can handle.
"""

from __future__ import annotations

import json
import os
import re
import struct
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from bertbeam.config import EMBEDDED_MODEL
from bertbeam.core.models import (
    ModelLoadError,
    cached_model_dir,
    default_cache_dir,
    resolve_model_dir,
)
from bertbeam.core.models import load_tokenizer as load
from bertbeam.core.onnx_backend import check_export
from bertbeam.filesystems import url_to_fs
from bertbeam.gcs import emulator_host

TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model",
                   "sentencepiece.bpe.model", "tokenizer.model")
_OBJECT_STORES = {"gs", "gcs", "s3", "s3a", "az", "abfs", "abfss"}
_PROBE_NAMES = ("results-00000-of-00001.parquet", "dead_letter-00000-of-00001.parquet",
                ".temp-results-0/results-0.parquet", "_SUMMARY.json")


class OutputError(ValueError):
    """The output location cannot take this run's files."""


def check_location(flag: str, value: str) -> None:
    """Refuses an empty or whitespace location (an unset shell variable)."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(
            f"{flag} is empty ({value!r}); pass a directory, gs:// or fsspec URL (an unset "
            "shell variable gives an empty value).")


def check_output_writable(output: str) -> None:
    """Creates ``output`` if needed and writes and removes a probe object in it: a read-only
    mount, a missing permission, a file in the way or a missing bucket fails here."""
    check_location("--output", output)
    fs, root = url_to_fs(output)
    protocols = {fs.protocol} if isinstance(fs.protocol, str) else set(fs.protocol)
    try:
        if protocols & _OBJECT_STORES:
            bucket = root.split("/", 1)[0]
            if not fs.exists(bucket):
                raise OutputError(f"Output {output!r}: bucket {bucket!r} does not exist (or is "
                                  "not visible with these credentials).")
        else:
            _check_no_file_in_the_way(fs, root, output)
            fs.makedirs(root, exist_ok=True)
        probe = f"{root.rstrip('/')}/.bertbeam-probe-{uuid.uuid4().hex}"
        fs.pipe_file(probe, b"")
        fs.rm(probe)
    except OutputError:
        raise
    except Exception as exc:
        raise OutputError(
            f"Output {output!r} is not writable: {type(exc).__name__}: {_first_line(exc)}"
        ) from exc


def _check_no_file_in_the_way(fs: Any, root: str, output: str) -> None:
    path = root.rstrip("/")
    while path:
        if fs.isfile(path):
            where = "is a file" if path == root.rstrip("/") else f"is under {path!r}, a file"
            raise OutputError(f"Output {output!r} {where}; --output must be a directory.")
        parent = path.rsplit("/", 1)[0] if "/" in path else ""
        if parent == path or fs.isdir(path):
            return
        path = parent


def check_output_outside_input(input_pattern: str, output: str) -> None:
    """Refuses an output whose files the input glob would match: a run would read its own
    results (or a rerun its predecessor's) as input."""
    from fsspec.utils import glob_translate  # on the first file opened (start-up)

    fs_in, pattern = url_to_fs(input_pattern)
    fs_out, root = url_to_fs(output)
    if fs_in.unstrip_protocol("x") != fs_out.unstrip_protocol("x"):
        return  # different file systems
    matches = (re.compile(glob_translate(pattern)).fullmatch if any(c in pattern for c in "*?[")
               else pattern.rstrip("/").__eq__)
    for name in _PROBE_NAMES:
        candidate = f"{root.rstrip('/')}/{name}"
        if matches(candidate):
            raise OutputError(
                f"Output {output!r} is inside the input {input_pattern!r}: the input glob "
                f"matches its files (such as {name!r}). Choose an output outside the input, or "
                "narrow the glob.")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or repr(exc)
    return text.splitlines()[0][:300]


# -- the checkpoint ----------------------------------------------------------------------------


def check_checkpoint_files(local_dir: str, uri: str) -> None:
    """``config.json`` is JSON, the tokenizer's files are there, and each safetensors file is
    complete; checked from the files, before anything is loaded."""
    path = Path(local_dir)
    config = path / "config.json"
    if not config.is_file():
        raise ModelLoadError(f"Model {uri!r} has no config.json in {local_dir}.")
    try:
        json.loads(config.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"Model {uri!r}: config.json is not valid JSON ({exc}).") from exc
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise ModelLoadError(
            f"Model {uri!r} has no tokenizer files (none of {', '.join(TOKENIZER_FILES)} in "
            f"{local_dir}); without them every word would be [UNK]. Save the tokenizer with "
            "the model (tokenizer.save_pretrained(DIR)).")
    for weights in sorted(path.glob("*.safetensors")):
        safetensors_shapes(weights, uri)


def safetensors_shapes(path: Path, uri: str) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape from a safetensors file's header; fails when the file is cut
    short of the data its header describes (a truncated download or copy)."""
    size = path.stat().st_size
    try:
        with path.open("rb") as f:
            (header_size,) = struct.unpack("<Q", f.read(8))
            if 8 + header_size > size:
                raise ValueError(f"header of {header_size} bytes in a {size}-byte file")
            header = json.loads(f.read(header_size))
        header.pop("__metadata__", None)
        end = max((t["data_offsets"][1] for t in header.values()), default=0)
    except (struct.error, ValueError, KeyError, TypeError, IndexError) as exc:
        raise ModelLoadError(f"Model {uri!r}: {path.name} is not a safetensors file ({exc}).") from exc
    if 8 + header_size + end > size:
        raise ModelLoadError(
            f"Model {uri!r}: {path.name} is truncated ({size} bytes, its header describes "
            f"{8 + header_size + end}); copy the checkpoint again.")
    return {name: tuple(t["shape"]) for name, t in header.items()}


def check_head_weights(local_dir: str, uri: str, config: Any, model_class: str) -> None:
    """The task head's weights are in the checkpoint, with the shapes its config implies
    (a config naming a head whose weights were never saved, or saved for other labels).

    The model is built on the meta device (no memory, no weights read): cheap at launch.
    """
    import torch  # the model stack loads where it is used (start-up)
    import transformers  # the model stack loads where it is used (start-up)

    files = sorted(Path(local_dir).glob("*.safetensors"))
    if model_class == "AutoModel" or not files:
        return
    saved: dict[str, tuple[int, ...]] = {}
    for f in files:
        saved.update(safetensors_shapes(f, uri))
    with torch.device("meta"):
        model = getattr(transformers, model_class).from_config(config)
    tied = set(getattr(model, "all_tied_weights_keys", None) or {})
    prefix = f"{model.base_model_prefix}."
    for key, tensor in model.state_dict().items():
        if key.startswith(prefix) or key in tied:
            continue
        if key not in saved:
            raise ModelLoadError(
                f"Model {uri!r}: its config names {', '.join(config.architectures or [])} but "
                f"the weights have no {key!r}; use a checkpoint fine-tuned for this task.")
        if saved[key] != tuple(tensor.shape):
            raise ModelLoadError(
                f"Model {uri!r}: weight {key!r} has shape {list(saved[key])} but the config "
                f"implies {list(tensor.shape)} (id2label and num_labels must match the head).")


def load_config(local_dir: str, uri: str, *, trust_remote_code: bool) -> Any:
    """The checkpoint's transformers config; refusals name bertbeam's own flags."""
    from transformers import AutoConfig  # the model stack loads where it is used (start-up)

    try:
        return AutoConfig.from_pretrained(local_dir, trust_remote_code=trust_remote_code)
    except Exception as exc:
        raise ModelLoadError(_model_error(uri, exc)) from exc


def _model_error(uri: str, exc: BaseException) -> str:
    if "trust_remote_code" in str(exc):
        return (f"Model {uri!r} ships its own code, which bertbeam runs only when you pass "
                "--trust-remote-code (read the code first: it runs on every worker).")
    return f"Model {uri!r} cannot be loaded: {type(exc).__name__}: {_first_line(exc)}"


def load_tokenizer(local_dir: str, spec: Any) -> Any:
    """The checkpoint's fast tokenizer (see :func:`bertbeam.core.models.load_tokenizer`), with
    refusals in one line."""
    try:
        return load(local_dir, spec)
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(_model_error(spec.uri, exc)) from exc


def check_onnx_export(local_dir: str, spec: Any, config: Any, tokenizer: Any,
                      model_class: str) -> None:
    """``--backend onnx``: the checkpoint is exported now (into the cache the workers read)
    and opened with ONNX Runtime, so a model the exporter cannot handle fails here in one
    line, not on every worker (:func:`bertbeam.core.onnx_backend.check_export`)."""
    if spec.backend != "onnx":
        return

    check_export(local_dir, spec.uri, model_class, quantize=spec.quantize, config=config,
                 tokenizer=tokenizer, cache_root=Path(spec.cache_dir or default_cache_dir()),
                 allow_pickle_weights=spec.allow_pickle_weights,
                 trust_remote_code=spec.trust_remote_code)


# -- settings against the resolved model --------------------------------------------------------


def check_window(tokenizer: Any, max_length: int, tokenize: Any, *, pairs: bool) -> None:
    """The window holds text besides the special tokens, and the stride fits it."""
    if tokenize.long_docs == "truncate" and tokenize.stride is not None:
        raise ValueError(
            f"--stride {tokenize.stride} applies with --long-docs chunk only (truncate keeps "
            "one window, so nothing overlaps); drop --stride or use --long-docs chunk.")
    specials = tokenizer.num_special_tokens_to_add(pair=pairs)
    if max_length <= specials + (1 if not pairs else 2):
        raise ValueError(
            f"--max-length {max_length} leaves no room for text: the model adds {specials} "
            f"special tokens to each window; use at least {specials + (2 if not pairs else 3)}.")
    if tokenize.long_docs == "chunk" and tokenize.stride is not None \
            and tokenize.stride >= max_length // 2:
        raise ValueError(
            f"--stride {tokenize.stride} must be less than half the window of {max_length} "
            f"tokens (the model's, as --max-length is not given); use at most "
            f"{max(0, max_length // 2 - 1)}.")


def check_device(device: str, *, local: bool) -> None:
    """``--device cuda`` on a local run needs a CUDA device here (remote workers are
    checked by ``bertbeam check-gpu``)."""
    if device != "cuda" or not local:
        return
    import torch  # the model stack loads where it is used (start-up)

    if not torch.cuda.is_available():
        raise ValueError("--device cuda was given but this machine has no CUDA device; use "
                         "--device auto or cpu, or run on GPU workers.")


# -- remote runners and remote locations ----------------------------------------------------

REACH_SECONDS = 5.0
"""How long the launcher waits for Cloud Storage to answer before it gives up (once)."""


def is_url(location: str) -> bool:
    """Whether ``location`` names a remote file system (``gs://``, ``s3://``, ...), not a path."""
    protocol = location.split("://", 1)[0] if "://" in location else None
    return protocol is not None and protocol not in ("file", "local")


def check_remote_locations(locations: dict[str, str | None], model: str) -> None:
    """With a remote runner every location must be one its workers can reach: a local path
    (``--input ./corpus``) would name a directory on each worker, not this machine's."""
    for flag, value in locations.items():
        if value and not is_url(value):
            raise ValueError(
                f"{flag} {value!r} is a local path, but the runner is remote: its workers "
                "cannot read this machine's files; use a gs:// (or other shared) URL.")
    if model not in (EMBEDDED_MODEL, EMBEDDED_MODEL.split(":", 1)[1]) and os.path.isdir(model):
        raise ValueError(
            f"--model {model!r} is a local directory, but the runner is remote: its workers "
            "cannot read it; copy it to a gs:// URL (each worker copies it once) or leave "
            "--model out for the embedded default.")


def check_reachable(locations: list[str]) -> None:
    """Cloud Storage answers within :data:`REACH_SECONDS` for every ``gs://`` location: one
    request, no retries, so an unreachable endpoint (no network, a proxy, a wrong
    ``STORAGE_EMULATOR_HOST``) fails in seconds, in one line, not after gcsfs's retries."""
    buckets = dict.fromkeys(loc.split("://", 1)[1].split("/", 1)[0] for loc in locations
                            if loc and loc.split("://", 1)[0] in ("gs", "gcs"))
    endpoint = emulator_host() or "https://storage.googleapis.com"
    for bucket in buckets:
        url = f"{endpoint.rstrip('/')}/storage/v1/b/{bucket}"
        try:
            urllib.request.urlopen(url, timeout=REACH_SECONDS).close()
        except urllib.error.HTTPError:
            continue  # it answered (401, 403, 404: credentials and buckets are checked later)
        except (OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise OutputError(
                f"Cloud Storage is unreachable at {endpoint} for gs://{bucket} ({reason}); "
                "check the network, a proxy, or STORAGE_EMULATOR_HOST.") from exc


def offline_model_dir(uri: str, cache_dir: str | None) -> str:
    """The model's local directory for a dry run, which reads no remote location: a local
    directory, the embedded model, or a remote model already in the model cache."""
    if not is_url(uri):
        return resolve_model_dir(uri, cache_dir)
    cached = cached_model_dir(uri, cache_dir)
    if cached is None:
        raise ModelLoadError(
            f"--dry_run=True builds the job offline, but model {uri!r} is not in the model "
            "cache here (--model-cache-dir); run one job with it where the bucket is reachable, "
            "which caches it, then dry-run again.")
    return cached
