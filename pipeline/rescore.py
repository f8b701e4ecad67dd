"""Combining first-pass scores with LM scores and re-ranking n-best lists.

    total_score = sum_f weight_f * hyp[f]           (the first-pass fields; by default just "score")
                + lm_weight * lm_logprob            (our forward LM, natural log, </s> included)
                + backward_weight * lm_logprob_backward   (optional right-to-left LM)
                + length_bonus * length             (words, or characters for Chinese)

Ranking is stable: equal totals keep the first-pass order.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from lm.scorer import SentenceScorer
from pipeline.errors import WeightsFileError
from pipeline.metrics import detect_unit, split_units

log = logging.getLogger(__name__)


@dataclass
class Weights:
    """How the scores are combined; ``asr-rescore tune`` finds them, ``rescore --weights`` reads them."""

    lm_weight: float = 1.0
    length_bonus: float = 0.0
    score_fields: dict[str, float] = field(default_factory=lambda: {"score": 1.0})
    backward_weight: float = 0.0

    def save(self, path: Path, extra: dict | None = None) -> None:
        from lm.checkpoint import atomic_write_json

        atomic_write_json(Path(path), {"weights": asdict(self), **(extra or {})})

    @classmethod
    def load(cls, path: Path) -> Weights:
        """Read the ``weights`` object of a file written by ``tune`` (or a bare weights object)."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError as e:
            raise WeightsFileError(f"{path}: no such weights file") from e
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise WeightsFileError(f"{path}: not valid JSON ({e})") from e
        data = data.get("weights", data) if isinstance(data, dict) else data
        try:
            weights = cls(**data)
            numbers = weights.numbers()
        except (TypeError, AttributeError) as e:
            raise WeightsFileError(f"{path}: expected a 'weights' object with {', '.join(cls.__dataclass_fields__)} ({e})") from e
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in numbers):
            raise WeightsFileError(f"{path}: every weight must be a finite number")
        return weights

    def numbers(self) -> list[float]:
        return [self.lm_weight, self.length_bonus, self.backward_weight, *self.score_fields.values()]


def text_length(text: str, unit: str) -> int:
    """Length for the length bonus: words for spaced text, characters for Chinese."""
    return len(split_units(text, unit))


@dataclass
class RescoreResult:
    """The outcome for one utterance, in the input order of its hypotheses."""

    best: str
    best_index: int  # -1 for an empty list
    total_scores: list[float]
    lm_logprobs: list[float]
    ranks: list[int]
    backward_logprobs: list[float] | None = None


def rank_order(totals: Sequence[float]) -> list[int]:
    """1-based ranks, highest total first; ties keep input (first-pass) order."""
    order = sorted(range(len(totals)), key=lambda i: -totals[i])  # sorted() is stable
    ranks = [0] * len(totals)
    for position, index in enumerate(order, 1):
        ranks[index] = position
    return ranks


class Rescorer:
    """One object a pipeline holds: load the LM once, then rescore utterances or plain lists.

    ``unit`` is "word", "char" or "auto" (per utterance: characters if the text is Chinese).
    """

    def __init__(
        self,
        scorer: SentenceScorer,
        weights: Weights | None = None,
        backward_scorer: SentenceScorer | None = None,
        unit: str = "auto",
        chunk_hypotheses: int = 20000,
    ):
        self.scorer = scorer
        self.backward_scorer = backward_scorer
        self.weights = weights or Weights()
        self.unit = unit
        self.chunk_hypotheses = chunk_hypotheses
        self.missing_fields: dict[str, int] = {}

    def unit_for(self, texts: Iterable[str]) -> str:
        return detect_unit(texts) if self.unit == "auto" else self.unit

    def rescore(self, texts: Sequence[str], scores: Sequence[float] | None = None) -> RescoreResult:
        """Rescore one n-best list given as plain texts and first-pass scores (0 when None)."""
        scores = [0.0] * len(texts) if scores is None else scores
        hypotheses = [{"text": text, "score": float(score)} for text, score in zip(texts, scores, strict=True)]
        return self.rescore_batch([hypotheses])[0]

    def rescore_batch(self, lists: Sequence[Sequence[dict]]) -> list[RescoreResult]:
        """Rescore many n-best lists (each a list of hypothesis dicts) with one pooled LM pass."""
        texts = [h["text"] for hyps in lists for h in hyps]
        forward = self.scorer.score(texts)
        backward = self.backward_scorer.score(texts) if self.backward_scorer else None
        results, offset = [], 0
        for hyps in lists:
            n = len(hyps)
            fwd = forward[offset : offset + n]
            bwd = backward[offset : offset + n] if backward else None
            results.append(self.combine(hyps, fwd, bwd))
            offset += n
        return results

    def combine(self, hyps: Sequence[dict], forward: list[float], backward: list[float] | None) -> RescoreResult:
        """Total scores and ranks of one list whose LM scores are known."""
        w = self.weights
        unit = self.unit_for(h["text"] for h in hyps)
        totals = []
        for i, hyp in enumerate(hyps):
            total = sum(weight * self.field_value(hyp, name) for name, weight in w.score_fields.items())
            total += w.lm_weight * forward[i] + w.length_bonus * text_length(hyp["text"], unit)
            if backward is not None:
                total += w.backward_weight * backward[i]
            totals.append(total)
        ranks = rank_order(totals)
        best_index = ranks.index(1) if ranks else -1
        best = hyps[best_index]["text"] if hyps else ""
        return RescoreResult(best, best_index, totals, forward, ranks, backward)

    def field_value(self, hyp: dict, name: str) -> float:
        """A first-pass field as a number; a missing one counts as 0 (reported once per field)."""
        value = hyp.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if name not in self.missing_fields:
            log.warning("hypotheses without a numeric %r field: using 0 for them", name)
        self.missing_fields[name] = self.missing_fields.get(name, 0) + 1
        return 0.0

    def rescore_utterances(
        self, utterances: Iterable[dict], progress: Callable[[int], None] | None = None
    ) -> Iterator[dict]:
        """Add ``lm_logprob``/``total_score``/``rank`` to every hypothesis and ``best`` to every utterance.

        Utterances are processed in chunks of about ``chunk_hypotheses`` hypotheses (pooled LM scoring,
        bounded memory) and yielded in input order; hypotheses stay in their input order.
        """
        chunk: list[dict] = []
        size = 0
        for utterance in utterances:
            chunk.append(utterance)
            size += len(utterance["hypotheses"])
            if size >= self.chunk_hypotheses:
                yield from self.annotate(chunk, progress)
                chunk, size = [], 0
        if chunk:
            yield from self.annotate(chunk, progress)

    def annotate(self, chunk: list[dict], progress: Callable[[int], None] | None) -> list[dict]:
        results = self.rescore_batch([u["hypotheses"] for u in chunk])
        for utterance, result in zip(chunk, results):
            annotate_utterance(utterance, result)
        if progress:
            progress(len(chunk))
        return chunk


def annotate_utterance(utterance: dict, result: RescoreResult) -> None:
    """Write the output fields of NBEST_FORMAT.md into an utterance dict, in place.

    With a backward model its score goes in ``lm_logprob_backward``; ``lm_logprob`` stays the forward LM's.
    """
    for i, hyp in enumerate(utterance["hypotheses"]):
        hyp["lm_logprob"] = result.lm_logprobs[i]
        if result.backward_logprobs is not None:
            hyp["lm_logprob_backward"] = result.backward_logprobs[i]
        hyp["total_score"] = result.total_scores[i]
        hyp["rank"] = result.ranks[i]
    utterance["best"] = result.best
