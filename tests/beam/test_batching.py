"""plan_batches: sorted, budget-bounded batches padded to their own longest window."""

from __future__ import annotations

import numpy as np
import pytest

from bertbeam.config import BatchSpec
from bertbeam.core.planning import padded_length, plan_batches


def test_padded_length_rounds_up_to_the_multiple():
    assert [padded_length(n, 8) for n in (1, 8, 9, 16, 17)] == [8, 8, 16, 16, 24]
    assert padded_length(13, 1) == 13


@pytest.mark.parametrize("budget", [64, 512, 4096])
def test_batches_respect_the_budget_and_keep_every_window(budget):
    rng = np.random.default_rng(0)
    lengths = np.minimum(rng.pareto(1.5, 500) * 20 + 3, 300).astype(int)
    batches = plan_batches(lengths, budget, 64, 8)
    seen = np.concatenate([rows for rows, _ in batches])
    assert sorted(seen.tolist()) == list(range(len(lengths)))
    for rows, padded in batches:
        assert padded == padded_length(int(lengths[rows].max()), 8)
        assert list(lengths[rows]) == sorted(lengths[rows], reverse=True)
        assert len(rows) <= 64
        assert len(rows) * padded <= budget or len(rows) == 1


def test_sorting_makes_padding_small_on_heavy_tailed_lengths():
    rng = np.random.default_rng(1)
    lengths = (rng.pareto(1.2, 2000) * 16 + 8).astype(int).clip(8, 256)
    batches = plan_batches(lengths, 8192, 256, 1)
    real = sum(int(lengths[rows].sum()) for rows, _ in batches)
    padded = sum(len(rows) * padded for rows, padded in batches)
    assert real / padded > 0.95
    # Arrival order in fixed batches of 32 pads far more: the reason the buffer sorts.
    arrival = sum(32 * lengths[i:i + 32].max() for i in range(0, len(lengths), 32))
    assert real / arrival < 0.7


def test_a_window_longer_than_the_budget_gets_a_batch_of_its_own():
    batches = plan_batches(np.array([300, 5]), 64, 256, 8)
    assert [rows.tolist() for rows, _ in batches] == [[0], [1]]


def test_the_plan_is_the_cheapest_cut_of_the_sorted_lengths():
    """Exhaustive check on small inputs: no other cut of the sorted lengths into contiguous
    batches costs fewer padded tokens plus per-batch overhead."""
    import itertools

    rng = np.random.default_rng(3)
    for _ in range(30):
        lengths = rng.integers(1, 60, size=7)
        budget, overhead = 200, 16
        plan = plan_batches(lengths, budget, 4, 1, overhead)
        cost = sum(len(rows) * padded + overhead for rows, padded in plan)
        ordered = sorted(lengths.tolist(), reverse=True)
        best = None
        for mask in itertools.product([0, 1], repeat=len(ordered) - 1):
            cuts = [0] + [i + 1 for i, m in enumerate(mask) if m] + [len(ordered)]
            parts = [ordered[a:b] for a, b in itertools.pairwise(cuts)]
            if any(len(x) > 4 or (len(x) > 1 and len(x) * x[0] > budget) for x in parts):
                continue
            total = sum(len(x) * x[0] + overhead for x in parts)
            best = total if best is None else min(best, total)
        assert cost == best


@pytest.mark.parametrize("kwargs", [{"token_budget": 0}, {"buffer_size": -1}, {"pad_multiple": 1.5}])
def test_invalid_batch_spec_is_rejected(kwargs):
    with pytest.raises(ValueError, match="positive integer"):
        BatchSpec(**kwargs)


def _reference_cost(lengths: np.ndarray, budget: int, cap: int | None, multiple: int,
                    overhead: int) -> int:
    """The least cost by the item-by-item dynamic programme (what plan_batches computes run
    by run)."""
    padded = -(-np.sort(lengths)[::-1] // multiple) * multiple
    n = len(padded)
    best = [0] * (n + 1)
    for i in range(n - 1, -1, -1):
        size = max(1, min(cap or n, budget // int(padded[i]), n - i))
        best[i] = overhead + min(k * int(padded[i]) + best[i + k] for k in range(1, size + 1))
    return best[0]


@pytest.mark.parametrize("seed", range(4))
def test_the_run_by_run_plan_costs_what_the_item_by_item_programme_does(seed):
    """Longer inputs than the exhaustive check: many runs of equal lengths, batches that
    land several runs further on, caps and multiples, and no cap at all."""
    rng = np.random.default_rng(seed)
    for _ in range(25):
        lengths = rng.integers(1, int(rng.integers(2, 120)), size=int(rng.integers(1, 400)))
        budget, overhead = int(rng.integers(1, 2000)), int(rng.integers(0, 300))
        cap = None if rng.random() < 0.3 else int(rng.integers(1, 50))
        multiple = int(rng.choice([1, 8]))
        plan = plan_batches(lengths, budget, cap, multiple, overhead)
        assert sum(len(rows) * p + overhead for rows, p in plan) == _reference_cost(
            lengths, budget, cap, multiple, overhead)
        assert sorted(np.concatenate([rows for rows, _ in plan]).tolist()) == list(range(len(lengths)))
        assert all(len(rows) <= (cap or len(lengths)) and (len(rows) * p <= budget or len(rows) == 1)
                   for rows, p in plan)
