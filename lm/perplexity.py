"""Perplexity of a model on a text, per token, per character and per word.

Per-character and per-word figures let models with different tokenisers be compared; the end of
sentence counts as one unit in each (as n-gram toolkits count it). A model with both directions is
measured as the equal mixture of their sentence probabilities (:func:`mix_directions`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from lm.scorer import SentenceScorer


@dataclass
class PerplexityReport:
    logprob: float  # total natural-log probability
    sentences: int
    tokens: int  # </s> included
    characters: int  # non-space characters, one </s> per sentence included
    words: int  # whitespace-separated words, one </s> per sentence included

    def per(self, units: int) -> float:
        return math.exp(-self.logprob / units) if units else math.nan

    @property
    def ppl_token(self) -> float:
        return self.per(self.tokens)

    @property
    def ppl_char(self) -> float:
        return self.per(self.characters)

    spaced: bool = True  # some sentence has a space: words are meaningful units

    @property
    def ppl_word(self) -> float | None:
        """Per word; None for text without spaces (Chinese), where a "word" would be a whole sentence."""
        return self.per(self.words) if self.spaced else None

    @property
    def ppl_text(self) -> float:
        """Per word for spaced text, else per character: the unit a reader of that language compares."""
        return self.ppl_char if self.ppl_word is None else self.ppl_word

    def as_dict(self) -> dict:
        fields = {k: v for k, v in asdict(self).items() if k != "spaced"}
        return {**fields, "ppl_token": self.ppl_token, "ppl_char": self.ppl_char, "ppl_word": self.ppl_word}

    @classmethod
    def of(cls, sentences: Sequence[str], logprob: float, tokens: int) -> PerplexityReport:
        """The report of ``sentences`` scored ``logprob`` in total over ``tokens`` (``</s>`` included)."""
        return cls(
            logprob=logprob,
            sentences=len(sentences),
            tokens=tokens,
            characters=sum(len(t.replace(" ", "")) + 1 for t in sentences),
            words=sum(len(t.split()) + 1 for t in sentences),
            spaced=any(" " in t for t in sentences),
        )


@dataclass
class SentenceLogprobs:
    """Each sentence's log-probability under one model, and the tokens scored (``</s>`` included)."""

    logprobs: list[float]
    tokens: int

    def report(self, sentences: Sequence[str]) -> PerplexityReport:
        return PerplexityReport.of(sentences, sum(self.logprobs), self.tokens)


def score_sentences(scorer: SentenceScorer, sentences: Sequence[str]) -> SentenceLogprobs:
    scores = scorer.score_detailed(sentences)
    return SentenceLogprobs([s.logprob for s in scores], sum(s.num_tokens for s in scores))


def compute_perplexity(scorer: SentenceScorer, sentences: Sequence[str]) -> PerplexityReport:
    """Score every sentence (duplicates count each time) and total the units."""
    return score_sentences(scorer, sentences).report(sentences)


def mix_directions(sentences: Sequence[str], forward: SentenceLogprobs, backward: SentenceLogprobs) -> PerplexityReport:
    """The report of P(s) = ½ P_forward(s) + ½ P_backward(s) for each sentence.

    Each direction is a distribution over whole sentences, so their mixture is one too: a proper
    perplexity, lower than either where the two are unsure of different sentences. Equal weights,
    since neither direction is the better one in general; the token count is the forward model's
    (both read the same tokens).
    """
    if len(forward.logprobs) != len(sentences) or len(backward.logprobs) != len(sentences):
        raise ValueError("each direction must score every sentence once")
    mixed = np.logaddexp(np.asarray(forward.logprobs), np.asarray(backward.logprobs)) + math.log(0.5)
    return PerplexityReport.of(sentences, float(mixed.sum()), forward.tokens)

