"""Units the recogniser confuses, mined from dev lists, added to other lists' networks as arcs.

A confusion network only holds the units some hypothesis put in a slot: on zh-rmrb dev the reference
is outside 3.88% of the time. Elsewhere in the dev lists the same units stand in one slot with others
(各 with 个, 部 with 不): the recogniser confuses them. ``tune --search network`` mines those pairs
from the dev file's networks (no references needed), stores the table in the weights file, and fits a
penalty; the search then adds each slot's confusable units as arcs the recogniser never proposed and
tries them one slot at a time (pipeline.search). An added arc gets the slot's lowest arc posterior and
first-pass share, each lowered by the penalty (times e^-penalty, minus penalty), so it wins only where
the LM prefers it by more than that. A pair the lists confuse often is likelier to be confused again:
with a count weight, a pair that shared n slots pays ``penalty - count_weight * ln n`` (not below 0).

The table counts, for each unit, the slots it shared with each other unit. In a weights file each unit's
entry is one line, ``"个": "各:57 哥:2"``; an entry without counts (``"各 哥"``, files from before
them) counts each pair once.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable

from pipeline.network import Label, Network

ConfusionTable = dict[str, dict[str, int]]  # unit: {a unit it shared a slot with: how many slots}
# Arcs added to one slot at most, the cheapest (then the commonest pairs): an English word like "the" shares
# slots with hundreds of others, and every added arc is a change each round of the search screens, so
# without a cap the search cost 3.07 times plain rescoring on an en-kjv dev half (1.65 without the units).
MAX_ADDED_ARCS = 10
COUNTED = re.compile(r"(.+):([1-9][0-9]*)")  # "unit:count" in a weights file's entry


def mine_confusions(networks: Iterable[Network]) -> ConfusionTable:
    """Every pair of single units that share a slot of some network, both ways, with the slots they share."""
    pairs: dict[str, Counter] = {}
    for network in networks:
        for slot in network.slots:
            units = [label[0] for label in slot if len(label) == 1]
            for unit in units:
                pairs.setdefault(unit, Counter()).update(other for other in units if other != unit)
    return {unit: dict(sorted(others.items())) for unit, others in sorted(pairs.items()) if others}


def add_confusable_arcs(network: Network, table: ConfusionTable, penalty: float, count_weight: float = 0.0) -> None:
    """Add, in place, each slot's confusable units (the table's, of the slot's single-unit arcs) that the
    slot lacks, with the slot's lowest posterior times e^-p and its lowest share minus p, where p is the
    penalty less ``count_weight`` times the log of the slots the pair shared (not below 0; of the
    slot's units that confuse the same one, the commonest pair's); at most ``MAX_ADDED_ARCS`` a slot, the
    commonest pairs. ``network.added`` records them."""
    network.added = []
    for slot, shares in zip(network.slots, network.shares):
        lowest_posterior, lowest_share = min(slot.values()), min(shares.values())
        counts: dict[Label, int] = {}
        for label in slot:  # the arcs are added after this loop
            if len(label) != 1:
                continue
            for unit, count in table.get(label[0], {}).items():
                if (unit,) not in slot:
                    counts[(unit,)] = max(count, counts.get((unit,), count))
        kept = sorted(counts, key=lambda arc: (-counts[arc], arc))[:MAX_ADDED_ARCS]
        for arc in kept:
            cost = max(penalty - count_weight * math.log(counts[arc]), 0.0)
            slot[arc], shares[arc] = lowest_posterior * math.exp(-cost), lowest_share - cost
        network.added.append(set(kept))


def table_to_json(table: ConfusionTable) -> dict[str, str]:
    """A table as a weights file holds it: each unit's entry one line, ``"unit:count unit:count"``."""
    return {unit: " ".join(f"{other}:{count}" for other, count in others.items()) for unit, others in table.items()}


def table_from_json(entries: dict[str, str]) -> ConfusionTable:
    """The table of a weights file's entries; a unit without ``:count`` (files from before the counts) counts 1."""
    table: ConfusionTable = {}
    for unit, line in entries.items():
        table[unit] = {}
        for token in line.split():
            counted = COUNTED.fullmatch(token)
            table[unit][counted.group(1) if counted else token] = int(counted.group(2)) if counted else 1
    return table


def confusion_changes(network: Network, labels: list[Label]) -> list[tuple[int, list[Label]]]:
    """Single-slot changes of a path to an added arc: (slot, [arc]) for every added arc it does not hold."""
    return [(index, [arc]) for index, added in enumerate(network.added) for arc in sorted(added)
            if arc != labels[index]]
