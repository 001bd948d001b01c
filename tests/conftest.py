"""Shared fixtures: tiny random checkpoints (hidden 32, 2 layers, small vocab) per architecture
and head, written once per session; small corpora; a pipeline runner."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

ARCHITECTURES = ("bert", "distilbert", "roberta")
HEADS = {
    "base": "AutoModel",
    "classify": "AutoModelForSequenceClassification",
    "ner": "AutoModelForTokenClassification",
    "qa": "AutoModelForQuestionAnswering",
    "fill-mask": "AutoModelForMaskedLM",
}
CLASS_LABELS = {0: "negative", 1: "neutral", 2: "positive"}
NER_LABELS = {0: "O", 1: "B-PER", 2: "I-PER", 3: "B-LOC", 4: "I-LOC", 5: "B-ORG", 6: "I-ORG"}
VOCAB_SIZE = 1000


def _training_texts() -> list[str]:
    from bertbeam.cli.demo import demo_texts

    return demo_texts()[:1500]


def _build_tokenizer(arch: str, directory: Path):
    """A real fast tokenizer trained on Python's docs: WordPiece (BERT, DistilBERT) or
    byte-level BPE (RoBERTa)."""
    from tokenizers import BertWordPieceTokenizer, ByteLevelBPETokenizer

    directory.mkdir(parents=True, exist_ok=True)
    if arch == "roberta":
        from transformers import RobertaTokenizer

        bpe = ByteLevelBPETokenizer()
        bpe.train_from_iterator(_training_texts(), vocab_size=VOCAB_SIZE, min_frequency=2,
                                special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
        bpe.save_model(str(directory))
        return RobertaTokenizer(vocab=str(directory / "vocab.json"),
                                merges=str(directory / "merges.txt"))
    from transformers import BertTokenizer, DistilBertTokenizer

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    wp = BertWordPieceTokenizer(lowercase=True)
    wp.train_from_iterator(_training_texts(), vocab_size=VOCAB_SIZE, min_frequency=2,
                           special_tokens=specials)
    wp.save_model(str(directory))
    # The trainer picks the same tokens every time but numbers them in hash-map order, which
    # changes from process to process: number them in sorted order, so that the seeded
    # models (and every test that depends on their outputs) are the same in every session.
    vocab = directory / "vocab.txt"
    learned = sorted(set(vocab.read_text(encoding="utf-8").splitlines()) - set(specials))
    vocab.write_text("\n".join(specials + learned) + "\n", encoding="utf-8")
    cls = DistilBertTokenizer if arch == "distilbert" else BertTokenizer
    return cls(vocab=str(directory / "vocab.txt"))


def _build_config(arch: str, tokenizer, head: str):
    from transformers import BertConfig, DistilBertConfig, RobertaConfig

    common = {"vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id}
    if head == "classify":
        common.update(id2label=CLASS_LABELS, label2id={v: k for k, v in CLASS_LABELS.items()})
    elif head == "ner":
        common.update(id2label=NER_LABELS, label2id={v: k for k, v in NER_LABELS.items()})
    if arch == "distilbert":
        return DistilBertConfig(dim=32, n_layers=2, n_heads=2, hidden_dim=64,
                                max_position_embeddings=128, initializer_range=0.2, **common)
    cfg = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
               initializer_range=0.2, **common)
    if arch == "roberta":
        return RobertaConfig(max_position_embeddings=130, bos_token_id=0, eos_token_id=2,
                             type_vocab_size=1, **cfg)
    return BertConfig(max_position_embeddings=128, **cfg)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Callable[[str, str], str]:
    """``tiny_model(arch, head)`` -> directory of a random checkpoint (fixed seed) with its
    tokenizer; ``head`` is one of HEADS. Built once per session and arch/head."""
    import torch
    import transformers

    root = tmp_path_factory.mktemp("tiny-models")
    built: dict[tuple[str, str], str] = {}
    tokenizers: dict[str, object] = {}

    def make(arch: str, head: str = "base") -> str:
        key = (arch, head)
        if key not in built:
            if arch not in tokenizers:
                tokenizers[arch] = _build_tokenizer(arch, root / f"{arch}-tokenizer")
            tokenizer = tokenizers[arch]
            torch.manual_seed(0)
            model = getattr(transformers, HEADS[head]).from_config(_build_config(arch, tokenizer, head))
            directory = root / f"{arch}-{head}"
            model.save_pretrained(directory)
            tokenizer.save_pretrained(directory)
            built[key] = str(directory)
        return built[key]

    return make


@pytest.fixture(scope="session")
def embedded_model_dir() -> str:
    from bertbeam.core.models import resolve_model_dir

    return resolve_model_dir("embedded:all-MiniLM-L6-v2")


def write_corpus(path: Path, columns: dict[str, list], *, row_group_size: int | None = None,
                 schema: pa.Schema | None = None) -> str:
    """Writes one Parquet file and returns its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns, schema=schema), path, row_group_size=row_group_size)
    return str(path)


SAMPLE_TEXTS = [
    "The cat sat on the mat.",
    "Python lists are mutable sequences, typically used to store collections of items.",
    "A for loop iterates over the items of any sequence, in the order that they appear.",
    "Exceptions are raised when an error is detected; handlers catch them.",
    "Paris is the capital of France and John Smith lives in London.",
    "short",
    "The with statement is used to wrap the execution of a block with methods defined by a "
    "context manager. This allows common try except finally usage patterns to be encapsulated.",
    "Numbers: 1, 2, 3.14159 and 2**10 == 1024.",
    "émoji 🙂 and CJK 漢字 and Arabic مرحبا mixed together",
    "def f(x):\n    return x * 2",
]


def run_cli(*argv: str) -> int:
    """Runs the ``bertbeam`` command in-process and returns its exit code."""
    from bertbeam.cli import main

    return main([str(a) for a in argv])


def read_output(directory, prefix: str = "results") -> list[dict]:
    from bertbeam.beam.writing import read_table

    return read_table(str(directory), prefix).to_pylist()


def read_summary(directory) -> dict:
    import json

    return json.loads((Path(directory) / "_SUMMARY.json").read_text())
