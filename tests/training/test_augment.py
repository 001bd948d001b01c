"""``bertbeam distill``'s augmentation (issue 26): seeded variants of each document, the same
on every run and in every order, as many as the corpus needs."""

from __future__ import annotations

import pytest

from bertbeam.training.augment import VARIANT_MARK, augment, variants_per_document

TEXTS = ["the quick brown fox jumps over the lazy dog near the river bank today",
         "exceptions are raised by the raise statement and caught by try",
         "two words"]
IDS = ["a", "b", "c"]


@pytest.mark.parametrize(("requested", "documents", "variants"), [
    (None, 1_555, 4),      # a small corpus: as many as the cap allows
    (None, 3_000, 2),      # 3,000 + 2 x 3,000 >= 8,000
    (None, 8_000, 0),      # large enough already
    (None, 100_000, 0),
    (2, 100_000, 2),       # asked for
    (0, 10, 0),
])
def test_variants_bring_a_small_corpus_to_the_target(requested, documents, variants):
    assert variants_per_document(requested, documents, 8_000, 4) == variants


def test_variants_are_seeded_by_document_not_by_order():
    """The same seed gives the same variants whatever the order of the documents; another
    seed gives others; every variant names its document."""
    one = augment(IDS, TEXTS, variants=3, mask_token="[MASK]", change=0.15, seed=1)
    reversed_ = augment(IDS[::-1], TEXTS[::-1], variants=3, mask_token="[MASK]", change=0.15, seed=1)
    other = augment(IDS, TEXTS, variants=3, mask_token="[MASK]", change=0.15, seed=2)
    assert dict(zip(one.ids, one.texts, strict=True)) == dict(zip(reversed_.ids, reversed_.texts, strict=True))
    assert one.texts != other.texts
    assert one.ids == [f"{d}{VARIANT_MARK}{k}" for d in ("a", "b") for k in range(3)]
    assert one.sources == ["a"] * 3 + ["b"] * 3  # "two words" is too short to vary


def test_variants_change_words_but_keep_most():
    """Masked, replaced, dropped or cut: different from the document, made of its corpus's
    words and the mask token, and never empty."""
    out = augment(IDS, TEXTS, variants=20, mask_token="[MASK]", change=0.15, seed=0)
    vocabulary = {w for t in TEXTS for w in t.split()} | {"[MASK]"}
    assert all(t.strip() and set(t.split()) <= vocabulary for t in out.texts)
    originals = dict(zip(IDS, TEXTS, strict=True))
    changed = sum(t != originals[s] for t, s in zip(out.texts, out.sources, strict=True))
    assert changed >= 0.8 * len(out.texts)
    assert any("[MASK]" in t for t in out.texts)
    assert not any("[MASK]" in t for t in augment(IDS, TEXTS, variants=20, mask_token=None,
                                                 change=0.15, seed=0).texts)
