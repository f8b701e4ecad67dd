"""Counting a tokenised corpus into interpolated modified Kneser-Ney terms (Chen & Goodman 1998).

The counts and terms are kept as token rows, ``(N, k)`` int64 tensors, one row per distinct n-gram;
``lm.ngram`` turns them into the sorted key tables it scores with.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class OrderTerms:
    """One order's kept n-grams with their discounted terms, and the contexts with their back-off weights.

    ``grams`` (N, k) token rows with ``direct`` = max(c(h, w) - D, 0) / c(h); ``contexts`` (C, k-1) rows
    with ``backoff`` = gamma(h), the weight of the order below.
    """

    grams: torch.Tensor
    direct: torch.Tensor
    contexts: torch.Tensor
    backoff: torch.Tensor


def count_orders(
    ids: torch.Tensor, offsets: torch.Tensor, order: int, bos_id: int, eos_id: int, min_count: int = 1
) -> list[OrderTerms]:
    """Kneser-Ney terms of orders 1..``order`` over ``ids`` (sentences back to back, split at ``offsets``).

    ``min_count`` > 1 drops n-grams of order 2 and up seen fewer times (after KN count adjustment);
    their probability mass moves to the order below, so the model stays normalised.
    """
    flat, position = with_boundaries(ids.to(torch.int64), offsets.to(torch.int64), bos_id, eos_id)
    raw = [distinct_windows(flat, position, k) for k in range(1, order + 1)]
    terms = []
    for k in range(1, order + 1):
        rows, counts = raw[k - 1]
        if k < order:  # continuation counts (distinct left extensions), except for n-grams that start at <s>
            extensions = count_left_extensions(rows, raw[k][0])
            starts_with_bos = rows[:, 0] == bos_id if k > 1 else torch.zeros_like(counts, dtype=torch.bool)
            counts = torch.where(starts_with_bos | (extensions == 0), counts, extensions)
        terms.append(kneser_ney_order(rows, counts, min_count if k >= 2 else 1))
    return terms


def with_boundaries(
    ids: torch.Tensor, offsets: torch.Tensor, bos_id: int, eos_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``<s> sentence </s>`` for every sentence, back to back, and each token's position in its sentence."""
    lengths = offsets[1:] - offsets[:-1]
    starts = offsets[:-1] + 2 * torch.arange(lengths.numel())
    total = int(ids.numel() + 2 * lengths.numel())
    flat = torch.empty(total, dtype=torch.int64)
    sentence = torch.repeat_interleave(torch.arange(lengths.numel()), lengths + 2)
    position = torch.arange(total) - starts[sentence]
    inside = (position >= 1) & (position <= lengths[sentence])
    flat[inside] = ids
    flat[position == 0] = bos_id
    flat[position == lengths[sentence] + 1] = eos_id
    return flat, position


def distinct_windows(flat: torch.Tensor, position: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The distinct k-token windows inside one sentence (none ends at ``<s>``) and how often each occurs."""
    ends = torch.nonzero(position >= max(k - 1, 1)).squeeze(1)
    windows = torch.stack([flat[ends - (k - 1 - j)] for j in range(k)], dim=1)
    rows, _, counts = unique_rows(windows)
    return rows, counts


def count_left_extensions(rows: torch.Tensor, longer: torch.Tensor) -> torch.Tensor:
    """For each k-gram row, how many distinct (k+1)-gram rows of ``longer`` end with it."""
    if longer.shape[0] == 0 or rows.shape[0] == 0:
        return torch.zeros(rows.shape[0], dtype=torch.int64)
    _, inverse, _ = unique_rows(torch.cat([rows, longer[:, 1:]]))
    per_row = torch.bincount(inverse[rows.shape[0] :], minlength=int(inverse.max()) + 1)
    return per_row[inverse[: rows.shape[0]]]


def kneser_ney_order(rows: torch.Tensor, counts: torch.Tensor, min_count: int) -> OrderTerms:
    """Discounted terms and back-off weights of one order from its (adjusted) counts."""
    if rows.shape[0] == 0:
        empty = torch.zeros(0, dtype=torch.float32)
        return OrderTerms(rows, empty, rows.new_zeros((0, rows.shape[1] - 1)), empty)
    counts = counts.to(torch.float64)
    discounts = modified_discounts(counts)
    discount = discounts[counts.clamp(max=3).long() - 1]
    if rows.shape[1] > 1:
        contexts, context_index, _ = unique_rows(rows[:, :-1])
    else:  # unigrams: one empty context
        contexts, context_index = rows.new_zeros((1, 0)), torch.zeros(rows.shape[0], dtype=torch.int64)
    totals = torch.zeros(contexts.shape[0], dtype=torch.float64).index_add_(0, context_index, counts)
    direct = (counts - discount) / totals[context_index]
    keep = counts >= min_count
    # gamma(h) = 1 - sum of the kept direct terms: the discounted mass plus that of pruned n-grams
    kept_mass = torch.zeros_like(totals).index_add_(0, context_index, torch.where(keep, direct, 0.0))
    backoff = (1.0 - kept_mass).clamp(min=0.0)
    used = torch.zeros(contexts.shape[0], dtype=torch.bool).index_fill_(0, context_index[keep], True)
    return OrderTerms(rows[keep], direct[keep].to(torch.float32), contexts[used], backoff[used].to(torch.float32))


def unique_rows(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``torch.unique(rows, dim=0, return_inverse=True, return_counts=True)`` for non-negative ids, faster.

    Ranks the rows one column at a time (the rank so far, shifted, with the next column), so every step
    is a one-dimensional unique; the distinct rows come out in the same lexicographic order.
    """
    count, width = rows.shape
    if count == 0:
        return rows, torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.int64)
    bits = max(1, int(rows.max()).bit_length())
    rank = torch.zeros(count, dtype=torch.int64)
    for j in range(width):
        rank = torch.unique((rank << bits) | rows[:, j], return_inverse=True)[1]
    distinct = int(rank.max()) + 1
    first = torch.full((distinct,), count, dtype=torch.int64).scatter_reduce_(0, rank, torch.arange(count), "amin")
    return rows[first], rank, torch.bincount(rank, minlength=distinct)


def modified_discounts(counts: torch.Tensor) -> torch.Tensor:
    """D1, D2, D3+ from the counts of counts (Chen & Goodman 1998), kept inside (0, c)."""
    n = [float((counts == c).sum()) for c in (1, 2, 3, 4)]
    n = [value if value > 0 else 1.0 for value in n]
    y = n[0] / (n[0] + 2 * n[1])
    d = [1 - 2 * y * n[1] / n[0], 2 - 3 * y * n[2] / n[1], 3 - 4 * y * n[3] / n[2]]
    return torch.tensor([min(max(value, 0.05), c - 0.05) for c, value in zip((1, 2, 3), d)], dtype=torch.float64)
