"""CPU int8 inference: dynamic quantization of the model's linear layers."""

from __future__ import annotations

from typing import Any


def quantize_int8(model: Any) -> Any:
    """Returns ``model`` with its ``nn.Linear`` layers dynamically quantized to int8."""
    import torch

    return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
