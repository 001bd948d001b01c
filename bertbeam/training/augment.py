"""More documents for the teacher to label: seeded variants of the corpus's documents, for
``bertbeam distill`` on a small corpus.

A student learns the teacher's function only where the teacher shows it; a few thousand
documents show it at a few thousand points. Each variant is its document with words masked
(the tokenizer's mask token), replaced by other words of the corpus or dropped, and now and
then cut to a contiguous part (TinyBERT's augmentation, Jiao et al. 2020, with corpus words
in place of GloVe neighbours): texts the teacher has not seen, labelled by it like any
other. Variants are pure transfer data: they carry no gold label and are never held out.

The variants of a document depend only on the seed, the document's id and text, so the
shards a rerun writes are the ones the first run wrote.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

VARIANT_MARK = "~aug"  # variant ids: "<document id>~aug<k>"
CHANGE = 0.15  # the share of words masked or replaced (TinyBERT: 0.4 of words, by neighbours)


@dataclass(frozen=True)
class Variants:
    """The augmented documents: ``ids``, ``texts`` and ``sources`` (the id of the document
    each is a variant of)."""

    ids: list[str]
    texts: list[str]
    sources: list[str]


def variants_per_document(requested: int | None, documents: int, target_rows: int,
                          most: int) -> int:
    """``requested``, or (``None``) as many variants per document as bring the corpus to
    ``target_rows`` documents, at most ``most``; none for a corpus already that large."""
    if requested is not None:
        return requested
    if documents <= 0 or documents >= target_rows:
        return 0
    return min(most, -(-(target_rows - documents) // documents))


def augment(ids: list[str], texts: list[str], *, variants: int, mask_token: str | None,
            change: float, seed: int) -> Variants:
    """``variants`` variants of every document with at least three words.

    Each word is, with probability ``change``, masked (half of those) or replaced by a
    random word of the corpus (the other half), and with ``0.3 * change`` dropped; one
    variant in three is also cut to a contiguous part of at least half its words.
    """
    vocabulary = sorted({w for t in texts for w in t.split()})
    out = Variants([], [], [])
    for doc_id, text in zip(ids, texts, strict=True):
        words = text.split()
        if len(words) < 3:
            continue
        digest = hashlib.sha256(f"{seed}\0{doc_id}\0{text}".encode()).digest()
        rng = random.Random(int.from_bytes(digest[:8], "big"))
        for k in range(variants):
            out.ids.append(f"{doc_id}{VARIANT_MARK}{k}")
            out.texts.append(_variant(words, rng, vocabulary, mask_token, change))
            out.sources.append(doc_id)
    return out


def _variant(words: list[str], rng: random.Random, vocabulary: list[str],
             mask_token: str | None, change: float) -> str:
    kept = []
    for word in words:
        x = rng.random()
        if x < change / 2 and mask_token:
            kept.append(mask_token)
        elif x < change:
            kept.append(rng.choice(vocabulary))
        elif x < change * 1.3:
            continue
        else:
            kept.append(word)
    if len(kept) >= 3 and rng.random() < 1 / 3:
        n = rng.randint(max(2, len(kept) // 2), len(kept))
        start = rng.randint(0, len(kept) - n)
        kept = kept[start:start + n]
    return " ".join(kept) if kept else " ".join(words)
