"""``bertbeam demo-corpus DIR``: a demo corpus made offline from text that ships with
Python (the ``pydoc_data`` topics).

With ``--labels`` it writes demo labels instead: each paragraph labelled with its topic's
family, in ``DIR/train.parquet`` and ``DIR/test.parquet`` (``id``, ``text``, ``label``). A
paragraph that several topics share (the ``compound`` topic repeats the ``if``, ``while``,
``try`` ... topics) is kept once, with the label of the smallest topic that has it, so no
text is in both splits. The split is fixed: a hash of the text sends about one paragraph in
five to ``test``.
"""

from __future__ import annotations

import hashlib
import re
import sys
from collections import Counter
from collections.abc import Sequence
from pydoc_data import topics

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from bertbeam.cli.options import CommandParser, UsageError, positive_int


def topic_paragraphs() -> list[tuple[str, str]]:
    """``(topic name, paragraph)`` for every paragraph of Python's ``pydoc_data`` topics."""
    pairs: list[tuple[str, str]] = []
    for name in sorted(topics.topics):
        for para in re.split(r"\n\s*\n", topics.topics[name]):
            para = " ".join(para.split())
            if len(para) >= 20:
                pairs.append((name, para))
    return pairs


def demo_texts() -> list[str]:
    """Paragraphs of Python's own reference documentation, short ones and long ones."""
    texts = [para for _, para in topic_paragraphs()]
    # Whole topics as long documents: the heavy tail a real corpus has.
    texts += [" ".join(topics.topics[name].split()) for name in sorted(topics.topics)[::12]]
    return texts


def write_demo_corpus(output_dir: str, *, files: int = 2, limit: int | None = None) -> list[str]:
    """Writes ``corpus-NNNNN.parquet`` files with ``id`` and ``text`` columns; returns their paths."""
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


def _other_demo_files(directory: str, *, labels: bool) -> str | None:
    """A file of the other demo kind in ``directory`` (the corpus's ``corpus-*.parquet`` when
    writing the labelled splits, the splits' ``train.parquet`` / ``test.parquet`` when writing
    the corpus), or ``None``."""
    fs, root = fsspec.core.url_to_fs(directory)
    names = (["corpus-*.parquet"] if labels else ["train.parquet", "test.parquet"])
    for name in names:
        found = fs.glob(f"{root.rstrip('/')}/{name}")
        if found:
            return found[0].rsplit("/", 1)[-1]
    return None


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


def parser() -> CommandParser:
    p = CommandParser("bertbeam demo-corpus", "Write a Parquet corpus made from Python's own docs.",
                      epilog=None)
    p.add_argument("directory")
    p.add_argument("--files", type=positive_int, default=2, help="Parquet files to write")
    p.add_argument("--limit", type=positive_int, default=None, help="at most this many documents")
    p.add_argument("--labels", action="store_true",
                   help="write labelled train.parquet and test.parquet (id, text, label) instead")
    return p


def run(argv: Sequence[str]) -> int:
    """``bertbeam demo-corpus DIR [--files N] [--limit N] [--labels]``; returns the exit status."""
    try:
        args = parser().parse_args([str(a) for a in argv])
    except UsageError as exc:
        print(f"bertbeam demo-corpus: error: {exc}", file=sys.stderr)
        return 2
    clash = _other_demo_files(args.directory, labels=args.labels)
    if clash:
        other = "labelled splits" if args.labels else "corpus"
        print(f"bertbeam demo-corpus: error: {args.directory} holds the demo "
              f"{'corpus' if args.labels else 'labelled splits'} ({clash}), which a glob such as "
              f"'{args.directory.rstrip('/')}/*.parquet' would read together with the {other}; "
              f"write them to a folder of their own, e.g. bertbeam demo-corpus "
              f"{args.directory.rstrip('/')}-{'labels' if args.labels else 'corpus'}"
              f"{' --labels' if args.labels else ''}.", file=sys.stderr)
        return 2
    if args.labels:
        paths = write_demo_labels(args.directory, limit=args.limit)
        print(f"wrote {', '.join(paths)}")
        return 0
    paths = write_demo_corpus(args.directory, files=args.files, limit=args.limit)
    print(f"wrote {len(paths)} files to {args.directory}")
    return 0
