"""A Kneser-Ney n-gram over the LM's own tokens, interpolated with the recurrent network.

On a corpus of a few hundred thousand tokens an LSTM and an n-gram make different errors: the
network generalises over contexts, the n-gram remembers exact phrases. Mixing their next-token
probabilities, ``P = w * P_rnn + (1 - w) * P_ngram`` (Mikolov et al. 2011, "RNNLM - Recurrent
Neural Network Language Modeling Toolkit"), is a proper distribution and measured far better than
either alone (zh-rmrb dev references, per character: LSTM 91.0, 4-gram 81.6, mixture 65.2).

The n-gram is interpolated modified Kneser-Ney (Chen & Goodman 1998) stored as sorted integer keys:
an n-gram's key packs its token ids into one int64, ``key(h + w) = key(h) << bits | w``, so every
lookup is one ``torch.searchsorted`` over a table and a whole batch of positions is scored at once.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

MAX_KEY_BITS = 63


class NgramError(ValueError):
    """The n-gram settings cannot work (order too high for the vocabulary, and the like)."""


def key_bits(vocab_size: int) -> int:
    return max(1, (vocab_size - 1).bit_length())


def check_order(order: int, vocab_size: int) -> None:
    if order < 2:
        raise NgramError(f"n-gram order must be at least 2, got {order}")
    if order * key_bits(vocab_size) > MAX_KEY_BITS:
        most = MAX_KEY_BITS // key_bits(vocab_size)
        raise NgramError(f"n-gram order {order} is too high for a vocabulary of {vocab_size} (at most {most})")


def pack(tokens: torch.Tensor, bits: int) -> torch.Tensor:
    """(M, k) token ids -> (M,) int64 keys, the last token in the lowest bits."""
    key = torch.zeros(tokens.shape[0], dtype=torch.int64)
    for j in range(tokens.shape[1]):
        key = (key << bits) | tokens[:, j]
    return key


def lookup(keys: torch.Tensor, values: torch.Tensor, query: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``values`` at ``query`` in the sorted ``keys``: (value or 0, found)."""
    if keys.numel() == 0:
        return torch.zeros(query.shape, dtype=values.dtype), torch.zeros(query.shape, dtype=torch.bool)
    index = torch.searchsorted(keys, query).clamp(max=keys.numel() - 1)
    found = keys[index] == query
    return torch.where(found, values[index], torch.zeros((), dtype=values.dtype)), found


def history_windows(inputs: torch.Tensor, width: int) -> torch.Tensor:
    """The ``width`` tokens up to each position, -1 before ``<s>``.

    inputs (..., L), each row ``<s> w1 .. w_{L-1}`` then anything -> (..., L, width) int64 on the CPU.
    """
    inputs = inputs.to(torch.int64).cpu()
    before = torch.full((*inputs.shape[:-1], width - 1), -1, dtype=torch.int64)
    return torch.cat([before, inputs], dim=-1).unfold(-1, width, 1)

class NgramModel:
    """Interpolated modified Kneser-Ney probabilities over token ids, as sorted key tables.

    For each order k (1..n): ``gram_keys[k]`` / ``gram_direct[k]``, the discounted term
    ``max(c(h, w) - D, 0) / c(h)``; ``context_keys[k]`` / ``context_backoff[k]``, the weight ``gamma(h)``
    of the order below. ``p_k(w | h) = direct + gamma(h) * p_{k-1}(w | h')``, ``p_0`` uniform.
    """

    def __init__(self, order: int, vocab_size: int, tables: dict[str, torch.Tensor]):
        check_order(order, vocab_size)
        self.order, self.vocab_size, self.bits = order, vocab_size, key_bits(vocab_size)
        self.tables = tables

    @property
    def history_width(self) -> int:
        return self.order - 1

    @property
    def num_ngrams(self) -> int:
        return sum(self.tables[f"gram_keys.{k}"].numel() for k in range(1, self.order + 1))

    # -- building --------------------------------------------------------------------------------

    @classmethod
    def build(
        cls, ids: torch.Tensor, offsets: torch.Tensor, order: int, vocab_size: int, bos_id: int, eos_id: int,
        min_count: int = 1,
    ) -> NgramModel:
        """Count a tokenised corpus (``ids`` back to back, sentence ``offsets``) into KN tables.

        ``min_count`` > 1 drops n-grams of order 2 and up seen fewer times (after KN count adjustment);
        their probability mass moves to the order below, so the model stays normalised.
        """
        check_order(order, vocab_size)
        bits = key_bits(vocab_size)
        flat, position = with_boundaries(ids.to(torch.int64), offsets.to(torch.int64), bos_id, eos_id)
        raw: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        for k in range(1, order + 1):
            ends = torch.nonzero(position >= max(k - 1, 1)).squeeze(1)  # windows inside one sentence
            windows = torch.stack([flat[ends - (k - 1 - j)] for j in range(k)], dim=1)
            raw[k] = torch.unique(pack(windows, bits), return_counts=True)
        tables: dict[str, torch.Tensor] = {}
        for k in range(1, order + 1):
            keys, counts = raw[k]
            if k < order:  # continuation counts (distinct left extensions), except for n-grams that start at <s>
                suffix_mask = (1 << (bits * k)) - 1
                suffixes, extensions = torch.unique(raw[k + 1][0] & suffix_mask, return_counts=True)
                continuation, found = lookup(suffixes, extensions, keys)
                starts_with_bos = (keys >> (bits * (k - 1))) == bos_id if k > 1 else torch.zeros_like(found)
                counts = torch.where(starts_with_bos | ~found, counts, continuation)
            tables.update(kneser_ney_order(keys, counts, k, bits, min_count if k >= 2 else 1))
        return cls(order, vocab_size, tables)

    # -- scoring ---------------------------------------------------------------------------------

    def logprobs(self, histories: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """log P(targets[m] | histories[m]): histories (M, n-1) int64 with -1 before ``<s>``, targets (M,)."""
        histories, targets = histories.to(torch.int64).cpu(), targets.to(torch.int64).cpu()
        p = torch.full(targets.shape, 1.0 / self.vocab_size, dtype=torch.float64)
        for k in range(1, self.order + 1):
            context = histories[:, histories.shape[1] - (k - 1) :]
            usable = (context >= 0).all(dim=1)
            context_key = pack(context.clamp(min=0), self.bits)
            backoff, known = lookup(self.tables[f"context_keys.{k}"], self.tables[f"context_backoff.{k}"], context_key)
            gram_key = (context_key << self.bits) | targets
            direct, _ = lookup(self.tables[f"gram_keys.{k}"], self.tables[f"gram_direct.{k}"], gram_key)
            p = torch.where(usable & known, direct + backoff * p, p)
        return p.log()

    def next_logprobs(self, history: torch.Tensor) -> torch.Tensor:
        """log P(w | history) for every token w: history (n-1,) int64 with -1 before ``<s>`` -> (V,)."""
        history = history.to(torch.int64).cpu()
        p = torch.full((self.vocab_size,), 1.0 / self.vocab_size, dtype=torch.float64)
        for k in range(1, self.order + 1):
            context = history[history.numel() - (k - 1) :]
            if (context < 0).any():
                continue
            context_key = pack(context[None], self.bits)
            backoff, known = lookup(self.tables[f"context_keys.{k}"], self.tables[f"context_backoff.{k}"], context_key)
            if not bool(known):
                continue
            keys = self.tables[f"gram_keys.{k}"]
            low, high = torch.searchsorted(keys, torch.cat([context_key << self.bits, (context_key + 1) << self.bits]))
            p = backoff * p
            p[keys[low:high] & ((1 << self.bits) - 1)] += self.tables[f"gram_direct.{k}"][low:high]
        return p.log()

    # -- storage ---------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"order": torch.tensor(self.order), "vocab_size": torch.tensor(self.vocab_size), **self.tables}

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> NgramModel:
        order, vocab_size = int(state["order"]), int(state["vocab_size"])
        kinds = ("gram_keys", "gram_direct", "context_keys", "context_backoff")
        names = [f"{kind}.{k}" for k in range(1, order + 1) for kind in kinds]
        missing = [name for name in names if name not in state]
        if missing:
            raise NgramError(f"n-gram tables incomplete (missing {', '.join(missing[:3])})")
        return cls(order, vocab_size, {name: state[name] for name in names})


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


def kneser_ney_order(
    keys: torch.Tensor, counts: torch.Tensor, k: int, bits: int, min_count: int
) -> dict[str, torch.Tensor]:
    """Discounted terms and back-off weights of one order from its (adjusted) counts."""
    counts = counts.to(torch.float64)
    discounts = modified_discounts(counts)
    discount = discounts[counts.clamp(max=3).long() - 1]
    contexts = keys >> bits if k > 1 else torch.zeros_like(keys)
    context_keys, context_index = torch.unique(contexts, return_inverse=True)
    totals = torch.zeros(context_keys.numel(), dtype=torch.float64).index_add_(0, context_index, counts)
    direct = (counts - discount) / totals[context_index]
    keep = counts >= min_count
    # gamma(h) = 1 - sum of the kept direct terms: the discounted mass plus that of pruned n-grams
    kept_mass = torch.zeros_like(totals).index_add_(0, context_index, torch.where(keep, direct, 0.0))
    backoff = (1.0 - kept_mass).clamp(min=0.0)
    used = torch.zeros(context_keys.numel(), dtype=torch.bool).index_fill_(0, context_index[keep], True)
    return {
        f"gram_keys.{k}": keys[keep],
        f"gram_direct.{k}": direct[keep].to(torch.float32),
        f"context_keys.{k}": context_keys[used],
        f"context_backoff.{k}": backoff[used].to(torch.float32),
    }


def modified_discounts(counts: torch.Tensor) -> torch.Tensor:
    """D1, D2, D3+ from the counts of counts (Chen & Goodman 1998), kept inside (0, c)."""
    n = [float((counts == c).sum()) for c in (1, 2, 3, 4)]
    n = [value if value > 0 else 1.0 for value in n]
    y = n[0] / (n[0] + 2 * n[1])
    d = [1 - 2 * y * n[1] / n[0], 2 - 3 * y * n[2] / n[1], 3 - 4 * y * n[3] / n[2]]
    return torch.tensor([min(max(value, 0.05), c - 0.05) for c, value in zip((1, 2, 3), d)], dtype=torch.float64)


def fit_mixture_weight(
    rnn_logprobs: torch.Tensor,
    ngram_logprobs: torch.Tensor,
    iterations: int = 60,
    reduce: Callable[[list[float]], list[float]] | None = None,
) -> float:
    """The network's share ``w`` in ``w * P_rnn + (1 - w) * P_ngram`` that maximises the likelihood.

    Expectation-maximisation over held-out tokens; ``reduce`` sums the statistics over processes
    when the tokens are split between them.
    """
    a, b = rnn_logprobs.to(torch.float64), ngram_logprobs.to(torch.float64)
    weight = 0.5
    for _ in range(iterations):
        share = math.log(weight) + a
        responsibility = torch.exp(share - torch.logaddexp(share, math.log1p(-weight) + b))
        total, count = float(responsibility.sum()), float(responsibility.numel())
        if reduce is not None:
            total, count = reduce([total, count])
        if count == 0:
            return weight
        weight = min(max(total / count, 1e-3), 1 - 1e-3)
    return weight


def mix_logprobs(rnn_logprobs: torch.Tensor, ngram_logprobs: torch.Tensor, weight: float) -> torch.Tensor:
    """log(w * P_rnn + (1 - w) * P_ngram), elementwise, in float64 (w = 0 or 1: one part alone)."""
    if weight <= 0.0:
        return ngram_logprobs.to(torch.float64)
    if weight >= 1.0:
        return rnn_logprobs.to(torch.float64).cpu()
    a = rnn_logprobs.to(torch.float64).cpu() + math.log(weight)
    return torch.logaddexp(a, ngram_logprobs.to(torch.float64) + math.log1p(-weight))
