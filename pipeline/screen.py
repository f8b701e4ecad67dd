"""Which of the network search's new texts the network scores: the most promising few.

Each stage of the search (the expanded paths, then each pass of local changes) proposes new texts for
every list. Scoring all of them with the network cost up to 2.7 times plain rescoring (en-kjv dev, a
strong forward and backward pair, 20 paths and 4 passes). Instead a stage sends the network at most
``stage_budget`` times each list's number of hypotheses (rounded up): those with the highest total
when the model's n-gram stands in for the network (table lookups only, about 20 times cheaper). So
the search's cost is bounded by its settings whatever the lists propose, and each list's result is
its own, whatever lists it is scored with: a list counts only the texts scored for it, even where
another list of the batch scored the same text (a budget pooled over a batch would break that too).
"""

from __future__ import annotations

import math
from collections.abc import Callable


def stage_allowance(list_size: int, stage_budget: float | None) -> int | None:
    """New texts one stage may send to the network for a list of ``list_size`` hypotheses (None: all)."""
    return None if stage_budget is None else math.ceil(stage_budget * list_size)


def screen(proposals: dict[int, dict[str, tuple]], seen: dict[int, set[str]], allowances: dict[int, int | None],
           estimate: Callable[[list[tuple[int, str]]], dict[tuple[int, str], float]]) -> dict[int, list[str]]:
    """The texts each list sends the network of its proposals {list: {text: details}}: those it has not
    seen (``seen[k]``: its inputs and the texts scored for it), all of them within its allowance, else the
    allowance's worth with the highest estimates (ties: first proposed). ``estimate`` rates (list, text)
    pairs in one call, asked only for the lists over their allowance."""
    unseen = {k: [t for t in texts if t not in seen[k]] for k, texts in proposals.items()}
    over = [(k, t) for k, texts in unseen.items() if allowances[k] is not None and len(texts) > allowances[k]
            for t in texts]
    estimates = estimate(over) if over else {}
    chosen = {}
    for k, texts in unseen.items():
        if allowances[k] is not None and len(texts) > allowances[k]:
            ranked = sorted(range(len(texts)), key=lambda i: (-estimates[k, texts[i]], i))
            texts = [texts[i] for i in ranked[: allowances[k]]]
        chosen[k] = texts
    return chosen
