"""Sentence scoring: log P(text, </s>) under a model directory, fast and exact.

The production engine (:class:`SentenceScorer`) exploits how redundant n-best lists are:

1. identical texts are scored once;
2. the unique token sequences are sorted and pooled across many utterances into a prefix trie, and
   the recurrent stack runs once per trie node, one batched step per depth;
3. the output layer runs only for the (node, next token) pairs that occur, as logsumexp + gather;
4. a model with an interpolated n-gram mixes its probability into every edge, looked up for all the
   edges of a level at once from each node's last n-1 tokens.

Very long sequences bypass the trie and run in fixed-size chunks with the state carried over, so
memory stays bounded whatever the input. ``score_one_at_a_time`` and ``score_padded`` are the plain
methods the engine is tested and benchmarked against.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import chain

import torch

from lm.checkpoint import LanguageModel
from lm.model import RnnLanguageModel, State, select_state
from lm.ngram import history_windows

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16")


@dataclass
class SentenceScore:
    logprob: float  # natural log, </s> included
    num_tokens: int  # tokens scored, </s> included


@dataclass
class TrieLevel:
    """The trie nodes at one depth, and what is scored from them.

    tokens (N_d,) int64: the token each node consumes; parents (N_d,) positions in the level above;
    ends (E_d,) positions of nodes where a sequence ends, ending (E_d,) those sequences' indices.
    """

    tokens: list[int]
    parents: list[int]
    ends: list[int]
    ending: list[int]


def build_trie(sequences: Sequence[Sequence[int]], bos_id: int) -> list[TrieLevel]:
    """Prefix trie of lexicographically sorted ``sequences``; level 0 is the ``<s>`` root.

    Sorted order means each sequence shares its prefix nodes with the sequence just before it, so
    the trie is built in one pass with no dictionaries.
    """
    levels = [TrieLevel([bos_id], [0], [], [])]
    path: list[int] = [0]  # position, in each level, of the previous sequence's node
    previous: Sequence[int] = ()
    for index, sequence in enumerate(sequences):
        shared = 0
        limit = min(len(previous), len(sequence))
        while shared < limit and previous[shared] == sequence[shared]:
            shared += 1
        del path[shared + 1 :]
        for depth in range(shared + 1, len(sequence) + 1):
            if depth == len(levels):
                levels.append(TrieLevel([], [], [], []))
            level = levels[depth]
            level.tokens.append(sequence[depth - 1])
            level.parents.append(path[depth - 1])
            path.append(len(level.tokens) - 1)
        levels[len(sequence)].ends.append(path[len(sequence)])
        levels[len(sequence)].ending.append(index)
        previous = sequence
    return levels


def padded_width(width: int) -> int:
    """Round a trie level's width up to a multiple of 16 (of 128 past 256 rows).

    oneDNN builds and caches a recurrent kernel per input shape; with every width distinct, that cache
    grew the resident memory without bound (measured: +360 MB over 300 widths) and the rebuilds cost time.
    """
    step = 16 if width <= 256 else 128
    return -(-width // step) * step


def pools_by_budget(lengths: Sequence[int], budget: int) -> list[range]:
    """Consecutive ranges of sequences whose summed length stays within ``budget`` tokens."""
    pools, start, total = [], 0, 0
    for index, length in enumerate(lengths):
        if total and total + length > budget:
            pools.append(range(start, index))
            start, total = index, 0
        total += length
    if start < len(lengths):
        pools.append(range(start, len(lengths)))
    return pools


class SentenceScorer:
    """Scores sentences with a loaded model; load once, call :meth:`score` per batch.

    ``batch_tokens`` bounds the tokens pooled into one trie (memory and latency); ``precision``
    "bf16" runs a bfloat16 copy of the network (fast on CPUs with AMX and on GPUs; off by default
    because scores move by ~1e-3 to 1e-2 nats); ``threads`` sets torch's intra-op threads.
    """

    def __init__(
        self,
        lm: LanguageModel,
        batch_tokens: int = 16384,
        precision: str = "fp32",
        threads: int | None = None,
        long_sequence: int = 1024,
    ):
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        self.lm = lm
        self.model: RnnLanguageModel = lm.model.eval()
        if precision == "bf16":
            # A bfloat16 copy of the weights rather than autocast: no casts per step (measured 1.5x
            # faster than autocast, 2x faster than float32 on an AMX CPU; scripts/bench_rescore.py).
            self.model = copy.deepcopy(lm.model).to(torch.bfloat16).eval()
        self.tokenizer = lm.tokenizer
        self.batch_tokens = batch_tokens
        self.precision = precision
        self.long_sequence = long_sequence
        if threads:
            torch.set_num_threads(threads)

    @property
    def device(self) -> torch.device:
        return self.lm.device

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids in the model's reading order (reversed for a backward model)."""
        ids = self.tokenizer.encode(texts)
        if self.lm.direction == "backward":
            for sequence in ids:
                sequence.reverse()
        return ids

    def score(self, texts: Sequence[str]) -> list[float]:
        """Natural-log probability of each text with ``</s>``, in input order."""
        return [s.logprob for s in self.score_detailed(texts)]

    def score_detailed(self, texts: Sequence[str], progress: Callable[[int], None] | None = None) -> list[SentenceScore]:
        """Scores and token counts; identical texts are tokenised and scored once."""
        unique = list(dict.fromkeys(texts))
        ids = self.encode(unique)
        logprobs = self.score_ids(ids, progress)
        by_text = {text: SentenceScore(lp, len(seq) + 1) for text, seq, lp in zip(unique, ids, logprobs)}
        return [by_text[text] for text in texts]

    def score_ids(self, sequences: Sequence[Sequence[int]], progress: Callable[[int], None] | None = None) -> list[float]:
        """log P(sequence, </s>) for token-id sequences (no <s>/</s> in them)."""
        scores = [0.0] * len(sequences)
        short = [i for i, s in enumerate(sequences) if len(s) < self.long_sequence]
        long = [i for i, s in enumerate(sequences) if len(s) >= self.long_sequence]
        order = sorted(short, key=lambda i: sequences[i])
        with self.inference():
            for pool in pools_by_budget([len(sequences[i]) + 1 for i in order], self.batch_tokens):
                members = [order[k] for k in pool]
                pooled = self.score_trie([sequences[i] for i in members])
                for i, value in zip(members, pooled):
                    scores[i] = value
                if progress:
                    progress(len(members))
            for i in long:
                scores[i] = self.score_chunked(sequences[i])
                if progress:
                    progress(1)
        return scores

    def score_ngram(self, texts: Sequence[str]) -> list[float] | None:
        """log P(text, </s>) under the model's n-gram alone (None for a model without one).

        Table lookups and no network step, so cheap enough to rank many texts before the network scores
        the few worth it (the search in pipeline.search). Texts are pooled by ``batch_tokens``.
        """
        ngram = self.lm.ngram
        if ngram is None:
            return None
        unique = list(dict.fromkeys(texts))
        ids = self.encode(unique)
        by_text = {}
        for pool in pools_by_budget([len(s) + 1 for s in ids], self.batch_tokens):
            by_text.update(zip((unique[i] for i in pool), self.ngram_logprobs([ids[i] for i in pool])))
        return [by_text[text] for text in texts]

    def ngram_logprobs(self, sequences: Sequence[Sequence[int]]) -> list[float]:
        """The n-gram's log P(sequence, </s>) of each sequence, all positions looked up at once."""
        tok, width = self.tokenizer, self.lm.ngram.history_width
        lengths = torch.tensor([len(s) + 1 for s in sequences])  # </s> included
        longest = int(lengths.max())
        positions = torch.arange(longest)[None, :]
        # Targets ``w1 .. wn </s>`` padded with </s>, filled in one call: the search's screen rates about 40 texts
        # for each one the LM scores, and a tensor a row cost more than the n-gram lookups themselves.
        targets = torch.full((len(sequences), longest), tok.eos_id, dtype=torch.int64)  # (B, L)
        tokens = torch.tensor(list(chain.from_iterable(sequences)), dtype=torch.int64)
        targets[positions < lengths[:, None] - 1] = tokens  # row-major order: each sequence in turn
        inputs = torch.cat([torch.full((len(sequences), 1), tok.bos_id, dtype=torch.int64), targets[:, :-1]], dim=1)
        mask = positions < lengths[:, None]  # (B, L): the real positions
        logprobs = self.lm.ngram.logprobs(history_windows(inputs, width)[mask], targets[mask])
        rows = torch.arange(len(sequences))[:, None].expand(-1, longest)[mask]
        return torch.zeros(len(sequences), dtype=torch.float64).index_add_(0, rows, logprobs).tolist()

    @contextlib.contextmanager
    def inference(self):
        with torch.inference_mode():
            yield

    def score_trie(self, sequences: Sequence[Sequence[int]]) -> list[float]:
        """Score sorted sequences through their prefix trie, one batched recurrent step per depth."""
        levels = build_trie(sequences, self.tokenizer.bos_id)
        scores = torch.zeros(len(sequences), dtype=torch.float64)
        state: State | None = None
        cumulative = torch.zeros(1, dtype=torch.float64)  # log-prob of each node's prefix, this level
        histories = self.root_history()
        for depth, level in enumerate(levels):
            width = len(level.tokens)
            filler = padded_width(width) - width  # rows of padding: few distinct shapes, see padded_width
            tokens = torch.tensor(level.tokens + [self.tokenizer.pad_id] * filler, device=self.device)
            parents = torch.tensor(level.parents + [0] * filler, device=self.device)
            if depth:
                state = select_state(state, parents)
            hidden, state = self.model.hidden_states(tokens[:, None], state)
            hidden = hidden[:width, 0]
            cumulative, histories = self.add_step_scores(levels, depth, hidden, cumulative, histories, scores)
        return scores.tolist()

    def root_history(self) -> torch.Tensor | None:
        """The n-gram history of the ``<s>`` node, (1, n-1); None for a model without an n-gram."""
        if self.lm.ngram is None:
            return None
        return torch.tensor([self.lm.start_history()], dtype=torch.int64)

    def add_step_scores(self, levels, depth, hidden, cumulative, histories, scores):
        """Score every edge leaving this level and every sequence ending here, in one output-layer call.

        Returns the next level's prefix scores and n-gram histories.
        """
        level = levels[depth]
        nxt = levels[depth + 1] if depth + 1 < len(levels) else TrieLevel([], [], [], [])
        rows = torch.tensor(nxt.parents + level.ends, dtype=torch.int64, device=self.device)
        targets = torch.tensor(nxt.tokens + [self.tokenizer.eos_id] * len(level.ends), device=self.device)
        logprobs = self.model.gather_logprobs(hidden, rows, targets).double().cpu()
        if histories is not None:
            logprobs = self.lm.mix(logprobs, histories[rows.cpu()], targets.cpu())
        n_edges = len(nxt.tokens)
        if level.ends:
            ends = torch.tensor(level.ends)
            scores[torch.tensor(level.ending)] = cumulative[ends] + logprobs[n_edges:]
        if not nxt.tokens:
            return cumulative, histories
        # Children's prefix scores and histories, in the next level's order: the parent's plus the edge.
        parents = torch.tensor(nxt.parents)
        if histories is not None:
            histories = torch.cat([histories[parents, 1:], torch.tensor(nxt.tokens)[:, None]], dim=1)
        return cumulative[parents] + logprobs[:n_edges], histories

    def score_chunked(self, sequence: Sequence[int], chunk: int = 512) -> float:
        """Score one long sequence in chunks, carrying the recurrent state: memory O(chunk * vocab)."""
        ids = torch.tensor([self.tokenizer.bos_id, *sequence, self.tokenizer.eos_id], device=self.device)
        inputs, targets = ids[:-1], ids[1:]
        state, total = None, 0.0
        for start in range(0, inputs.numel(), chunk):
            hidden, state = self.model.hidden_states(inputs[None, start : start + chunk], state)
            logprobs = self.model.token_logprobs(hidden[0], targets[start : start + chunk]).double().cpu()
            total += float(mix_sentence(self.lm, logprobs, inputs, targets, start).sum())
        return total


def mix_sentence(
    lm: LanguageModel, logprobs: torch.Tensor, inputs: torch.Tensor, targets: torch.Tensor, start: int = 0
) -> torch.Tensor:
    """Mix the n-gram into the network's log-probs of ``targets[start:start + len(logprobs)]``.

    inputs/targets: the whole sentence, ``<s> w1 .. wn`` and ``w1 .. wn </s>``; the n-gram needs the
    tokens before ``start`` as history.
    """
    if lm.ngram is None:
        return logprobs
    end = start + logprobs.numel()
    histories = history_windows(inputs.cpu(), lm.ngram.history_width)[start:end]
    return lm.mix(logprobs, histories, targets.cpu()[start:end])


def score_one_at_a_time(lm: LanguageModel, sequences: Sequence[Sequence[int]]) -> list[float]:
    """The plain reference method: one forward pass per sentence through the training ``forward``."""
    model, tok = lm.model.eval(), lm.tokenizer
    scores = []
    with torch.inference_mode():
        for sequence in sequences:
            x = torch.tensor([[tok.bos_id, *sequence]], device=lm.device)
            y = torch.tensor([[*sequence, tok.eos_id]], device=lm.device)
            nll = model(x, y, torch.tensor([len(sequence) + 1]))
            scores.append(float(mix_sentence(lm, -nll[0].double().cpu(), x[0], y[0]).sum()))
    return scores


def score_padded(lm: LanguageModel, sequences: Sequence[Sequence[int]], batch_tokens: int = 16384) -> list[float]:
    """Length-sorted padded batching (the usual batched method), for comparison with the trie engine."""
    model, tok = lm.model.eval(), lm.tokenizer
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    scores = [0.0] * len(sequences)
    start = 0
    with torch.inference_mode():
        while start < len(order):
            end = start + 1
            while end < len(order) and (end - start + 1) * (len(sequences[order[end]]) + 1) <= batch_tokens:
                end += 1
            batch = order[start:end]
            L = len(sequences[batch[-1]]) + 1
            x = torch.full((len(batch), L), tok.pad_id, dtype=torch.int64)
            y = torch.full((len(batch), L), tok.pad_id, dtype=torch.int64)
            for row, i in enumerate(batch):
                seq = sequences[i]
                x[row, : len(seq) + 1] = torch.tensor([tok.bos_id, *seq])
                y[row, : len(seq) + 1] = torch.tensor([*seq, tok.eos_id])
            lengths = torch.tensor([len(sequences[i]) + 1 for i in batch])
            nll = model(x.to(lm.device), y.to(lm.device), lengths).double().cpu()
            for row, i in enumerate(batch):
                n = int(lengths[row])
                scores[i] = float(mix_sentence(lm, -nll[row, :n], x[row, :n], y[row, :n]).sum())
            start = end
    return scores
