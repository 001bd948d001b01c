"""Where to cut model batches: length-sorted, within a padded-token budget (pure numpy, shared
by the engine, BatchByTokens and training)."""

from __future__ import annotations

import numpy as np


def padded_length(length: int, multiple: int) -> int:
    """``length`` rounded up to a multiple of ``multiple`` (tensor cores and SIMD like it)."""
    return -(-length // multiple) * multiple


def plan_batches(lengths: np.ndarray, token_budget: int, max_batch_size: int, multiple: int = 1,
                 overhead_tokens: int = 64) -> list[tuple[np.ndarray, int]]:
    """Sorts items of ``lengths`` tokens longest first and cuts them into batches of at most
    ``token_budget`` padded tokens and ``max_batch_size`` items; returns each batch's item
    numbers (longest first) and padded length.

    Where to cut is solved exactly (a dynamic programme over the sorted lengths) for the
    least padded tokens plus ``overhead_tokens`` per batch: cutting only by count would put
    a 40-token and a 10-token window in one batch whenever both fit. An item longer than the
    whole budget still gets a batch of its own.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    n = len(lengths)
    if n == 0:
        return []
    order = np.argsort(-lengths, kind="stable")
    padded = -(-lengths[order] // multiple) * multiple
    # best[i]: least cost of batching order[i:]; cut[i]: end of the first batch in that plan.
    best = np.zeros(n + 1, dtype=np.int64)
    cut = np.zeros(n, dtype=np.int64)
    for i in range(n - 1, -1, -1):
        # Sorted descending, so a batch starting at i is padded to padded[i].
        size = max(1, min(max_batch_size, token_budget // int(padded[i]), n - i))
        costs = np.arange(padded[i], (size + 1) * padded[i], padded[i]) + best[i + 1:i + size + 1]
        k = int(np.argmin(costs))
        best[i], cut[i] = costs[k] + overhead_tokens, i + k + 1
    batches, i = [], 0
    while i < n:
        batches.append((order[i:cut[i]], int(padded[i])))
        i = int(cut[i])
    return batches
