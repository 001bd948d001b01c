"""BatchByTokens: sorted, budget-bounded batches padded to their own longest window."""

from __future__ import annotations

import numpy as np
import pytest

from bertbeam.batching import cut_batches, padded_length
from bertbeam.config import BatchSpec
from bertbeam.records import Window


def _window(i: int, length: int) -> Window:
    return Window(doc_id=str(i), index=0, n_windows=1, input_ids=np.ones(length, np.int32),
                  type_ids=None, offsets=None, sequence_ids=None)


def test_padded_length_rounds_up_to_the_multiple():
    assert [padded_length(n, 8) for n in (1, 8, 9, 16, 17)] == [8, 8, 16, 16, 24]
    assert padded_length(13, 1) == 13


@pytest.mark.parametrize("budget", [64, 512, 4096])
def test_batches_respect_the_budget_and_keep_every_window(budget):
    rng = np.random.default_rng(0)
    lengths = np.minimum(rng.pareto(1.5, 500) * 20 + 3, 300).astype(int)
    windows = [_window(i, int(n)) for i, n in enumerate(lengths)]
    batches = cut_batches(windows, BatchSpec(token_budget=budget, max_batch_size=64))
    seen = [w.doc_id for b in batches for w in b.windows]
    assert sorted(seen) == sorted(w.doc_id for w in windows)
    for b in batches:
        longest = max(w.length for w in b.windows)
        assert b.padded_length == padded_length(longest, 8)
        assert len(b.windows) <= 64
        assert b.padded_tokens <= budget or len(b.windows) == 1


def test_sorting_makes_padding_small_on_heavy_tailed_lengths():
    rng = np.random.default_rng(1)
    lengths = (rng.pareto(1.2, 2000) * 16 + 8).astype(int).clip(8, 256)
    windows = [_window(i, int(n)) for i, n in enumerate(lengths)]
    batches = cut_batches(windows, BatchSpec(token_budget=8192, pad_multiple=1))
    real = sum(b.real_tokens for b in batches)
    padded = sum(b.padded_tokens for b in batches)
    assert real / padded > 0.95
    # Arrival order in fixed batches of 32 pads far more: the reason the buffer sorts.
    arrival = sum(32 * lengths[i:i + 32].max() for i in range(0, len(lengths), 32))
    assert real / arrival < 0.7


def test_a_window_longer_than_the_budget_gets_a_batch_of_its_own():
    batches = cut_batches([_window(0, 300), _window(1, 5)], BatchSpec(token_budget=64))
    assert [len(b.windows) for b in batches] == [1, 1]


@pytest.mark.parametrize("kwargs", [{"token_budget": 0}, {"buffer_size": -1}, {"pad_multiple": 1.5}])
def test_invalid_batch_spec_is_rejected(kwargs):
    with pytest.raises(ValueError, match="positive integer"):
        BatchSpec(**kwargs)
