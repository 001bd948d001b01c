"""Labelled rows from Parquet (local, ``gs://``, any fsspec URL), checked and split.

Rows a model cannot learn from (a null or empty text or label, tags that do not match the
tokens) are skipped and counted by reason in :class:`Skips`; data that cannot train a
model at all (a missing column, fewer than two classes) raises :class:`TrainingDataError`.

Word-level data (``ner``) is a list of tokens and a list of BIO tags per row. The text
that the model reads, in training and in ``bertbeam label``, is the row's text column
when it has one (the tokens are found in it in order), else ``" ".join(tokens)``.
"""

from __future__ import annotations

import random
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from bertbeam.filesystems import expand_glob

_BIO = re.compile(r"^(O|[BI]-.+)$")
_SHOWN_IDS = 5


class TrainingDataError(ValueError):
    """The labelled data cannot be used as asked (no files, a missing column, one class)."""


@dataclass
class Skips:
    """Rows left out, by reason, with the first few ids of each reason."""

    counts: Counter = field(default_factory=Counter)
    ids: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))

    def add(self, reason: str, row_id: str) -> None:
        self.counts[reason] += 1
        if len(self.ids[reason]) < _SHOWN_IDS:
            self.ids[reason].append(row_id)

    def total(self) -> int:
        return sum(self.counts.values())

    def describe(self) -> str:
        """One line: ``3 null or empty label (ids: a, b, c); 1 ...``."""
        return "; ".join(f"{n} {reason} (ids: {', '.join(self.ids[reason])}"
                         f"{', …' if n > len(self.ids[reason]) else ''})"
                         for reason, n in sorted(self.counts.items()))

    def as_dict(self) -> dict[str, Any]:
        return {reason: {"rows": n, "first_ids": self.ids[reason]}
                for reason, n in sorted(self.counts.items())}


def expand(pattern: str) -> list[str]:
    """Sorted full URLs of the files matching ``pattern``; an error when there are none."""
    files = expand_glob(pattern)
    if not files:
        raise TrainingDataError(f"{pattern!r} matches no files.")
    return files


def read_columns(pattern: str, required: list[str], optional: tuple[str, ...] = ()) -> pa.Table:
    """The ``required`` (and any present ``optional``) columns of every file of ``pattern``,
    in file order; an error naming the file and its columns when one lacks a required one."""
    import fsspec  # on the first file opened (start-up)

    tables = []
    for url in expand(pattern):
        fs, path = fsspec.core.url_to_fs(url)
        try:
            with fs.open(path, "rb") as f:
                parquet = pq.ParquetFile(f)
                names = parquet.schema_arrow.names
                missing = [c for c in required if c not in names]
                if missing:
                    raise TrainingDataError(
                        f"{url!r} has no column {missing[0]!r}; its columns are: {', '.join(names)}.")
                table = parquet.read(columns=required + [c for c in optional if c in names])
        except (OSError, pa.ArrowException) as exc:
            raise TrainingDataError(f"{url!r} is not readable Parquet: {exc}") from exc
        tables.append(table)
    return pa.concat_tables(tables, promote_options="permissive")


def _row_ids(table: pa.Table, id_column: str) -> list[str]:
    """Ids for messages: the id column where there is one, else ``row N``."""
    if id_column in table.column_names:
        return [f"row {i}" if v is None else str(v)
                for i, v in enumerate(table.column(id_column).to_pylist())]
    return [f"row {i}" for i in range(table.num_rows)]


def _usable_text(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


class _NotUtf8:
    """A string value whose bytes are not valid UTF-8 (the row is skipped and counted)."""


NOT_UTF8 = _NotUtf8()


def strings(column: pa.ChunkedArray) -> list[Any]:
    """The column's values as Python objects; a string whose bytes are not valid UTF-8
    becomes :data:`NOT_UTF8` instead of failing the whole column."""
    try:
        return column.to_pylist()
    except UnicodeDecodeError:
        pass
    binary = pa.large_binary() if pa.types.is_large_string(column.type) else pa.binary()
    out: list[Any] = []
    for chunk in column.chunks:
        for value in chunk.view(binary).to_pylist():
            try:
                out.append(None if value is None else value.decode("utf-8"))
            except UnicodeDecodeError:
                out.append(NOT_UTF8)
    return out


def _check_label_type(table: pa.Table, label_column: str, multi_label: bool) -> None:
    """Labels are names: strings or integers (lists of them with ``multi_label``). A float
    column would make every label a different-looking number, so it is refused."""
    kind = table.schema.field(label_column).type
    inner = kind.value_type if pa.types.is_list(kind) or pa.types.is_large_list(kind) else kind
    if pa.types.is_dictionary(inner):
        inner = inner.value_type
    if pa.types.is_floating(inner) or pa.types.is_decimal(inner):
        raise TrainingDataError(
            f"Label column {label_column!r} holds {kind} numbers; labels must be strings or "
            f"integers{' (lists of them with --multi-label)' if multi_label else ''}. Cast the "
            "column first, e.g. 1.0 -> 1 or 'class-1'.")


@dataclass
class Examples:
    """Rows ready to tokenize: a text each, and a label (``classify``: a name, or a list of
    names when multi-label) or word spans and tags (``ner``)."""

    ids: list[str]
    texts: list[str]
    labels: list[Any]
    spans: list[list[tuple[int, int]]] | None = None  # ner: character span of each word

    def subset(self, keep: list[int]) -> Examples:
        def pick(values: list | None) -> list | None:
            return None if values is None else [values[i] for i in keep]

        return Examples(pick(self.ids), pick(self.texts), pick(self.labels), pick(self.spans))

    def __len__(self) -> int:
        return len(self.ids)


def classify_examples(table: pa.Table, *, text_column: str, label_column: str, id_column: str,
                      multi_label: bool, skips: Skips) -> Examples:
    """Rows with a usable text and a non-empty label (a list of them when ``multi_label``)."""
    _check_label_type(table, label_column, multi_label)
    ids = _row_ids(table, id_column)
    out = Examples([], [], [])
    for row_id, text, label in zip(ids, strings(table.column(text_column)),
                                   strings(table.column(label_column)), strict=True):
        if text is NOT_UTF8 or label is NOT_UTF8:
            skips.add(f"{'text' if text is NOT_UTF8 else 'label'} not valid UTF-8", row_id)
            continue
        if multi_label:
            label = [label] if isinstance(label, str) else label
            label = sorted({str(x) for x in label or () if _usable_text(x) or isinstance(x, int)})
            bad = not label
        else:
            bad = not _usable_text(label) if not isinstance(label, int) else False
            label = None if bad else str(label)
        if not _usable_text(text):
            skips.add("null or empty text", row_id)
        elif bad:
            skips.add("null or empty label", row_id)
        else:
            out.ids.append(row_id)
            out.texts.append(text)
            out.labels.append(label)
    return out


def word_spans(text: str, tokens: list[str]) -> list[tuple[int, int]] | None:
    """The character span of each token in ``text``, found in order; None when a token is
    not there."""
    spans, at = [], 0
    for token in tokens:
        start = text.find(token, at)
        if start < 0 or not token:
            return None
        at = start + len(token)
        spans.append((start, at))
    return spans


def ner_examples(table: pa.Table, *, tokens_column: str, tags_column: str, text_column: str,
                 id_column: str, skips: Skips) -> Examples:
    """Rows whose tokens and BIO tags are lists of the same, non-zero length; the text is the
    text column when the table has one, else the tokens joined by single spaces."""
    ids = _row_ids(table, id_column)
    texts = (strings(table.column(text_column)) if text_column in table.column_names
             else [None] * table.num_rows)
    out = Examples([], [], [], [])
    try:
        words, labels = table.column(tokens_column).to_pylist(), table.column(tags_column).to_pylist()
    except UnicodeDecodeError as exc:
        raise TrainingDataError(
            f"Column {tokens_column!r} or {tags_column!r} holds a string that is not valid UTF-8 "
            f"({exc.reason} at byte {exc.start}); re-encode the data as UTF-8.") from exc
    for row_id, tokens, tags, text in zip(ids, words, labels, texts, strict=True):
        if text is NOT_UTF8:
            skips.add("text not valid UTF-8", row_id)
            continue
        if not tokens or not all(_usable_text(t) for t in tokens):
            skips.add("null or empty tokens", row_id)
            continue
        if not tags or len(tags) != len(tokens):
            skips.add("tags missing or not one per token", row_id)
            continue
        bad = next((t for t in tags if not isinstance(t, str) or not _BIO.match(t)), False)
        if bad is not False:
            raise TrainingDataError(
                f"Row {row_id!r} has tag {bad!r}, which is not a BIO tag; valid tags are 'O', "
                f"'B-TYPE' and 'I-TYPE'.")
        text = text if _usable_text(text) else " ".join(tokens)
        spans = word_spans(text, tokens)
        if spans is None:
            skips.add(f"tokens not found in order in {text_column!r}", row_id)
            continue
        out.ids.append(row_id)
        out.texts.append(text)
        out.labels.append(list(tags))
        out.spans.append(spans)
    return out


def label_names(examples: Examples, task: str, *, multi_label: bool) -> list[str]:
    """The model's labels: sorted class names, or for ``ner`` ``O`` then ``B-``/``I-`` of
    every entity type seen (both, so the tagger can continue any entity it starts)."""
    if task == "ner":
        types = sorted({t[2:] for tags in examples.labels for t in tags if t != "O"})
        return ["O"] + [f"{p}-{t}" for t in types for p in "BI"]
    if multi_label:
        return sorted({x for labels in examples.labels for x in labels})
    return sorted(set(examples.labels))


def check_classes(names: list[str], task: str, source: str) -> None:
    if task == "ner" and len(names) < 2:
        raise TrainingDataError(f"{source} has no entity tags (only 'O'); a tagger needs at least one "
                                "entity type.")
    if task == "classify" and len(names) < 2:
        raise TrainingDataError(
            f"{source} has {len(names)} class{'es' if len(names) != 1 else ''} "
            f"({', '.join(map(repr, names)) or 'none'}); a classifier needs at least two.")


def check_eval_labels(train_names: list[str], eval_examples: Examples, task: str,
                      multi_label: bool) -> None:
    """Fails when the evaluation rows use a label the training rows never do."""
    known = set(train_names)
    unseen = Counter()
    for label in eval_examples.labels:
        values = label if (multi_label or task == "ner") else [label]
        unseen.update(v for v in values if v not in known)
    if unseen:
        label, n = unseen.most_common(1)[0]
        raise TrainingDataError(
            f"Eval label {label!r} ({n} rows; {len(unseen)} unseen label(s) in all) does not occur "
            f"in the training rows, so the model cannot predict it. Training labels: "
            f"{', '.join(train_names)}.")


def split(examples: Examples, fraction: float, seed: int, *, stratify: bool) -> tuple[Examples, Examples]:
    """(train, eval): ``fraction`` of the rows held out, seeded; with ``stratify`` the same
    fraction of every label, and at least one row of each label stays in training."""
    rng = random.Random(seed)
    groups: dict[Any, list[int]] = defaultdict(list)
    for i, label in enumerate(examples.labels):
        groups[label if stratify else None].append(i)
    held: list[int] = []
    for key in sorted(groups, key=str):
        rows = groups[key]
        rng.shuffle(rows)
        held += rows[:min(round(len(rows) * fraction), len(rows) - 1)]
    held_set = set(held)
    keep = [i for i in range(len(examples)) if i not in held_set]
    return examples.subset(keep), examples.subset(sorted(held))
