"""The benchmark corpus: the demo corpus in a fixed random order, written once as Parquet.

Every contender reads the same texts. A fixed shuffle (not the demo's alphabetical topic
order) makes a quick-size prefix follow the same heavy-tailed length distribution as the
full size, which the linearity figures rely on. ``long_texts`` joins consecutive texts of the
same stream into documents of many model windows, for the long-document (512-token) runs.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

SEED = 0
CHARS_PER_TOKEN = 3.2  # the demo texts under MiniLM's (BERT's uncased) WordPiece vocabulary


@dataclass(frozen=True)
class Corpus:
    """Texts and where they are written: ``glob`` matches the Parquet files (``id``, ``text``)."""

    texts: list[str]
    glob: str

    @property
    def ids(self) -> list[str]:
        return [f"doc-{i:06d}" for i in range(len(self.texts))]


def benchmark_texts(n: int) -> list[str]:
    """``n`` demo texts in a fixed random order; cycles through the demo corpus past its size."""
    from bertbeam.cli.demo import demo_texts

    if n <= 0:
        raise ValueError(f"The corpus size must be a positive number of documents, got {n!r}.")
    pool = demo_texts()
    random.Random(SEED).shuffle(pool)
    return [pool[i % len(pool)] for i in range(n)]


def long_texts(n: int, *, tokens: int = 2000) -> list[str]:
    """``n`` documents of about ``tokens`` tokens each, each the next benchmark texts joined by
    blank lines; a prefix of ``long_texts(m)`` for ``m > n``."""
    if n <= 0 or tokens <= 0:
        raise ValueError(f"long_texts needs positive n and tokens, got n={n!r}, tokens={tokens!r}.")
    from bertbeam.cli.demo import demo_texts

    target = int(tokens * CHARS_PER_TOKEN)
    pool = benchmark_texts(len(demo_texts()))
    docs, at = [], 0
    for _ in range(n):
        parts, size = [], 0
        while size < target:
            parts.append(pool[at % len(pool)])
            size += len(parts[-1]) + 2
            at += 1
        docs.append("\n\n".join(parts))
    return docs


def write_corpus(directory: str | Path, n: int, *, files: int = 2) -> Corpus:
    """Writes ``n`` benchmark texts to ``directory/corpus-NNNNN.parquet`` and returns them."""
    return write_texts(directory, benchmark_texts(n), files=files)


def write_texts(directory: str | Path, texts: list[str], *, files: int = 2) -> Corpus:
    """Writes ``texts`` with ids ``doc-NNNNNN`` to ``directory/corpus-NNNNN.parquet``."""
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    corpus = Corpus(texts, str(root / "corpus-*.parquet"))
    ids = corpus.ids
    per_file = -(-len(texts) // files)
    for i in range(files):
        part = slice(i * per_file, (i + 1) * per_file)
        table = pa.table({"id": ids[part], "text": texts[part]})
        pq.write_table(table, root / f"corpus-{i:05d}.parquet", row_group_size=1000)
    return corpus
