"""CPU int8 inference: dynamic quantization of the encoder's linear layers.

What keeps fidelity (all-MiniLM-L6-v2, cosine to the fp32 embeddings; the trade-off table
is in the performance docs and ``python -m benchmarks.int8`` reproduces it):

* weights per output channel, not per tensor: a row's scale follows its own range;
* activations over the full 8-bit range: torch's dynamic ``Linear`` passes
  ``reduce_range=True`` (7-bit activations, a guard against int16 saturation in u8*s8
  pairs on CPUs without VNNI), which alone costs about 0.02 of mean cosine here;
* the model's heads (pooler, classifier, QA span, MLM projection) stay in float32: they
  are a small share of the work and decide the labels.

Per-tensor weights with 7-bit activations (plain ``quantize_dynamic``) give about 0.94
mean cosine; per-channel with 8-bit activations about 0.99.
"""

from __future__ import annotations

import re
from typing import Any

# Linear layers inside the transformer blocks: BERT/RoBERTa ``encoder.layer.N.``,
# DistilBERT ``transformer.layer.N.``. Everything else (heads, pooler) stays float32.
_BLOCK_LINEAR = re.compile(r"(^|\.)layer\.\d+\.")
_ENGINES = ("x86", "fbgemm", "qnnpack")


def _full_range_linear() -> type:
    import torch  # the model stack loads where it is used (start-up)

    # the model stack loads where it is used (start-up)
    from torch.ao.nn.quantized.dynamic import Linear

    class FullRangeDynamicLinear(Linear):
        """Dynamic int8 ``Linear`` that quantizes activations to all 8 bits."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = torch.ops.quantized.linear_dynamic(x, self._packed_params._packed_params,
                                                   reduce_range=False)
            return y.to(x.dtype)

        def _get_name(self) -> str:
            return "FullRangeDynamicQuantizedLinear"

    return FullRangeDynamicLinear


def quantized_layer_names(model: Any) -> list[str]:
    """Names of the ``nn.Linear`` modules that ``quantize_int8`` converts."""
    import torch  # the model stack loads where it is used (start-up)

    return [name for name, module in model.named_modules()
            if type(module) is torch.nn.Linear and _BLOCK_LINEAR.search(name)]


def select_engine() -> str:
    """Picks a quantized engine this torch build supports (x86/fbgemm on Intel and AMD,
    qnnpack on ARM) and makes it current."""
    import torch  # the model stack loads where it is used (start-up)

    supported = torch.backends.quantized.supported_engines
    engine = next((e for e in _ENGINES if e in supported), None)
    if engine is None:
        raise RuntimeError(
            f"This torch build has no int8 CPU engine (supported: {supported}); run without "
            "--quantize int8.")
    torch.backends.quantized.engine = engine
    return engine


def quantize_int8(model: Any, *, inplace: bool = False) -> Any:
    """Returns ``model`` (float32, on the CPU, in eval mode) with the linear layers of its
    transformer blocks dynamically quantized to int8: per-channel weights, 8-bit
    activations; heads stay float32. ``inplace`` converts ``model`` itself instead of a copy
    (a worker's loader, which keeps only the result, saves the copy's memory).

    Example::

        model = quantize_int8(AutoModel.from_pretrained(path).eval())
    """
    import torch  # the model stack loads where it is used (start-up)

    # the model stack loads where it is used (start-up)
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    select_engine()
    names = quantized_layer_names(model)
    if not names:
        raise ValueError(
            f"{type(model).__name__} has no linear layers in transformer blocks "
            "(encoder.layer.N / transformer.layer.N) to quantize.")
    spec = dict.fromkeys(names, per_channel_dynamic_qconfig)
    return quantize_dynamic(model, spec, dtype=torch.qint8,
                            mapping={torch.nn.Linear: _full_range_linear()}, inplace=inplace)
