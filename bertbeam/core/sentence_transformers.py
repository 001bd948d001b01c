"""Sentence-transformers checkpoints: the modules after the transformer, read from disk and run.

A checkpoint's ``modules.json`` lists its modules in order: a Transformer (the model bertbeam
loads with transformers), then Pooling, any number of Dense layers, and Normalize.
``read_stack`` reads them with their configs and the prompts of
``config_sentence_transformers.json``; a module bertbeam cannot run is a ``ModelLoadError``
naming it, never a silent difference. ``pool``, ``exclude_prompt`` and ``dense_layers`` run
that stack on the worker exactly as sentence-transformers' ``Pooling`` and ``Dense`` do with
right-padded batches.

Torch is imported inside the functions that run on the worker.
"""

from __future__ import annotations

import importlib
import json
import threading
import weakref
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, get_args

from bertbeam.core.models import ModelLoadError

PoolingMode = Literal["mean", "cls", "max", "mean_sqrt_len_tokens", "weightedmean", "lasttoken"]
"""Token pooling modes, named as sentence-transformers names them."""
POOLING_MODES: tuple[PoolingMode, ...] = get_args(PoolingMode)

# Older Pooling configs flag each mode; several flags concatenate, in this order.
_LEGACY_POOLING_FLAGS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
_SUPPORTED = ("Transformer", "Pooling", "Dense", "Normalize")
# Which module may follow which: the order bertbeam runs them in.
_MAY_FOLLOW: dict[str | None, tuple[str, ...]] = {
    None: ("Transformer",), "Transformer": ("Pooling",), "Pooling": ("Dense", "Normalize"),
    "Dense": ("Dense", "Normalize"), "Normalize": ()}
_SENTENCE_EMBEDDING = "sentence_embedding"
_DENSE_WEIGHTS = ("model.safetensors", "pytorch_model.bin")  # the one first found is loaded


@dataclass(frozen=True)
class DenseLayer:
    """One ``Dense`` module: ``activation(linear(x))`` (+ ``x`` or a projection of it when
    ``residual``), its weights in ``directory``."""

    directory: str
    in_features: int
    out_features: int
    bias: bool
    activation: str
    """Dotted name of a ``torch.nn`` module class, e.g. ``torch.nn.modules.activation.Tanh``."""
    residual: bool = False


@dataclass(frozen=True)
class SentenceTransformerStack:
    """What a sentence-transformers checkpoint does around its transformer."""

    pooling: tuple[PoolingMode, ...]
    """Pooling modes, concatenated in this order."""
    include_prompt: bool
    """``False``: prompt tokens are left out of pooling."""
    dense: tuple[DenseLayer, ...]
    normalize: bool
    prompts: tuple[tuple[str, str], ...]
    """(name, text) pairs from ``config_sentence_transformers.json``."""
    default_prompt_name: str | None
    do_lower_case: bool
    """The Transformer module lowercases texts before its tokenizer sees them."""


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


@lru_cache(maxsize=32)
def read_stack(local_dir: str) -> SentenceTransformerStack | None:
    """The module stack of the checkpoint in ``local_dir``; ``None`` for a plain transformers
    checkpoint (no ``modules.json``).

    Raises:
        ModelLoadError: a module bertbeam cannot run (named in the message), or a stack that
            is not Transformer, Pooling, Dense layers, Normalize in this order.

    Example::

        stack = read_stack("/models/e5-small")
        stack.pooling, [d.out_features for d in stack.dense], dict(stack.prompts)
    """
    root = Path(local_dir)
    listed = _read_json(root / "modules.json")
    if not listed:
        return None
    kinds: list[str] = []
    pooling: dict[str, Any] = {}
    dense: list[DenseLayer] = []
    lower = False
    for module in sorted(listed, key=lambda m: int(m.get("idx", 0))):
        kind = _module_kind(module, local_dir)
        directory = root / module.get("path", "")
        config = _read_json(directory / "config.json") if kind != "Transformer" else {}
        if kind not in _MAY_FOLLOW[kinds[-1] if kinds else None]:
            raise ModelLoadError(
                f"Checkpoint {local_dir!r} has module {module.get('path') or kind!r} ({kind}) after "
                f"{' -> '.join(kinds) or 'nothing'}; bertbeam runs Transformer -> Pooling -> "
                "Dense ... -> Normalize, in that order.")
        if kind == "Transformer":
            lower = _check_transformer(directory, module, local_dir)
        elif kind == "Pooling":
            pooling = config
        elif kind == "Dense":
            dense.append(_dense_layer(directory, config, local_dir))
        else:
            _check_sentence_embedding(config, "Normalize", directory, local_dir)
        kinds.append(kind)
    if "Pooling" not in kinds:
        raise ModelLoadError(f"Checkpoint {local_dir!r} has no Pooling module (modules: "
                             f"{' -> '.join(kinds)}); bertbeam embeds with a pooled sentence vector.")
    st_config = _read_json(root / "config_sentence_transformers.json")
    prompts = {name: text or "" for name, text in (st_config.get("prompts") or {}).items()}
    default = st_config.get("default_prompt_name")
    if default is not None and default not in prompts:
        raise ModelLoadError(f"Checkpoint {local_dir!r} has default_prompt_name {default!r}, which "
                             f"is not one of its prompts: {sorted(prompts)!r}.")
    modes = _pooling_modes(pooling, local_dir)
    return SentenceTransformerStack(
        pooling=modes,
        include_prompt=bool(pooling.get("include_prompt", True)),
        dense=tuple(dense),
        normalize=kinds[-1] == "Normalize",
        prompts=tuple(sorted(prompts.items())),
        default_prompt_name=default,
        do_lower_case=lower,
    )


def max_seq_length(local_dir: str) -> int | None:
    """The window length a sentence-transformers checkpoint was trained with, if it states one."""
    value = _read_json(Path(local_dir) / "sentence_bert_config.json").get("max_seq_length")
    return int(value) if value else None


def _module_kind(module: dict[str, Any], local_dir: str) -> str:
    type_name = str(module.get("type", ""))
    kind = type_name.rsplit(".", 1)[-1]
    if not type_name.startswith("sentence_transformers.") or kind not in _SUPPORTED:
        raise ModelLoadError(
            f"Checkpoint {local_dir!r} has module {module.get('path') or module.get('name')!r} of "
            f"type {type_name!r}, which bertbeam cannot run; supported: "
            f"{', '.join(f'sentence_transformers {k}' for k in _SUPPORTED)}.")
    return kind


def _check_transformer(directory: Path, module: dict[str, Any], local_dir: str) -> bool:
    """Checks that the Transformer module is the checkpoint's own model; returns do_lower_case."""
    if module.get("path", ""):
        raise ModelLoadError(
            f"Checkpoint {local_dir!r} keeps its Transformer module in {module['path']!r}; bertbeam "
            "loads the transformer from the checkpoint's top directory (re-save it with "
            "sentence-transformers >= 2).")
    config = _read_json(directory / "sentence_bert_config.json")
    task = config.get("transformer_task", "feature-extraction")
    output = (config.get("modality_config") or {}).get("text", {}).get("method_output_name",
                                                                       "last_hidden_state")
    if task != "feature-extraction" or output != "last_hidden_state":
        raise ModelLoadError(
            f"Checkpoint {local_dir!r} has a Transformer module with transformer_task {task!r} and "
            f"output {output!r}; bertbeam runs 'feature-extraction' models pooled from "
            "'last_hidden_state'.")
    return bool(config.get("do_lower_case", False))


def _check_sentence_embedding(config: dict[str, Any], kind: str, directory: Path, local_dir: str) -> None:
    for key in ("module_input_name", "module_output_name"):
        value = config.get(key) or _SENTENCE_EMBEDDING
        if value != _SENTENCE_EMBEDDING:
            raise ModelLoadError(
                f"Checkpoint {local_dir!r} has a {kind} module ({directory.name!r}) with {key} "
                f"{value!r}; bertbeam runs {kind} on {_SENTENCE_EMBEDDING!r} only.")


def _pooling_modes(config: dict[str, Any], local_dir: str) -> tuple[PoolingMode, ...]:
    mode = config.get("pooling_mode")
    if mode is None:
        modes = tuple(m for key, m in _LEGACY_POOLING_FLAGS.items() if config.get(key)) or ("mean",)
    else:
        modes = (mode,) if isinstance(mode, str) else tuple(mode)
    unknown = [m for m in modes if m not in POOLING_MODES]
    if unknown or not modes:
        raise ModelLoadError(f"Checkpoint {local_dir!r} has pooling mode {unknown or modes!r}; valid "
                             f"pooling modes are: {', '.join(POOLING_MODES)}.")
    return modes


def _dense_layer(directory: Path, config: dict[str, Any], local_dir: str) -> DenseLayer:
    _check_sentence_embedding(config, "Dense", directory, local_dir)
    activation = config.get("activation_function", "torch.nn.modules.activation.Tanh")
    _activation_class(activation, local_dir)
    if not any((directory / name).exists() for name in _DENSE_WEIGHTS):
        raise ModelLoadError(f"Checkpoint {local_dir!r}: Dense module {directory.name!r} has no "
                             f"weights ({' or '.join(_DENSE_WEIGHTS)}).")
    return DenseLayer(
        directory=str(directory),
        in_features=int(config["in_features"]),
        out_features=int(config["out_features"]),
        bias=bool(config.get("bias", True)),
        activation=activation,
        residual=bool(config.get("use_residual", False)),
    )


def _activation_class(name: str, local_dir: str) -> Any:
    """The ``torch.nn.Module`` class named ``name``; anything else is refused (it would run code
    from outside torch, which sentence-transformers itself only does with trust_remote_code)."""
    module_name, _, class_name = name.rpartition(".")
    try:
        if not name.startswith("torch."):
            raise ImportError(name)
        import torch  # the model stack loads where it is used (start-up)

        cls = getattr(importlib.import_module(module_name), class_name)
        if not (isinstance(cls, type) and issubclass(cls, torch.nn.Module)):
            raise ImportError(name)
    except (ImportError, AttributeError) as exc:
        raise ModelLoadError(f"Checkpoint {local_dir!r} has a Dense activation {name!r}; bertbeam "
                             "runs torch.nn module classes only (e.g. "
                             "'torch.nn.modules.activation.Tanh').") from exc
    return cls


def stack_dim(stack: SentenceTransformerStack, pooling: tuple[PoolingMode, ...], hidden_size: int,
              local_dir: str) -> int:
    """The sentence vector's dimension after ``pooling`` (which may differ from the checkpoint's
    own) and the Dense layers; fails when a Dense layer does not take its input's dimension."""
    dim = len(pooling) * hidden_size
    for layer in stack.dense:
        if layer.in_features != dim:
            raise ModelLoadError(
                f"Checkpoint {local_dir!r}: Dense module {Path(layer.directory).name!r} takes "
                f"{layer.in_features} dimensions, but pooling {'+'.join(pooling)} gives {dim}.")
        dim = layer.out_features
    return dim


def prompt_length(tokenizer: Any, prompt: str) -> int:
    """Tokens of ``prompt`` at the start of ``prompt + text``, counted as sentence-transformers
    counts them: the prompt tokenized alone, less a trailing special token (``[SEP]``, ``</s>``)."""
    ids = tokenizer(prompt, truncation=True)["input_ids"]
    return len(ids) - int(bool(ids) and ids[-1] in tokenizer.all_special_ids)


def exclude_prompt(mask: Any, length: int, window_index: Any | None) -> Any:
    """A copy of the attention ``mask`` [batch, length] with the first ``length`` positions of
    each document's window 0 cleared (every row, when ``window_index`` is ``None``): only the
    first window starts with the prompt."""
    mask = mask.clone()
    rows = slice(None) if window_index is None else window_index == 0
    mask[rows, :length] = 0
    return mask


def pool(hidden: Any, mask: Any, modes: tuple[PoolingMode, ...]) -> Any:
    """Pools token vectors ``hidden`` [batch, length, dim] over ``mask`` [batch, length]
    (1 = pooled) with each of ``modes``, concatenated: float32 [batch, len(modes) * dim].

    As sentence-transformers' ``Pooling`` on right-padded batches: ``cls`` takes the first
    pooled token (the one after an excluded prompt), ``lasttoken`` the last, ``weightedmean``
    weighs position ``i`` (from 0) by ``i + 1``.
    """
    import torch  # the model stack loads where it is used (start-up)

    # Summing in float32 keeps bf16/fp16 runs close to the fp32 reference.
    hidden = hidden.float()
    weights = mask.unsqueeze(-1).float()
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    out = []
    for mode in modes:
        if mode == "cls":
            out.append(hidden[rows, mask.argmax(dim=1)])
        elif mode == "lasttoken":
            last = mask.shape[1] - 1 - mask.flip(1).argmax(dim=1)
            out.append((hidden * weights)[rows, last])
        elif mode == "max":
            out.append(hidden.masked_fill(weights == 0, float("-inf")).amax(dim=1))
        else:
            w = weights
            if mode == "weightedmean":
                w = weights * torch.arange(1, hidden.shape[1] + 1, device=hidden.device).view(1, -1, 1)
            total, count = (hidden * w).sum(dim=1), w.sum(dim=1).clamp(min=1e-9)
            out.append(total / (count.sqrt() if mode == "mean_sqrt_len_tokens" else count))
    return torch.cat(out, dim=1)


_DENSE_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_DENSE_LOCK = threading.Lock()


def dense_layers(loaded: Any, layers: tuple[DenseLayer, ...]) -> Any:
    """The Dense layers as one float32 torch module on the model's device: loaded on first use,
    then shared by every batch (and thread) of this process that runs the same model."""
    with _DENSE_LOCK:
        per_model = _DENSE_CACHE.setdefault(loaded.model, {})
        if layers not in per_model:
            import torch  # the model stack loads where it is used (start-up)

            stack = torch.nn.Sequential(*(_load_dense(layer) for layer in layers))
            per_model[layers] = stack.eval().to(loaded.device)
        return per_model[layers]


def _load_dense(layer: DenseLayer) -> Any:
    import torch  # the model stack loads where it is used (start-up)

    class _Dense(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = torch.nn.Linear(layer.in_features, layer.out_features, bias=layer.bias)
            self.activation = _activation_class(layer.activation, layer.directory)()
            if layer.residual and layer.in_features != layer.out_features:
                self.residual = torch.nn.Linear(layer.in_features, layer.out_features, bias=False)

        def forward(self, x: Any) -> Any:
            out = self.activation(self.linear(x))
            if layer.residual:
                out = out + (self.residual(x) if hasattr(self, "residual") else x)
            return out

    module = _Dense()
    module.load_state_dict(_dense_weights(Path(layer.directory)))
    return module


def _dense_weights(directory: Path) -> dict[str, Any]:
    safe, pickled = (directory / name for name in _DENSE_WEIGHTS)
    if safe.exists():
        from safetensors.torch import load_file  # the model stack loads where it is used (start-up)

        return load_file(str(safe))
    import torch  # the model stack loads where it is used (start-up)

    # models.check_weights has refused this folder already unless pickle weights are allowed;
    # weights_only keeps even then the unpickler to tensors.
    return torch.load(str(pickled), map_location="cpu", weights_only=True)
