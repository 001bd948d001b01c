"""Random BERT checkpoints with all-MiniLM-L6-v2's tokenizer, saved as normal checkpoints.

Throughput does not depend on weight values, so a random model of a real shape times as the
trained one does, and a model that costs nearly nothing leaves only the work around it:

  near-zero   hidden 32, 1 layer, 1 head, FFN 37: what bertbeam costs per document when the
              model is (almost) free, as on a fast GPU
  null        no layer at all: the embeddings alone (the word, position and type lookups and
              their layer norm), the least a BERT checkpoint can compute
  bert-base   ``BertConfig()``: 12 layers of 768, the GPU benchmark's compute-bound model
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

SHAPES = {
    "near-zero": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 1,
                  "intermediate_size": 37},
    "null": {"hidden_size": 32, "num_hidden_layers": 0, "num_attention_heads": 1,
             "intermediate_size": 37},
    "bert-base": {},
    "bert-base-smoke": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                        "intermediate_size": 256},
}


def random_bert(root: str | Path, tokenizer_dir: str, shape: str) -> str:
    """Writes a random ``BertModel`` of ``shape`` (a key of :data:`SHAPES`) with the tokenizer
    of ``tokenizer_dir`` to ``root/<shape>`` (seeded: the same weights every time) and returns
    the directory."""
    import torch
    import transformers
    from transformers import AutoTokenizer, BertConfig, BertModel

    transformers.utils.logging.disable_progress_bar()

    if shape not in SHAPES:
        raise ValueError(f"Unknown checkpoint shape {shape!r}; valid: {', '.join(SHAPES)}.")
    tokenizer: Any = AutoTokenizer.from_pretrained(tokenizer_dir)
    directory = Path(root) / shape
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, **SHAPES[shape])
    BertModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return str(directory)
