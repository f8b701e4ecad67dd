"""A Kneser-Ney n-gram over the LM's own tokens, interpolated with the recurrent network.

On a corpus of a few hundred thousand tokens an LSTM and an n-gram make different errors: the
network generalises over contexts, the n-gram remembers exact phrases. Mixing their next-token
probabilities, ``P = w * P_rnn + (1 - w) * P_ngram`` (Mikolov et al. 2011, "RNNLM - Recurrent
Neural Network Language Modeling Toolkit"), is a proper distribution and measured far better than
either alone (zh-rmrb dev references, per character, the default command's forward model: LSTM 78.5,
4-gram 81.6, mixture 61.4).

The n-gram is interpolated modified Kneser-Ney (Chen & Goodman 1998, counted in ``lm.kneser_ney``)
stored as sorted integer key tables, so every lookup is one ``torch.searchsorted`` and a whole batch of
positions is scored at once. A context of order k (the last k-1 tokens) is known by its index in
``context_keys.k``, whose key is ``(index of the context's last k-2 tokens in context_keys.{k-1}) << bits
| its oldest token``; an n-gram's key is ``(index of its context) << bits | token``. So a key holds one
index and one token whatever the order, and the n-grams of one context are one contiguous range.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch

from lm.kneser_ney import OrderTerms, count_orders, unique_rows

MAX_KEY_BITS = 63
KEY_FORMAT = 2  # context-index keys; files without "key_format" packed every token into a key (format 1)
KINDS = ("gram_keys", "gram_direct", "context_keys", "context_backoff")


class NgramError(ValueError):
    """The n-gram settings or tables cannot work (order too low, tables incomplete, and the like)."""


def key_bits(vocab_size: int) -> int:
    return max(1, (vocab_size - 1).bit_length())


def check_order(order: int) -> None:
    if order < 2:
        raise NgramError(f"n-gram order must be at least 2, got {order}")


def position_of(keys: torch.Tensor, query: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Where each ``query`` is in the sorted ``keys``: (index, found); index is in range when found."""
    if keys.numel() == 0:
        return torch.zeros(query.shape, dtype=torch.int64), torch.zeros(query.shape, dtype=torch.bool)
    index = torch.searchsorted(keys, query).clamp(max=keys.numel() - 1)
    return index, keys[index] == query


def values_where(values: torch.Tensor, index: torch.Tensor, found: torch.Tensor) -> torch.Tensor:
    """``values[index]`` where ``found``, else 0 (``values`` may be empty, when nothing is found)."""
    if values.numel() == 0:
        return torch.zeros(index.shape, dtype=values.dtype)
    return torch.where(found, values[index], torch.zeros((), dtype=values.dtype))


def value_at(keys: torch.Tensor, values: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """``values`` at ``query`` in the sorted ``keys``, 0 where a query is not there."""
    return values_where(values, *position_of(keys, query))


def walk_contexts(
    tables: dict[str, torch.Tensor], bits: int, rows: torch.Tensor
) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """For k = 1 .. w+1, each row's order-k context (its last k-1 tokens): (index in context_keys.k, found).

    rows (M, w) token ids, -1 where there is none (before ``<s>``). Each step extends the context by one
    older token, so a context is found only when all its shorter suffixes are.
    """
    index = torch.zeros(rows.shape[0], dtype=torch.int64)
    found = torch.full((rows.shape[0],), tables["context_keys.1"].numel() > 0)
    yield 1, index, found
    for k in range(2, rows.shape[1] + 2):
        token = rows[:, -(k - 1)]
        key = token.clamp(min=0) if k == 2 else (index << bits) | token.clamp(min=0)
        index, hit = position_of(tables[f"context_keys.{k}"], key)
        found = found & hit & (token >= 0)
        yield k, index, found


def context_index(tables: dict[str, torch.Tensor], bits: int, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row of (M, k-1) tokens as a context of order k: (index in context_keys.k, found)."""
    *_, (_, index, found) = walk_contexts(tables, bits, rows)
    return index, found


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
        check_order(order)
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

        ``min_count`` > 1 drops n-grams of order 2 and up seen fewer times (see ``count_orders``).
        """
        check_order(order)
        return cls.from_terms(vocab_size, count_orders(ids, offsets, order, bos_id, eos_id, min_count))

    @classmethod
    def from_terms(cls, vocab_size: int, terms: list[OrderTerms]) -> NgramModel:
        """Key tables from each order's token rows (``terms[k - 1]`` is order k)."""
        bits = key_bits(vocab_size)
        tables: dict[str, torch.Tensor] = {}
        needed = contexts_closed_under_suffixes([term.contexts for term in terms])
        for k, (term, contexts) in enumerate(zip(terms, needed), start=1):
            keys = context_keys(tables, bits, contexts)
            if keys.numel() >= 1 << (MAX_KEY_BITS - bits):
                raise NgramError(f"{keys.numel()} contexts of order {k} are too many for 64-bit keys")
            tables[f"context_keys.{k}"] = keys
            index, _ = context_index(tables, bits, term.contexts)
            backoff = torch.ones(keys.numel(), dtype=torch.float32)  # a context kept only as a suffix backs off fully
            tables[f"context_backoff.{k}"] = backoff.index_copy_(0, index, term.backoff.to(torch.float32))
            index, _ = context_index(tables, bits, term.grams[:, :-1])
            gram_keys, sort = torch.sort((index << bits) | term.grams[:, -1])
            tables[f"gram_keys.{k}"], tables[f"gram_direct.{k}"] = gram_keys, term.direct.to(torch.float32)[sort]
        return cls(len(terms), vocab_size, tables)

    # -- scoring ---------------------------------------------------------------------------------

    def logprobs(self, histories: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """log P(targets[m] | histories[m]): histories (M, n-1) int64 with -1 before ``<s>``, targets (M,)."""
        histories, targets = histories.to(torch.int64).cpu(), targets.to(torch.int64).cpu()
        histories = histories[:, histories.shape[1] - self.history_width :]
        p = torch.full(targets.shape, 1.0 / self.vocab_size, dtype=torch.float64)
        for k, index, found in walk_contexts(self.tables, self.bits, histories):
            backoff = values_where(self.tables[f"context_backoff.{k}"], index, found)
            direct = value_at(self.tables[f"gram_keys.{k}"], self.tables[f"gram_direct.{k}"], (index << self.bits) | targets)
            p = torch.where(found, direct + backoff * p, p)
        return p.log()

    def next_logprobs(self, history: torch.Tensor) -> torch.Tensor:
        """log P(w | history) for every token w: history (n-1,) int64 with -1 before ``<s>`` -> (V,)."""
        history = history.to(torch.int64).cpu()
        p = torch.full((self.vocab_size,), 1.0 / self.vocab_size, dtype=torch.float64)
        for k, index, found in walk_contexts(self.tables, self.bits, history[None, history.numel() - self.history_width :]):
            if not bool(found):
                continue
            i, keys = int(index), self.tables[f"gram_keys.{k}"]
            low, high = torch.searchsorted(keys, torch.tensor([i << self.bits, (i + 1) << self.bits]))
            p = float(self.tables[f"context_backoff.{k}"][i]) * p
            p[keys[low:high] & ((1 << self.bits) - 1)] += self.tables[f"gram_direct.{k}"][low:high]
        return p.log()

    # -- storage ---------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {
            "order": torch.tensor(self.order), "vocab_size": torch.tensor(self.vocab_size),
            "key_format": torch.tensor(KEY_FORMAT), **self.tables,
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> NgramModel:
        order, vocab_size = int(state["order"]), int(state["vocab_size"])
        key_format = int(state.get("key_format", 1))
        if key_format not in (1, KEY_FORMAT):
            raise NgramError(f"n-gram key format {key_format} is not one this version reads (1, {KEY_FORMAT})")
        names = [f"{kind}.{k}" for k in range(1, order + 1) for kind in KINDS]
        missing = [name for name in names if name not in state]
        if missing:
            raise NgramError(f"n-gram tables incomplete (missing {', '.join(missing[:3])})")
        for k in range(1, order + 1):
            for keys, values in (("gram_keys", "gram_direct"), ("context_keys", "context_backoff")):
                key, value = state[f"{keys}.{k}"], state[f"{values}.{k}"]
                if key.dtype != torch.int64 or key.dim() != 1 or value.shape != key.shape:
                    raise NgramError(f"n-gram tables {keys}.{k} and {values}.{k} do not match")
        if key_format == 1:
            return cls.from_terms(vocab_size, unpack_format_1(state, order, vocab_size))
        return cls(order, vocab_size, {name: state[name] for name in names})


def contexts_closed_under_suffixes(contexts: list[torch.Tensor]) -> list[torch.Tensor]:
    """Each order's context rows plus the last k-2 tokens of every context of order k, distinct and sorted.

    A context's index is found through its suffix's, so each suffix needs a row even where pruning left
    it no n-grams of its own (it then backs off fully, as an absent context does).
    """
    closed = list(contexts)
    for k in range(len(closed), 2, -1):
        suffixes = closed[k - 1][:, 1:]
        if suffixes.shape[0]:
            closed[k - 2] = unique_rows(torch.cat([closed[k - 2], suffixes]))[0]
    return closed


def context_keys(tables: dict[str, torch.Tensor], bits: int, contexts: torch.Tensor) -> torch.Tensor:
    """The sorted keys of order-k contexts (C, k-1), given the tables of the orders below."""
    if contexts.shape[1] == 0:
        return torch.zeros(min(contexts.shape[0], 1), dtype=torch.int64)
    if contexts.shape[1] == 1:
        return torch.sort(contexts[:, 0]).values
    suffix, found = context_index(tables, bits, contexts[:, 1:])
    if not bool(found.all()):
        raise NgramError("n-gram contexts without their suffixes")
    return torch.sort((suffix << bits) | contexts[:, 0]).values


def unpack_format_1(state: dict[str, torch.Tensor], order: int, vocab_size: int) -> list[OrderTerms]:
    """Token rows from the tables of format 1, whose keys packed every token, the last in the lowest bits."""
    bits = key_bits(vocab_size)
    if order * bits > MAX_KEY_BITS:
        raise NgramError(f"n-gram order {order} cannot be held in format-1 keys for a vocabulary of {vocab_size}")

    def rows(keys: torch.Tensor, width: int) -> torch.Tensor:
        shifts = bits * torch.arange(width - 1, -1, -1, dtype=torch.int64)  # the oldest token in the highest bits
        return (keys[:, None] >> shifts) & ((1 << bits) - 1)

    return [
        OrderTerms(rows(state[f"gram_keys.{k}"], k), state[f"gram_direct.{k}"],
                   rows(state[f"context_keys.{k}"], k - 1), state[f"context_backoff.{k}"])
        for k in range(1, order + 1)
    ]


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
