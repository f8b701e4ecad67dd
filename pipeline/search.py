"""The confusion-network search over a batch of lists (pipeline.network builds the networks).

Per batch: expand each list's network into candidate paths, score the new ones that pass the screen
(pipeline.screen) with the LM pair in one pooled pass, keep each list's best, then improve it over
``passes`` rounds of local changes, each round's variants screened and scored the same way; where the
networks hold confusable units (pipeline.confusions), up to ``CONFUSION_ROUNDS`` more rounds try them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pipeline.confusions import confusion_changes
from pipeline.metrics import text_length
from pipeline.network import (Network, SearchWeights, join_units, path_first_pass, path_logpost, run_alternatives,
                              slot_alternatives)
from pipeline.screen import screen, stage_allowance
from pipeline.weights import stage_budget

if TYPE_CHECKING:
    from pipeline.rescore import Rescorer

CONFUSION_ROUNDS = 3  # rounds of confusable-unit changes after the passes; a round that changes nothing ends them


def ngram_alone(scorer, texts: Sequence[str]) -> list[float] | None:
    """The scorer's n-gram-alone scores of the texts (lm.scorer.SentenceScorer.score_ngram); None for a
    model without an n-gram, or a scorer that only scores (a table, a wrapper)."""
    method = getattr(scorer, "score_ngram", None)
    return method(texts) if method is not None else None


@dataclass
class Stage:
    """The search's state over a batch of lists: each list's expansion (unit, network, candidates), input
    texts, current best (total, text, arc log posterior, first pass, labels) and every scored text's total
    (``pools``); ``known`` the LM scores of the texts scored so far."""

    expanded: list
    inputs: list[set]
    known: dict
    search: SearchWeights
    current: dict = field(default_factory=dict)
    pools: dict = field(default_factory=dict)
    seen: dict = field(init=False)  # per list: its inputs and the texts scored for it (pipeline.screen)

    def __post_init__(self) -> None:
        self.seen = {k: set(texts) for k, texts in enumerate(self.inputs)}

    def total(self, k: int, text: str, details: tuple, lm: tuple[float, float | None]) -> float:
        """List k's total of a text with (arc log posterior, first pass, ...) and (forward, backward) LM scores."""
        return self.search.total(details[0], details[1], *lm, text_length(text, self.expanded[k][0]),
                                 text in self.inputs[k])

    def consider(self, k: int, texts: dict[str, tuple]) -> bool:
        """Add list k's scored texts {text: (arc log posterior, first pass, labels)} to its pool; keep the
        first of the highest totals as its current best. True when that changed."""
        improved = False
        pool = self.pools.setdefault(k, {})
        for text, details in texts.items():
            if text not in self.seen[k]:  # screened out
                continue
            total = self.total(k, text, details, self.known[text])
            pool[text] = max(total, pool.get(text, total))
            if k not in self.current or total > self.current[k][0] + 1e-9:
                self.current[k] = (total, text, *details)
                improved = True
        return improved


@dataclass
class SearchMemo:
    """What tune's many searches of one dev set share, so that no search does again what another did: the
    LM scores {text: (forward, backward)}, the n-gram stand-ins of the screen (the same), and the built
    networks (pipeline.rescore.Rescorer.network_candidates)."""

    lm: dict = field(default_factory=dict)
    ngram: dict = field(default_factory=dict)
    networks: dict = field(default_factory=dict)

    @classmethod
    def lm_scores_only(cls) -> SearchMemo:
        """A memo whose n-gram ratings and networks keep nothing (every lookup misses), as tune shared before
        them: what scripts/bench_tune.py measures the sharing against."""
        return cls(ngram=KeepsNothing(), networks=KeepsNothing())


class KeepsNothing(dict):
    """A dict that drops what is put in it."""

    def __setitem__(self, key, value) -> None:
        pass

    def update(self, *args, **kwargs) -> None:
        pass


class NetworkSearch:
    """One search with a rescorer's LM scorers and its weights' network settings; ``memo`` shared with other
    searches of the same lists (tune's), else the n-gram stand-ins are kept for this search only."""

    def __init__(self, rescorer: Rescorer, memo: SearchMemo | None = None):
        self.rescorer = rescorer
        self.lm_memo = memo.lm if memo is not None else None  # else the search's own `known` suffices
        self.ngram_memo = memo.ngram if memo is not None else {}
        self.networks = memo.networks if memo is not None else None  # else each list is built once anyway
        settings = rescorer.weights.network
        self.search = SearchWeights(**{k: settings[k] for k in SearchWeights.__dataclass_fields__ if k in settings})

    def run(self, lists: Sequence[Sequence[dict]], known: dict,
            passes: int) -> tuple[list[dict[int, str]], dict[int, dict[str, float]]]:
        """The searched best text of each non-empty list (by position) after 0, 1, ..., ``passes`` rounds of
        local changes (a round that changes nothing ends the search and is repeated to the end), the last
        after the confusable-unit rounds too, and every text the search scored for each list with its total.

        ``known`` maps texts to (forward, backward) LM scores; the texts it lacks are scored and added,
        in each stage at most ``network["stage_budget"]`` times a list's size (pipeline.screen).
        """
        expanded = [self.rescorer.network_candidates(hyps, self.networks) if hyps else None for hyps in lists]
        inputs = [{h["text"] for h in hyps} for hyps in lists]
        budget = stage_budget(self.rescorer.weights.network)
        allowances = {k: stage_allowance(len(hyps), budget) for k, hyps in enumerate(lists)}
        stage = Stage(expanded, inputs, known, self.search)
        for k, item in enumerate(expanded):
            if item is not None:  # the inputs first: a tie keeps an input hypothesis
                stage.consider(k, {t: c for t, c in item[2].items() if t in inputs[k]})
        paths = {k: {t: c for t, c in expanded[k][2].items() if t not in inputs[k]} for k in stage.current}
        self.score_screened(paths, stage, allowances)
        for k, texts in paths.items():
            stage.consider(k, texts)
        history = [{k: c[1] for k, c in stage.current.items()}]
        for _ in range(passes):
            if not self.improve_once(stage, allowances, self.local_changes):
                break
            history.append({k: c[1] for k, c in stage.current.items()})
        history += [history[-1]] * (passes + 1 - len(history))
        changed = set(stage.current) if any(item and item[1].added for item in expanded) else set()
        for _ in range(CONFUSION_ROUNDS):
            if not changed:
                break
            changed = self.improve_once(stage, allowances, confusion_changes, changed)  # only where the best moved
        history[-1] = {k: c[1] for k, c in stage.current.items()}  # the passes' last, or after the rounds
        return history, stage.pools

    def local_changes(self, network: Network, labels: list) -> list[tuple[int, list]]:
        """A pass's changes: the runs of input hypotheses copied in (pipeline.network) and, where the arc
        posterior is weighed, its single-slot changes. Scored by first-pass shares, a slot cut out of a run
        would get a guessed share (the least-squares split of the run's score), so only whole runs are tried there."""
        changes = run_alternatives(network, labels)
        if self.search.arc_weight:
            changes += slot_alternatives(network, labels)
        return changes

    def improve_once(self, stage: Stage, allowances: dict[int, int | None], propose,
                     lists: set[int] | None = None) -> set[int]:
        """One round of local search around each current best (of ``lists``, else every list): the changes
        ``propose(network, labels)`` gives, screened and scored; the best variant kept if better. Returns
        the lists whose best changed."""
        search = stage.search
        variants: dict[int, dict[str, tuple]] = {}
        for k, (_, _, _, _, labels) in stage.current.items():
            if lists is not None and k not in lists:
                continue
            unit, network, candidates = stage.expanded[k]
            changes = propose(network, labels)
            variants[k] = {}
            for start, run in changes:
                changed = labels[:start] + run + labels[start + len(run):]
                text = join_units(changed, unit)
                first_pass = candidates[text][1] if text in stage.inputs[k] else path_first_pass(network, changed)
                logpost = path_logpost(network, changed) if search.arc_weight else 0.0  # unweighed: not needed
                kept = variants[k].get(text)
                if kept is None or search.path_total(logpost, first_pass) > search.path_total(*kept[:2]):
                    variants[k][text] = (logpost, first_pass, changed)  # of two paths to a text, the better
        self.score_screened(variants, stage, allowances)
        return {k for k, texts in variants.items() if stage.consider(k, texts)}

    def score_screened(self, proposals: dict[int, dict[str, tuple]], stage: Stage,
                       allowances: dict[int, int | None]) -> None:
        """Score the proposals {list: {text: (arc log posterior, first pass, labels)}} of one stage that the
        stage does not know, at most each list's allowance: those with the highest totals when n-gram
        scores stand in for the LM's (pipeline.screen)."""

        def estimate(pairs: list[tuple[int, str]]) -> dict[tuple[int, str], float]:
            cheap = self.ngram_scores([t for _, t in pairs])
            return {(k, t): stage.total(k, t, proposals[k][t], cheap[t]) for k, t in pairs}

        chosen = screen(proposals, stage.seen, allowances, estimate)
        self.rescorer.score_texts((t for texts in chosen.values() for t in texts), stage.known, self.lm_memo)
        for k, texts in chosen.items():
            stage.seen[k].update(texts)

    def ngram_scores(self, texts: Sequence[str]) -> dict[str, tuple[float, float | None]]:
        """{text: (forward, backward)} n-gram stand-ins for the LM scores: the backward model's n-gram, else
        the forward one's; 0 for a model without an n-gram (the rest of the total then decides alone).
        Each text is rated once per memo: tune's searches propose the same texts again and again (within one
        search, 2.6% of the texts rated were rated before: zh-rmrb dev, 100 utterances)."""
        found = {t: self.ngram_memo[t] for t in texts if t in self.ngram_memo}
        new = list(dict.fromkeys(t for t in texts if t not in found))
        if new:
            forward = ngram_alone(self.rescorer.scorer, new) or [0.0] * len(new)
            backward = None
            if self.rescorer.backward_scorer is not None:
                backward = ngram_alone(self.rescorer.backward_scorer, new) or forward
            scored = {t: (f, backward[i] if backward else None) for i, (t, f) in enumerate(zip(new, forward))}
            self.ngram_memo.update(scored)
            found.update(scored)
        return found
