"""Demo labels, offline: each paragraph of Python's docs labelled with its topic's family.

``bertbeam demo-corpus DIR --labels`` writes ``DIR/train.parquet`` and ``DIR/test.parquet``
(``id``, ``text``, ``label``). A paragraph that several topics share (the ``compound``
topic repeats the ``if``, ``while``, ``try`` ... topics) is kept once, with the label of
the smallest topic that has it, so no text is in both splits. The split is fixed: a hash
of the text sends about one paragraph in five to ``test``.
"""

from __future__ import annotations

import hashlib
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq

from bertbeam.cli.demo import topic_paragraphs

FAMILIES: dict[str, tuple[str, ...]] = {
    "control flow": ("assignment", "async", "await", "augassign", "break", "compound",
                     "context-managers", "continue", "del", "else", "for", "function", "if",
                     "lambda", "pass", "return", "while", "with", "yield"),
    "exceptions": ("assert", "exceptions", "raise", "try"),
    "operators": ("atom-identifiers", "atom-literals", "attribute-references", "binary",
                  "bitwise", "booleans", "calls", "comparisons", "conversions", "exprlists", "in",
                  "operator-summary", "power", "shifting", "slicings", "subscriptions", "unary"),
    "classes": ("attribute-access", "callable-types", "class", "customization", "id-classes",
                "specialattrs", "specialnames"),
    "built-in types": ("bltin-code-objects", "bltin-ellipsis-object", "bltin-null-object",
                       "bltin-type-objects", "dict", "floating", "imaginary", "integers", "lists",
                       "numbers", "numeric-types", "objects", "sequence-types", "truth", "types",
                       "typesfunctions", "typesmapping", "typesmethods", "typesmodules", "typesseq",
                       "typesseq-mutable"),
    "strings": ("formatstrings", "string-methods", "strings"),
    "modules": ("dynamic-features", "execmodel", "global", "identifiers", "import", "naming",
                "nonlocal"),
    "debugging": ("debugger",),
}
"""Demo label -> the pydoc topics it covers. Topics of another Python version that are in
no family are left out."""

_FAMILY = {topic: family for family, topics in FAMILIES.items() for topic in topics}
TEST_SHARE = 5  # one paragraph in five goes to the test split


def demo_labelled() -> list[tuple[str, str]]:
    """``(paragraph, label)`` once per distinct paragraph, in topic order."""
    pairs = topic_paragraphs()
    sizes = Counter(topic for topic, _ in pairs)
    owner: dict[str, str] = {}
    for topic, para in pairs:
        if topic in _FAMILY and (para not in owner or (sizes[topic], topic) < (sizes[owner[para]], owner[para])):
            owner[para] = topic
    return [(para, _FAMILY[topic]) for para, topic in owner.items()]


def write_demo_labels(output_dir: str, *, limit: int | None = None) -> list[str]:
    """Writes ``train.parquet`` and ``test.parquet`` (``id``, ``text``, ``label``) under
    ``output_dir`` (local or any fsspec URL); returns their URLs."""
    import fsspec  # on the first file opened (start-up)

    splits: dict[str, dict[str, list[str]]] = {
        name: {"id": [], "text": [], "label": []} for name in ("train", "test")}
    for i, (text, label) in enumerate(demo_labelled()[:limit]):
        digest = int(hashlib.sha256(text.encode()).hexdigest(), 16)
        rows = splits["test" if digest % TEST_SHARE == 0 else "train"]
        rows["id"].append(f"para-{i:05d}")
        rows["text"].append(text)
        rows["label"].append(label)
    fs, root = fsspec.core.url_to_fs(output_dir)
    fs.makedirs(root, exist_ok=True)
    urls = []
    for name, columns in splits.items():
        path = f"{root.rstrip('/')}/{name}.parquet"
        with fs.open(path, "wb") as f:
            pq.write_table(pa.table(columns), f)
        urls.append(fs.unstrip_protocol(path))
    return urls
