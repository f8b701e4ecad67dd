"""Searching beyond the n-best list: the hypotheses' confusion network, expanded and rescored.

An n-best list can only return one of its N texts; its hypotheses, aligned slot by slot, hold many
more (a character from one, the next from another). Per utterance:

1. **Build** the network. Hypotheses of equal length (in units: characters for Chinese, else words)
   align position by position; otherwise each is aligned to the first-pass best by edit distance
   (ROVER-style), with a gap slot before, between and after the best's units for insertions and an
   empty arc for deletions. Each hypothesis puts one arc in every slot; an arc's posterior is the sum
   of the first-pass posteriors (softmax of the weighted first-pass score / ``temperature``) of the
   hypotheses that put it there, and its *share* is its part of the first-pass score (a least-squares
   split of the hypotheses' scores over the arcs where they leave the first-pass best), so that a path
   combining several hypotheses gets an estimate of the first-pass score it would have had.
2. **Expand**: the ``candidates`` most probable paths (product of arc posteriors), found exactly,
   best first, with a heap over per-slot arc choices.
3. **Rescore** the paths and the input hypotheses together:
   ``arc_weight * arc_logpost + first_pass_weight * first_pass + lm_weight * lm``
   ``+ backward_weight * lm_backward + length_bonus * length + input_bonus * [an input hypothesis]``
   (``first_pass``: an input's own weighted first-pass score, else the sum of the path's shares),
   the LM scores pooled through the same trie engine as plain rescoring. The best of them is the
   utterance's ``best``; it may be none of the input texts.
4. **Improve** the best (``passes`` rounds, pipeline.rescore): every run of slots where an input
   hypothesis differs from it, copied in, and with the arc posterior weighed its single-slot changes.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from pipeline.alignment import align
from pipeline.mbr import softmax

Label = tuple[str, ...]  # the units an arc adds (empty: the empty arc)


@dataclass
class Network:
    """Slots of arcs, each arc a label with its posterior; ``paths[h]`` is hypothesis h's label per slot;
    ``shares`` each arc's part of the first-pass score, relative to ``base`` (the first-pass best's score,
    whose arcs have share 0); ``added`` per slot the arcs no hypothesis holds (pipeline.confusions), if any."""

    slots: list[dict[Label, float]]
    paths: list[list[Label]]
    shares: list[dict[Label, float]] = field(default_factory=list)
    base: float = 0.0
    added: list[set[Label]] = field(default_factory=list)

    def copy(self) -> Network:
        """A copy to add arcs to (pipeline.confusions) without changing this one; the paths are shared."""
        return Network([dict(slot) for slot in self.slots], self.paths, [dict(shares) for shares in self.shares],
                       self.base, [set(added) for added in self.added])


def build_network(units: Sequence[Sequence[str]], scores: Sequence[float], temperature: float) -> Network:
    """The confusion network of one list (see the module docstring); ``units`` per hypothesis."""
    if not units:
        return Network([], [])
    posteriors = softmax(scores, temperature)  # the first-pass posteriors
    pivot = max(range(len(scores)), key=lambda i: (scores[i], -i))
    if len({len(u) for u in units}) == 1:
        paths = [[(unit,) for unit in hyp] for hyp in units]
    else:
        paths = aligned_paths(units, pivot)
    slots: list[dict[Label, float]] = [dict() for _ in paths[0]]
    for path, posterior in zip(paths, posteriors):
        for slot, label in zip(slots, path):
            slot[label] = slot.get(label, 0.0) + posterior
    keep = [i for i, slot in enumerate(slots) if set(slot) != {()}]  # a gap no hypothesis fills goes
    paths = [[path[i] for i in keep] for path in paths]
    return Network([slots[i] for i in keep], paths, first_pass_shares(paths, scores, pivot), float(scores[pivot]))


def first_pass_shares(paths: Sequence[Sequence[Label]], scores: Sequence[float],
                      pivot: int) -> list[dict[Label, float]]:
    """Each arc's share of the first-pass score: the minimum-norm least-squares solution of
    ``score[h] - score[pivot] = sum of h's shares over the slots where h leaves the pivot's path``.

    A recogniser's score is mostly a sum over its units (acoustics per syllable or word), so a hypothesis
    that differs from the pivot in one run of slots pins that run's share exactly, and a path that copies
    runs of several hypotheses is estimated as the sum of theirs.
    """
    shares: list[dict[Label, float]] = [{path_label: 0.0} for path_label in paths[pivot]]
    columns: dict[tuple[int, Label], int] = {}
    for path in paths:
        for s, label in enumerate(path):
            if label != paths[pivot][s]:
                columns.setdefault((s, label), len(columns))
    if columns:
        matrix = np.zeros((len(paths), len(columns)))
        for h, path in enumerate(paths):
            for s, label in enumerate(path):
                if label != paths[pivot][s]:
                    matrix[h, columns[s, label]] = 1.0
        target = np.asarray(scores, dtype=np.float64) - scores[pivot]
        solution = np.linalg.lstsq(matrix, target, rcond=None)[0]
        for (s, label), column in columns.items():
            shares[s][label] = float(solution[column])
    return shares


def path_first_pass(network: Network, path: Sequence[Label]) -> float:
    """The first-pass score a path is estimated to have: the base plus its arcs' shares."""
    return network.base + sum(share[label] for share, label in zip(network.shares, path))


def aligned_paths(units: Sequence[Sequence[str]], pivot: int) -> list[list[Label]]:
    """Each hypothesis as 2n+1 labels against the pivot's n units: gap, unit, gap, unit, ..., gap."""
    n = len(units[pivot])
    paths = []
    for hyp in units:
        labels: list[list[str]] = [[] for _ in range(2 * n + 1)]
        position = 0  # pivot units consumed
        for ref, unit, op in align(units[pivot], hyp):
            if op == "I":
                labels[2 * position].append(unit)
            else:
                if op != "D":
                    labels[2 * position + 1].append(unit)
                position += 1
        paths.append([tuple(label) for label in labels])
    return paths


def path_logpost(network: Network, path: Sequence[Label]) -> float:
    return sum(math.log(slot[label]) for slot, label in zip(network.slots, path))


def best_paths(network: Network, count: int) -> list[tuple[float, list[Label]]]:
    """The ``count`` most probable paths, best first: (log posterior, labels). Exact.

    Each slot's arcs are sorted by posterior; a path is a vector of per-slot ranks, and a popped
    path's successors raise one slot's rank by one (a visited set keeps each vector once).
    """
    if count < 1:
        return []
    if not network.slots:
        return [(0.0, [])]
    ranked = [sorted(slot.items(), key=lambda item: (-item[1], item[0])) for slot in network.slots]
    logs = [[math.log(p) for _, p in arcs] for arcs in ranked]
    start = (0,) * len(ranked)
    heap = [(-sum(log[0] for log in logs), start)]
    seen = {start}
    found = []
    while heap and len(found) < count:
        negative, vector = heapq.heappop(heap)
        found.append((-negative, [ranked[s][r][0] for s, r in enumerate(vector)]))
        for s, r in enumerate(vector):
            if r + 1 < len(ranked[s]):
                successor = vector[:s] + (r + 1,) + vector[s + 1:]
                if successor not in seen:
                    seen.add(successor)
                    heapq.heappush(heap, (negative - logs[s][r + 1] + logs[s][r], successor))
    return found


def oracle_errors(network: Network, reference: Sequence[str]) -> int:
    """The fewest edit errors of any path through the network against ``reference``: the floor of the
    search, below the n-best oracle. A dynamic programme over the slots whose state is the number of
    reference units matched so far; exact, since a path's alignment splits at slot boundaries.
    """
    best = list(range(len(reference) + 1))  # before any slot: j reference units deleted
    for slot in network.slots:
        rows = [arc_row(best, label, reference) for label in slot]
        best = [min(column) for column in zip(*rows)]
    return best[-1]


def best_path_to(network: Network, units: Sequence[str], search: SearchWeights) -> tuple[float, float, list[Label]] | None:
    """The path that spells ``units`` with the highest ``search.path_total``: (arc log posterior, first-pass
    estimate, labels), or None when no path spells them. A dynamic programme over the slots whose state is
    the number of units spelled so far; exact, as in :func:`oracle_errors`."""
    states: dict[int, tuple[float, float, float, list[Label]]] = {0: (0.0, 0.0, network.base, [])}
    for slot, shares in zip(network.slots, network.shares):
        following: dict[int, tuple[float, float, float, list[Label]]] = {}
        for done, (_, logpost, first_pass, labels) in states.items():
            for label, posterior in slot.items():
                end = done + len(label)
                if tuple(units[done:end]) != label:
                    continue
                step = (logpost + math.log(posterior), first_pass + shares.get(label, 0.0))
                total = search.path_total(*step)
                if end not in following or total > following[end][0]:
                    following[end] = (total, *step, [*labels, label])
        states = following
    found = states.get(len(units))
    return None if found is None else found[1:]


def arc_row(best: list[int], label: Label, reference: Sequence[str]) -> list[int]:
    """The fewest errors with j reference units matched after an arc's units, for each j, from ``best``
    before them: the arc's rows of an edit-distance table whose first row is ``best``."""
    row = best
    for unit in label:
        following = [row[0] + 1]
        for j, ref in enumerate(reference, 1):
            following.append(min(row[j] + 1, row[j - 1] + (unit != ref), following[j - 1] + 1))
        row = following
    return row


def join_units(labels: Sequence[Label], unit: str) -> str:
    units = [u for label in labels for u in label]
    return ("" if unit == "char" else " ").join(units)


Candidate = tuple[float, float, list[Label]]  # arc log posterior, first-pass score (or estimate), labels


def network_candidates(network: Network, scores: Sequence[float], unit: str, count: int,
                       extend: Callable[[Network], None] | None = None) -> dict[str, Candidate]:
    """{text: candidate} of the network's best ``count`` paths and of every input hypothesis's own path (a
    text reached by several paths keeps its most probable; an input keeps its own score of ``scores``);
    ``extend`` then changes the network in place (pipeline.confusions adds arcs the paths do not use)."""
    own = {join_units(path, unit): float(score) for path, score in zip(network.paths, scores)}
    candidates: dict[str, Candidate] = {}
    paths = best_paths(network, count) + [(path_logpost(network, path), path) for path in network.paths]
    for logpost, labels in paths:
        text = join_units(labels, unit)
        if text not in candidates or logpost > candidates[text][0]:
            first_pass = own[text] if text in own else path_first_pass(network, labels)
            candidates[text] = (logpost, first_pass, list(labels))
    if extend is not None:
        extend(network)
    return candidates


@dataclass
class SearchWeights:
    """How a searched candidate is scored (the module docstring). The defaults of ``arc_weight`` and
    ``first_pass_weight`` are those of weights files written before the first-pass term existed."""

    lm_weight: float = 1.0
    backward_weight: float = 0.0
    length_bonus: float = 0.0
    input_bonus: float = 0.0  # for a candidate that is one of the input hypotheses
    arc_weight: float = 1.0
    first_pass_weight: float = 0.0

    def total(self, logpost: float, first_pass: float, lm: float, backward: float | None, length: int,
              in_input: bool) -> float:
        return (self.path_total(logpost, first_pass) + self.lm_weight * lm
                + self.length_bonus * length + self.input_bonus * in_input
                + (self.backward_weight * backward if backward is not None else 0.0))

    def path_total(self, logpost: float, first_pass: float) -> float:
        """The part of the total that depends on the path, not only on its text."""
        return self.arc_weight * logpost + self.first_pass_weight * first_pass


def slot_alternatives(network: Network, labels: Sequence[Label], top: int = 2) -> list[tuple[int, list[Label]]]:
    """Single-slot changes of a path: (slot, [other label]) for the ``top`` most probable other arcs of
    each slot that has any (2 were as accurate as 4 on both dev sets, and cheaper); arcs no hypothesis
    holds are left to pipeline.confusions."""
    changes = []
    for index, (slot, current) in enumerate(zip(network.slots, labels)):
        added = network.added[index] if network.added else ()
        others = sorted(((p, label) for label, p in slot.items() if label != current and label not in added),
                        reverse=True)[:top]
        changes.extend((index, [label]) for _, label in others)
    return changes


def run_alternatives(network: Network, path: Sequence[Label]) -> list[tuple[int, list[Label]]]:
    """Changes that copy one run of an input hypothesis into a path: for each hypothesis and each maximal
    run of slots where it differs from the path, (first slot, the hypothesis's labels there), each once.

    Recognisers confuse whole words (部队 -> 不对), which no single-slot change undoes: 部对 and 不队 are
    no words, so the LM never takes the first step.
    """
    changes: dict[tuple[int, tuple[Label, ...]], None] = {}
    for other in network.paths:
        start = 0
        while start < len(path):
            if other[start] == path[start]:
                start += 1
                continue
            end = start
            while end < len(path) and other[end] != path[end]:
                end += 1
            changes[start, tuple(other[start:end])] = None
            start = end
    return [(start, list(run)) for start, run in changes]
