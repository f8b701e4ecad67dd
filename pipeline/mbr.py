"""Minimum-Bayes-risk choice: the hypothesis with the fewest *expected* word (or character) errors.

Instead of the highest total score, pick ``argmin_h sum_j p_j * edits(h, h_j)`` with ``p`` the n-best
posterior (softmax of ``total_score / T``). It aims the choice at the metric users report: a hypothesis
that agrees with most of the probable ones beats a slightly more probable outlier. Candidates and
evidence are the ``top`` most probable hypotheses (the rest carry little posterior mass); edit distances
are computed one candidate against all evidence at once with numpy.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence

import numpy as np

MBR_TOP = 20  # hypotheses considered, as candidates and as evidence


def edit_distances(hyp: Sequence[int], others: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Levenshtein distances from ``hyp`` to each row of ``others`` (E, L) int, padded past ``lengths``.

    The row recurrence ``cur[j] = min(prev[j] + 1, prev[j-1] + sub, cur[j-1] + 1)`` has a left-to-right
    dependency; it is a running minimum of ``t[k] - k`` shifted back by ``j`` (``t`` the first two
    terms), so each row is a handful of vector operations over all evidence at once.
    """
    E, L = others.shape
    columns = np.arange(L + 1)
    prev = np.broadcast_to(columns, (E, L + 1)).copy()  # distance from the empty prefix of hyp
    for i, unit in enumerate(hyp, 1):
        t = np.empty((E, L + 1), dtype=np.int64)
        t[:, 0] = i
        t[:, 1:] = np.minimum(prev[:, 1:] + 1, prev[:, :-1] + (others != unit))
        prev = np.minimum.accumulate(t - columns, axis=1) + columns
    return prev[np.arange(E), lengths]


def top_hypotheses(totals: Sequence[float], top: int = MBR_TOP) -> list[int]:
    """Indices of the ``top`` highest totals, best first (ties keep input order)."""
    return sorted(range(len(totals)), key=lambda i: -totals[i])[:top]


def pairwise_distances(units: Sequence[Sequence[str]]) -> np.ndarray:
    """(N, N) edit distances between every two unit sequences."""
    vocabulary: dict[str, int] = {}
    ids = [[vocabulary.setdefault(u, len(vocabulary)) for u in seq] for seq in units]
    lengths = np.array([len(seq) for seq in ids], dtype=np.int64)
    padded = np.full((len(ids), max(1, int(lengths.max(initial=0)))), -1, dtype=np.int64)
    for row, seq in enumerate(ids):
        padded[row, :len(seq)] = seq
    return np.stack([edit_distances(seq, padded, lengths) for seq in ids]) if ids else np.zeros((0, 0))


def least_risk(distances: np.ndarray, totals: Sequence[float], temperature: float) -> int:
    """The position with the least expected edits under softmax(totals / T) (the earlier on a tie)."""
    scaled = np.asarray(totals, dtype=np.float64) / temperature
    posterior = np.exp(scaled - scaled.max())
    posterior /= posterior.sum()
    risks = np.round(distances @ posterior, 9)
    return int(np.argmin(risks))


def softmax(totals: Sequence[float], temperature: float) -> list[float]:
    """exp(total / T) normalised over the list: the n-best posterior."""
    if not totals:
        return []
    scaled = [t / temperature for t in totals]
    top = max(scaled)
    exps = [math.exp(v - top) for v in scaled]
    norm = sum(exps)
    return [e / norm for e in exps]


Evidence = tuple[list[int], list[float], np.ndarray]  # top indices (best first), their totals, pairwise edits


def mbr_evidence(units: Sequence[Sequence[str]], totals: Sequence[float], top: int = MBR_TOP) -> Evidence:
    """What the MBR choice needs at any temperature: the ``top`` most probable hypotheses (indices, best
    first), their totals and their pairwise edit distances."""
    order = top_hypotheses(totals, top)
    return order, [totals[i] for i in order], pairwise_distances([units[i] for i in order])


def mbr_index(units: Sequence[Sequence[str]], totals: Sequence[float], temperature: float, top: int = MBR_TOP) -> int:
    """The index (into ``units``) of the hypothesis with the least expected errors; -1 for an empty list."""
    if not units:
        return -1
    order, top_totals, distances = mbr_evidence(units, totals, top)
    return order[least_risk(distances, top_totals, temperature)]


def best_mbr_temperature(evidence: Sequence[Evidence | None],
                         errors: Callable[[int, int | None], int]) -> tuple[float, int]:
    """The MBR temperature with the fewest dev errors, on a log grid scaled to the lists' spread of totals
    (the lower temperature on a tie). ``evidence[u]`` is list u's (None: an empty list) and
    ``errors(u, index)`` the errors of choosing its hypothesis ``index`` (None: the empty output)."""
    spreads = [statistics.pstdev(item[1]) for item in evidence if item and len(item[1]) > 1]
    scale = statistics.median(spreads) if spreads and statistics.median(spreads) > 0 else 1.0
    best: tuple[int, float] | None = None
    for k in range(-16, 13):
        temperature = scale * 2 ** (k / 2)
        total = 0
        for u, item in enumerate(evidence):
            if item is None:
                total += errors(u, None)
                continue
            order, top_totals, distances = item
            total += errors(u, order[least_risk(distances, top_totals, temperature)])
        if best is None or total < best[0]:
            best = (total, temperature)
    return best[1], best[0]
