"""Where to cut model batches: length-sorted, within a padded-token budget (pure numpy, shared
by the engine, BatchByTokens and training)."""

from __future__ import annotations

import numpy as np


def padded_length(length: int, multiple: int) -> int:
    """``length`` rounded up to a multiple of ``multiple`` (tensor cores and SIMD like it)."""
    return -(-length // multiple) * multiple


def plan_batches(lengths: np.ndarray, token_budget: int, max_batch_size: int | None,
                 multiple: int = 1, overhead_tokens: int = 64) -> list[tuple[np.ndarray, int]]:
    """Sorts items of ``lengths`` tokens longest first and cuts them into batches of at most
    ``token_budget`` padded tokens and ``max_batch_size`` items (``None``: the budget alone
    decides); returns each batch's item numbers (longest first) and padded length.

    Where to cut is solved exactly for the least padded tokens plus ``overhead_tokens`` per
    batch: cutting only by count would put a 40-token and a 10-token window in one batch
    whenever both fit. An item longer than the whole budget still gets a batch of its own.

    The dynamic programme runs over runs of equal padded length, not item by item: every
    batch that starts in a run of length ``p`` (at most ``K`` items) pads to ``p``, so going
    from the run's item ``b - s`` to a later point ``b + r`` costs ``(s + r) * p`` tokens
    and ``ceil((s + r) / K)`` batches, whatever the cuts in between. Per run that is a
    prefix and a suffix minimum over the ``K`` landing points: a handful of numpy calls per
    distinct length (at most ``max_length`` of them), not a Python step per item; the cuts
    are then read back batch by batch.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    n = len(lengths)
    if n == 0:
        return []
    order = np.argsort(-lengths, kind="stable")
    padded = -(-lengths[order] // multiple) * multiple
    cap = max_batch_size or n
    sizes = np.maximum(1, np.minimum(cap, token_budget // padded))  # items per batch, at most
    # best[i]: least cost of batching order[i:] (the path is read back afterwards).
    best = np.zeros(n + 1, dtype=np.int64)
    steps = np.arange(1, n + 1)
    starts = np.flatnonzero(np.r_[True, padded[1:] != padded[:-1]])
    ends = np.r_[starts[1:], n]
    for a, b in zip(starts[::-1].tolist(), ends[::-1].tolist(), strict=True):
        p, k = int(padded[a]), int(sizes[a])
        # Landing points b + r, r < span: the cost from b on, with r more items padded to p.
        span = min(k, n - b + 1)
        landing = best[b:b + span] + np.arange(0, span * p, p)
        s = steps[:b - a]  # item b - s of the run
        batches = (s + (k - 1)) // k
        reach = batches * k - s  # reachable with `batches` batches: r <= reach
        cost = batches * overhead_tokens + np.minimum.accumulate(landing)[np.minimum(reach, span - 1)]
        if span > 1:  # or one batch more, to land beyond reach
            suffix = np.minimum.accumulate(landing[::-1])[::-1]
            further = (batches + 1) * overhead_tokens + suffix[np.minimum(reach + 1, span - 1)]
            cost = np.where(reach + 1 < span, np.minimum(cost, further), cost)
        best[a:b] = (cost + s * p)[::-1]
    # The cheapest first batch from each batch start on, one batch at a time.
    out, i = [], 0
    while i < n:
        size = min(int(sizes[i]), n - i)
        p = int(padded[i])
        costs = best[i + 1:i + size + 1] + np.arange(p, (size + 1) * p, p)
        end = i + 1 + int(np.argmin(costs))
        out.append((order[i:end], p))
        i = end
    return out
