"""A demo corpus made offline from text that ships with Python (the ``pydoc_data`` topics)."""

from __future__ import annotations

import re

import pyarrow as pa
import pyarrow.parquet as pq


def topic_paragraphs() -> list[tuple[str, str]]:
    """``(topic name, paragraph)`` for every paragraph of Python's ``pydoc_data`` topics."""
    from pydoc_data import topics

    pairs: list[tuple[str, str]] = []
    for name in sorted(topics.topics):
        for para in re.split(r"\n\s*\n", topics.topics[name]):
            para = " ".join(para.split())
            if len(para) >= 20:
                pairs.append((name, para))
    return pairs


def demo_texts() -> list[str]:
    """Paragraphs of Python's own reference documentation, short ones and long ones."""
    from pydoc_data import topics

    texts = [para for _, para in topic_paragraphs()]
    # Whole topics as long documents: the heavy tail a real corpus has.
    texts += [" ".join(topics.topics[name].split()) for name in sorted(topics.topics)[::12]]
    return texts


def write_demo_corpus(output_dir: str, *, files: int = 2, limit: int | None = None) -> list[str]:
    """Writes ``corpus-NNNNN.parquet`` files with ``id`` and ``text`` columns; returns their paths."""
    import fsspec

    texts = demo_texts()[:limit]
    fs, root = fsspec.core.url_to_fs(output_dir)
    fs.makedirs(root, exist_ok=True)
    paths = []
    per_file = -(-len(texts) // files)
    for i in range(files):
        part = texts[i * per_file:(i + 1) * per_file]
        ids = [f"doc-{i * per_file + j:06d}" for j in range(len(part))]
        path = f"{root.rstrip('/')}/corpus-{i:05d}.parquet"
        with fs.open(path, "wb") as f:
            pq.write_table(pa.table({"id": ids, "text": part}), f, row_group_size=1000)
        paths.append(fs.unstrip_protocol(path))
    return paths
