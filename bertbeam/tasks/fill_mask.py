"""Masked-token prediction: the most likely tokens for each mask token of a document.

Only what the answer needs leaves the device: the vocabulary softmax runs at the mask
positions alone, and each mask ships its top-k scores and token ids ([batch, masks, k]),
never the [length, vocabulary] logits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import pyarrow as pa

from bertbeam.config import check_positive
from bertbeam.core.records import WindowOutput
from bertbeam.core.task import ID_FIELD, MODEL_FIELD, Task, TaskInputError, option

PREDICTION = pa.struct([
    pa.field("token_str", pa.string()),
    pa.field("score", pa.float32()),
    pa.field("sequence", pa.string()),
    pa.field("mask_index", pa.int32()),
])


_LM_HEADS = {
    "BertForMaskedLM": ("cls",),
    "RobertaForMaskedLM": ("lm_head",),
    "XLMRobertaForMaskedLM": ("lm_head",),
    "CamembertForMaskedLM": ("lm_head",),
    "DistilBertForMaskedLM": ("vocab_transform", "activation", "vocab_layer_norm", "vocab_projector"),
}
"""Position-wise modules that map hidden states to vocabulary logits, per architecture."""


def _mask_logits(model: Any, inputs: dict[str, Any], rows: Any, cols: Any) -> Any:
    """Vocabulary logits at the given (row, position) pairs only.

    For known architectures the language-model head runs on the masked positions' hidden
    states alone: the [batch, length, vocabulary] logits are never built (at a 8192-token
    budget and a 30k vocabulary they would take 1 GB). Other architectures run whole.
    """
    head = _LM_HEADS.get(type(model).__name__)
    if head is None:
        return model(**inputs).logits[rows, cols]
    hidden = model.base_model(**inputs)[0][rows, cols]
    for name in head:
        hidden = getattr(model, name)(hidden)
    return hidden


@dataclass(frozen=True, kw_only=True)
class FillMaskTask(Task):
    """Predicts the tokens behind the mask token(s) with an ``AutoModelForMaskedLM`` checkpoint.

    Output columns: ``predictions`` (list of ``{token_str, score, sequence, mask_index}``)
    and ``model``. For each mask, in text order, ``predictions`` holds its ``top_k`` tokens,
    best first; ``mask_index`` is the mask's ordinal (0 for the first mask), so a text with
    one mask gets exactly the ``top_k`` predictions of transformers' fill-mask pipeline.
    ``sequence`` is the text with that one mask filled; as in transformers, it keeps the
    special tokens when the text has several masks, so the other masks stay visible.

    A document must have a mask token within its first window: only the first window is
    read (``long_docs='truncate'``). A document with no mask there goes to the dead letter
    with reason ``bad_task_input``.

    Attributes:
        top_k: predictions per mask (capped at the vocabulary size).

    Example::

        task = FillMaskTask(top_k=3)
        run = RunSpec(model=ModelSpec(uri="models/bert-mlm"), tokenize=TokenizeSpec(long_docs="truncate"))
        out = docs | InferDocuments(task, run=run)
    """

    top_k: int = option(5, "predicted tokens per mask")

    name: ClassVar[str] = "fill-mask"
    model_class: ClassVar[str] = "AutoModelForMaskedLM"
    windows: ClassVar[Literal["all", "first"]] = "first"

    def __post_init__(self) -> None:
        check_positive("top_k", self.top_k)

    def schema(self, config: Any) -> pa.Schema:
        return pa.schema([
            ID_FIELD,
            pa.field("predictions", pa.list_(PREDICTION), nullable=False),
            MODEL_FIELD,
        ])

    def forward(self, engine: Any, inputs: dict[str, Any]) -> dict[str, Any]:
        import torch  # the model stack loads where it is used (start-up)

        input_ids = inputs["input_ids"]
        is_mask = input_ids == engine.tokenizer.mask_token_id
        rows, cols = is_mask.nonzero(as_tuple=True)  # row-major: masks of a row in text order
        logits = _mask_logits(engine.model, inputs, rows, cols)  # [masks in batch, vocab]
        k = min(self.top_k, logits.shape[-1])
        scores, ids = logits.float().softmax(dim=-1).topk(k, dim=-1)
        # Scatter into [batch, most masks in a row, k]; rows with fewer masks are zero-padded
        # and finish() reads as many masks as its window has.
        per_row = is_mask.sum(dim=1)
        width = int(per_row.max()) if rows.numel() else 0
        slot = torch.arange(rows.numel(), device=rows.device) - (per_row.cumsum(0) - per_row)[rows]
        out_scores = scores.new_zeros((input_ids.shape[0], width, k))
        out_ids = torch.zeros_like(out_scores)
        out_scores[rows, slot] = scores
        out_ids[rows, slot] = ids.float()  # exact: float32 holds integers up to 2**24
        return {"scores": out_scores, "token_ids": out_ids}

    def postprocess(self, engine: Any, outputs: list[WindowOutput]) -> dict[str, Any]:
        if len(outputs) > 1:
            raise TaskInputError(
                f"fill-mask reads one window per document, got {len(outputs)}: run it with "
                "long_docs='truncate' (--long-docs truncate).")
        out = outputs[0]
        tokenizer = engine.tokenizer
        input_ids = np.asarray(out.window.input_ids, dtype=np.int64)
        positions = np.flatnonzero(input_ids == tokenizer.mask_token_id)
        if positions.size == 0:
            where = " in its first window (the text was truncated)" if out.window.truncated else ""
            raise TaskInputError(f"the text has no mask token {tokenizer.mask_token!r}{where}.")
        single = positions.size == 1
        predictions = []
        scores, tokens = out.values["scores"], out.values["token_ids"].astype(np.int64)
        for m, position in enumerate(positions):
            for score, token in zip(scores[m], tokens[m], strict=True):
                filled = input_ids.copy()
                filled[position] = token
                # Dropping pad ids matches transformers when the predicted token is the pad token.
                filled = filled[filled != tokenizer.pad_token_id]
                predictions.append({
                    "token_str": tokenizer.decode([int(token)]),
                    "score": float(score),
                    "sequence": tokenizer.decode(filled, skip_special_tokens=single),
                    "mask_index": m,
                })
        return {"predictions": predictions, "model": engine.uri}
