"""Combining first-pass scores with LM scores and re-ranking n-best lists.

    total_score = sum_f weight_f * hyp[f]           (the first-pass fields; by default just "score")
                + lm_weight * lm_logprob            (our forward LM, natural log, </s> included)
                + backward_weight * lm_logprob_backward   (optional right-to-left LM)
                + length_bonus * length             (words, or characters for Chinese)
                + [untuned] length-neutral bonus * length (the list's mean LM cost per unit)

Ranking is stable: equal totals keep the first-pass order. ``best`` is the rank-1 text, or with
``decision="mbr"`` the hypothesis with the least expected errors (:mod:`pipeline.mbr`); ``rank`` and
``total_score`` mean the same either way.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial

from lm.scorer import SentenceScorer
from pipeline.confusions import add_confusable_arcs
from pipeline.fields import FieldPresence
from pipeline.mbr import mbr_index, softmax
from pipeline.metrics import detect_unit, split_units, text_length
from pipeline.network import build_network, network_candidates
from pipeline.search import NetworkSearch, SearchMemo
from pipeline.weights import Weights, untuned_weights

__all__ = ["Rescorer", "RescoreResult", "Weights", "annotate_utterance", "rank_order", "text_length"]

log = logging.getLogger(__name__)


def length_neutral_bonus(lm_terms: Sequence[float], lengths: Sequence[int]) -> float:
    """The list's mean LM cost per unit: adding it per unit makes the LM term length-neutral in the list.

    The LM then prefers a text that is more probable per unit than its neighbours, not one that is shorter.
    """
    units = sum(lengths)
    return -sum(lm_terms) / units if units else 0.0


def pool_mbr(pool: dict[str, float], unit: str, temperature: float) -> str:
    """The text of least expected errors among the most probable of a search's scored texts {text: total}."""
    texts = list(pool)
    return texts[mbr_index([split_units(t, unit) for t in texts], list(pool.values()), temperature)]


@dataclass
class RescoreResult:
    """The outcome for one utterance, in the input order of its hypotheses."""

    best: str
    best_index: int  # -1 for an empty list
    total_scores: list[float]
    lm_logprobs: list[float]
    ranks: list[int]
    backward_logprobs: list[float] | None = None
    posteriors: list[float] | None = None  # softmax of total_score / temperature within the list
    best_in_input: bool = True  # False when the network search found a text the list does not hold
    searched: bool = False  # best came from the network search


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
        chunk_hypotheses: int = 5000,  # a progress update per chunk; 20000 was 2% faster (zh-rmrb dev)
        fields_source: str = "the weights",
    ):
        self.scorer = scorer
        self.backward_scorer = backward_scorer
        self.weights = weights if weights is not None else untuned_weights()
        self.unit = unit
        self.chunk_hypotheses = chunk_hypotheses
        self.fields = FieldPresence(self.weights.score_fields, fields_source)

    def unit_for(self, texts: Iterable[str]) -> str:
        return detect_unit(texts) if self.unit == "auto" else self.unit

    def rescore(self, texts: Sequence[str], scores: Sequence[float] | None = None) -> RescoreResult:
        """Rescore one n-best list given as plain texts and first-pass scores (0 when None)."""
        scores = [0.0] * len(texts) if scores is None else scores
        hypotheses = [{"text": text, "score": float(score)} for text, score in zip(texts, scores, strict=True)]
        return self.rescore_batch([hypotheses])[0]

    def rescore_batch(self, lists: Sequence[Sequence[dict]], ids: Sequence[str] | None = None) -> list[RescoreResult]:
        """Rescore many n-best lists (each a list of hypothesis dicts) with one pooled LM pass.

        Raises ScoreFieldError when a weighted first-pass field is on some hypotheses and not on others.
        """
        for number, hyps in enumerate(lists, 1):
            self.fields.check({"id": ids[number - 1] if ids else f"#{number}", "hypotheses": hyps})
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
        if self.weights.search == "network":
            self.search_networks(lists, results)
        return results

    def first_pass_score(self, hyp: dict) -> float:
        return sum(weight * self.field_value(hyp, name) for name, weight in self.weights.score_fields.items())

    def network_candidates(self, hyps: Sequence[dict], networks: dict | None = None):
        """The unit, the network and the candidates {text: (arc log posterior, first pass, labels)} of one list.
        ``networks``: a memo of the networks built so far (tune's: its many searches of one dev set rebuild
        the same networks, only the arcs added to them change), which hands out copies."""
        unit = self.unit_for(h["text"] for h in hyps)
        settings = self.weights.network
        units = [split_units(h["text"], unit) for h in hyps]
        scores = [self.first_pass_score(h) for h in hyps]
        if networks is None:
            network = build_network(units, scores, settings["temperature"])
        else:
            key = (unit, tuple(h["text"] for h in hyps), tuple(scores), settings["temperature"])
            network = networks.get(key)
            if network is None:
                network = networks[key] = build_network(units, scores, settings["temperature"])
            network = network.copy()  # the confusable units' arcs are added in place
        extend = None
        if self.weights.confusions and settings.get("confusion_penalty") is not None:
            extend = partial(add_confusable_arcs, table=self.weights.confusions, penalty=settings["confusion_penalty"],
                             count_weight=settings.get("confusion_count_weight") or 0.0)
        candidates = network_candidates(network, scores, unit, int(settings["candidates"]), extend)
        return unit, network, candidates

    def score_texts(self, texts: Iterable[str], known: dict, memo: dict | None = None) -> None:
        """Add the forward (and backward) LM scores of the texts ``known`` lacks, in one pooled pass; with a
        ``memo`` (tune's), the texts it holds are copied from it and the others added to it too."""
        new = list(dict.fromkeys(t for t in texts if t not in known))
        if memo is not None:
            known.update((t, memo[t]) for t in new if t in memo)
            new = [t for t in new if t not in memo]
        if new:
            forward = self.scorer.score(new)
            backward = self.backward_scorer.score(new) if self.backward_scorer else [None] * len(new)
            scored = dict(zip(new, zip(forward, backward)))
            known.update(scored)
            if memo is not None:
                memo.update(scored)

    def search_networks(self, lists: Sequence[Sequence[dict]], results: list[RescoreResult]) -> None:
        """Replace each result's ``best`` with the best candidate of its confusion network, improved by
        ``network["passes"]`` rounds of local changes (with ``decision="mbr"`` and a fitted
        ``network["mbr_temperature"]``, the candidate of least expected errors among the most probable
        ones the search scored)."""
        known = {h["text"]: (r.lm_logprobs[i], r.backward_logprobs[i] if r.backward_logprobs else None)
                 for hyps, r in zip(lists, results) for i, h in enumerate(hyps)}
        history, pools = self.searched_bests(lists, known, int(self.weights.network.get("passes", 0)))
        final = history[-1]
        temperature = self.weights.network.get("mbr_temperature")
        if self.weights.decision == "mbr" and temperature is not None:
            final = {k: pool_mbr(pools[k], self.unit_for(h["text"] for h in lists[k]), temperature) for k in final}
        for k, best in final.items():
            inputs = {h["text"] for h in lists[k]}
            results[k].best, results[k].best_in_input, results[k].searched = best, best in inputs, True

    def searched_bests(self, lists: Sequence[Sequence[dict]], known: dict, passes: int,
                       memo: SearchMemo | None = None) -> tuple[list[dict[int, str]], dict[int, dict[str, float]]]:
        """The search's best text of each non-empty list after 0..``passes`` rounds, and every text it scored
        with its total (pipeline.search.NetworkSearch.run); ``known`` LM scores, added to as texts are scored
        (copied from ``memo`` where it has them)."""
        return NetworkSearch(self, memo).run(lists, known, passes)

    def combine(self, hyps: Sequence[dict], forward: list[float], backward: list[float] | None) -> RescoreResult:
        """Total scores and ranks of one list whose LM scores are known."""
        w = self.weights
        unit = self.unit_for(h["text"] for h in hyps)
        lengths = [text_length(h["text"], unit) for h in hyps]
        lm_terms = [w.lm_weight * forward[i] + (w.backward_weight * backward[i] if backward is not None else 0.0)
                    for i in range(len(hyps))]
        bonus = w.length_bonus + (length_neutral_bonus(lm_terms, lengths) if w.length_neutral else 0.0)
        totals = []
        for i, hyp in enumerate(hyps):
            total = sum(weight * self.field_value(hyp, name) for name, weight in w.score_fields.items())
            totals.append(total + lm_terms[i] + bonus * lengths[i])
        ranks = rank_order(totals)
        best_index = ranks.index(1) if ranks else -1
        if w.decision == "mbr" and hyps:
            best_index = mbr_index([split_units(h["text"], unit) for h in hyps], totals, w.mbr_temperature)
        best = hyps[best_index]["text"] if hyps else ""
        posteriors = softmax(totals, w.posterior_temperature)
        return RescoreResult(best, best_index, totals, forward, ranks, backward, posteriors)

    @staticmethod
    def field_value(hyp: dict, name: str) -> float:
        """A first-pass field as a number; 0 when absent, which ``self.fields`` allows only on every hypothesis."""
        return float(hyp.get(name, 0.0))

    def rescore_utterances(
        self, utterances: Iterable[dict], progress=None
    ) -> Iterator[dict]:
        """Add ``lm_logprob``/``total_score``/``rank`` to every hypothesis and ``best`` to every utterance.

        Utterances are processed in chunks of about ``chunk_hypotheses`` hypotheses (pooled LM scoring,
        bounded memory) and yielded in input order; hypotheses stay in their input order.
        ``progress.advance(n)``, when given, is called after each chunk.
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

    def annotate(self, chunk: list[dict], progress=None) -> list[dict]:
        results = self.rescore_batch([u["hypotheses"] for u in chunk], [u["id"] for u in chunk])
        for utterance, result in zip(chunk, results):
            annotate_utterance(utterance, result)
        if progress:
            progress.advance(len(chunk))
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
        if result.posteriors is not None:
            hyp["posterior"] = result.posteriors[i]
    utterance["best"] = result.best
    if result.searched:
        utterance["best_in_input"] = result.best_in_input
