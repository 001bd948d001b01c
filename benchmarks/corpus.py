"""The benchmark corpus: the demo corpus in a fixed random order, written once as Parquet.

Every contender reads the same texts. A fixed shuffle (not the demo's alphabetical topic
order) makes a quick-size prefix follow the same heavy-tailed length distribution as the
full size, which the linearity figures rely on.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

SEED = 0


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
    from bertbeam.demo import demo_texts

    if n <= 0:
        raise ValueError(f"The corpus size must be a positive number of documents, got {n!r}.")
    pool = demo_texts()
    random.Random(SEED).shuffle(pool)
    return [pool[i % len(pool)] for i in range(n)]


def write_corpus(directory: str | Path, n: int, *, files: int = 2) -> Corpus:
    """Writes ``n`` benchmark texts to ``directory/corpus-NNNNN.parquet`` and returns them."""
    texts = benchmark_texts(n)
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    corpus = Corpus(texts, str(root / "corpus-*.parquet"))
    ids = corpus.ids
    per_file = -(-n // files)
    for i in range(files):
        part = slice(i * per_file, (i + 1) * per_file)
        table = pa.table({"id": ids[part], "text": texts[part]})
        pq.write_table(table, root / f"corpus-{i:05d}.parquet", row_group_size=1000)
    return corpus
