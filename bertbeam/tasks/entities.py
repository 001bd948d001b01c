"""Named entities: token classification with the aggregation strategies of transformers'
token-classification pipeline (``none``, ``simple``, ``first``, ``average``, ``max``).

The device returns per-token logits; everything else happens per document on the CPU:
softmax over labels, the pipeline's word heuristics, aggregation and grouping of B-/I- tags.

Long documents: windows carry character offsets into the whole document. Their tokens are
laid back into one token sequence; a token that two overlapping windows share keeps the
prediction of the window where it sits farther from the window's edge (more context on
both sides). Aggregation then runs over the whole document, so an entity that crosses a
window border comes out as one entity.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import pyarrow as pa

from bertbeam.config import check_choice
from bertbeam.core.records import WindowOutput
from bertbeam.core.task import (
    CHUNK_FIELDS,
    ID_FIELD,
    MODEL_FIELD,
    Task,
    chunk_columns,
    option,
    softmax,
)

Aggregation = Literal["none", "simple", "first", "average", "max"]

ENTITY = pa.struct([
    pa.field("entity_group", pa.string()),
    pa.field("score", pa.float32()),
    pa.field("word", pa.string()),
    pa.field("start", pa.int32()),
    pa.field("end", pa.int32()),
])


@dataclass(frozen=True, kw_only=True)
class EntitiesTask(Task):
    """Entities per document: ``entities`` (list of ``entity_group, score, word, start,
    end``), ``n_chunks``, ``truncated``, ``model``.

    Options:
        aggregation: how tokens become entities, as in transformers'
            ``TokenClassificationPipeline``: ``none`` (one entry per token, ``entity_group``
            holds the token's label such as ``B-PER``), ``simple`` (adjacent tokens with the
            same tag are grouped), ``first`` / ``average`` / ``max`` (tokens of one word agree
            on the word's label, taken from its first token, the average of its tokens'
            scores, or its most confident token, before grouping).
        ignore_labels: labels dropped from the output (``O`` by default).

    Example::

        out = docs | InferDocuments(EntitiesTask(aggregation="first"), run=RunSpec(
            model=ModelSpec(uri="gs://models/bert-ner")))
    """

    aggregation: Aggregation = option("simple", "how tokens become entities, as in transformers")
    ignore_labels: tuple[str, ...] = ("O",)

    name: ClassVar[str] = "ner"
    model_class: ClassVar[str] = "AutoModelForTokenClassification"
    needs_text: ClassVar[bool] = True
    needs_offsets: ClassVar[bool] = True
    token_level: ClassVar[tuple[str, ...]] = ("logits",)

    def __post_init__(self) -> None:
        check_choice("aggregation", self.aggregation, Aggregation)
        labels = self.ignore_labels
        if isinstance(labels, str) or not all(isinstance(x, str) for x in labels):
            raise ValueError(
                f"ignore_labels must be a sequence of label strings, got {labels!r}.")
        object.__setattr__(self, "ignore_labels", tuple(labels))

    def schema(self, config: Any) -> pa.Schema:
        return pa.schema([
            ID_FIELD,
            pa.field("entities", pa.list_(ENTITY), nullable=False),
            *CHUNK_FIELDS,
            MODEL_FIELD,
        ])

    def forward(self, engine: Any, inputs: dict[str, Any]) -> dict[str, Any]:
        return {"logits": engine.model(**inputs).logits}

    def postprocess(self, engine: Any, outputs: list[WindowOutput]) -> dict[str, Any]:
        text = outputs[0].window.text
        ids, offsets, logits = merge_token_windows(outputs)
        tokens = _Tokens(engine, text, ids, offsets, softmax(logits), self.aggregation)
        return {
            "entities": tokens.entities(self.aggregation, set(self.ignore_labels)),
            **chunk_columns(outputs),
            "model": engine.uri,
        }


def _overlap(previous: np.ndarray, current: np.ndarray) -> int:
    """How many tokens at the start of ``current`` repeat the end of ``previous``.

    Tokens are compared as (id, start, end) rows; offsets are monotone in a document, so
    the longest suffix of ``previous`` equal to a prefix of ``current`` is the stride.
    """
    if len(current) == 0:
        return 0
    for j in np.flatnonzero((previous == current[0]).all(axis=1)):
        n = len(previous) - j
        if n <= len(current) and (previous[j:] == current[:n]).all():
            return int(n)
    return 0


def merge_token_windows(outputs: list[WindowOutput]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One document's tokens (special tokens dropped) from its windows, in order.

    Returns ``ids [T]``, character ``offsets [T, 2]`` and ``logits [T, labels]``. A token in
    two windows takes its logits from the window where it is farther from an edge.
    """
    ids_parts, offset_parts, logit_parts, distance_parts = [], [], [], []
    previous_keys = np.zeros((0, 3), dtype=np.int64)
    for out in outputs:
        w = out.window
        content = w.sequence_ids >= 0
        ids = w.input_ids[content].astype(np.int64)
        offsets = w.offsets[content].astype(np.int64)
        logits = out.values["logits"][content]
        n = len(ids)
        position = np.arange(n)
        distance = np.minimum(position, n - 1 - position)
        keys = np.column_stack([ids, offsets])
        shared = _overlap(previous_keys, keys)
        # The shared tokens are the tail of the previous window's part (a stride over half
        # the window puts a token in three windows: then only the last two compete).
        k = min(shared, len(distance_parts[-1])) if shared else 0
        if k:
            prev_logits, prev_distance = logit_parts[-1][-k:], distance_parts[-1][-k:]
            better = distance[shared - k:shared] > prev_distance
            prev_logits[better] = logits[shared - k:shared][better]
            prev_distance[better] = distance[shared - k:shared][better]
        ids_parts.append(ids[shared:])
        offset_parts.append(offsets[shared:])
        logit_parts.append(logits[shared:].copy())
        distance_parts.append(distance[shared:].copy())
        previous_keys = keys
    return np.concatenate(ids_parts), np.concatenate(offset_parts), np.concatenate(logit_parts)


class _Tokens:
    """A document's tokens with their label scores: ``gather_pre_entities`` of the pipeline."""

    def __init__(self, engine: Any, text: str, ids: np.ndarray, offsets: np.ndarray,
                 scores: np.ndarray, aggregation: str):
        tokenizer = engine.tokenizer
        self._tokenizer = tokenizer
        self._id2label = {int(k): v for k, v in engine.config.id2label.items()}
        self.scores = scores
        self.starts = offsets[:, 0].tolist()
        self.ends = offsets[:, 1].tolist()
        words = tokenizer.convert_ids_to_tokens(ids.tolist())
        unk = tokenizer.unk_token_id
        # WordPiece marks continuation tokens ("##ing"): a token whose string is longer or
        # shorter than its text is a subword. Byte-level BPE has no such marker, and the
        # pipeline falls back to "the character before the token is not a space".
        word_aware = bool(getattr(tokenizer.backend_tokenizer.model, "continuing_subword_prefix", None))
        self.is_subword = []
        if aggregation in ("first", "average", "max"):
            for i, (start, end) in enumerate(zip(self.starts, self.ends, strict=True)):
                if word_aware:
                    sub = len(words[i]) != end - start
                else:
                    sub = start > 0 and " " not in text[start - 1:start + 1]
                self.is_subword.append(sub)
        for i in np.flatnonzero(ids == unk) if unk is not None else ():
            words[i] = text[self.starts[i]:self.ends[i]]
            if self.is_subword:
                self.is_subword[i] = False
        self.words = words

    def entities(self, aggregation: str, ignore: set[str]) -> list[dict[str, Any]]:
        if aggregation in ("none", "simple"):
            best = self.scores.argmax(axis=-1)
            units = [
                (self._id2label[int(k)], self.scores[i, k], self.words[i], self.starts[i], self.ends[i])
                for i, k in enumerate(best)
            ]
        else:
            units = self._words(aggregation)
        if aggregation == "none":
            return [_entity(*u) for u in units if u[0] not in ignore]
        return self._groups(units, ignore)

    def _words(self, aggregation: str) -> list[tuple]:
        """``aggregate_words``: one unit per word, the tokens of a word agreeing on its label."""
        n = len(self.words)
        heads = [i for i in range(n) if i == 0 or not self.is_subword[i]]
        units = []
        for g, head in enumerate(heads):
            stop = heads[g + 1] if g + 1 < len(heads) else n
            rows = self.scores[head:stop]
            if aggregation == "first":
                scores = rows[0]
            elif aggregation == "max":
                scores = rows[int(rows.max(axis=-1).argmax())]
            else:
                scores = rows.mean(axis=0)
            k = int(scores.argmax())
            word = self._tokenizer.convert_tokens_to_string(self.words[head:stop])
            units.append((self._id2label[k], scores[k], word, self.starts[head], self.ends[stop - 1]))
        return units

    def _groups(self, units: list[tuple], ignore: set[str]) -> list[dict[str, Any]]:
        """``group_entities``: adjacent units with the same tag, a ``B-`` tag opening a new group."""
        heads: list[int] = []
        last_tag = None
        for i, unit in enumerate(units):
            bi, tag = _tag(unit[0])
            if not heads or tag != last_tag or bi == "B":
                heads.append(i)
            last_tag = tag
        if not heads:
            return []
        # A group's score is the mean of its units' scores (RunModel lets no NaN through).
        scores = np.array([u[1] for u in units], dtype=np.float64)
        means = np.add.reduceat(scores, heads) / np.diff([*heads, len(units)])
        out = []
        for g, head in enumerate(heads):
            label = units[head][0].split("-", 1)[-1]
            if label in ignore:
                continue
            group = units[head:heads[g + 1] if g + 1 < len(heads) else len(units)]
            word = self._tokenizer.convert_tokens_to_string([u[2] for u in group])
            out.append(_entity(label, means[g], word, group[0][3], group[-1][4]))
        return out


def _tag(label: str) -> tuple[str, str]:
    if label.startswith(("B-", "I-")):
        return label[0], label[2:]
    return "I", label


def _entity(label: str, score: Any, word: str, start: int, end: int) -> dict[str, Any]:
    return {"entity_group": label, "score": float(score), "word": word,
            "start": int(start), "end": int(end)}
