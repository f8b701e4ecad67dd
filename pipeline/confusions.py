"""Units the recogniser confuses, mined from dev lists, added to other lists' networks as arcs.

A confusion network only holds the units some hypothesis put in a slot: on zh-rmrb dev the reference
is outside 3.88% of the time. Elsewhere in the dev lists the same units stand in one slot with others
(各 with 个, 部 with 不): the recogniser confuses them. ``tune --search network`` mines those pairs
from the dev file's networks (no references needed), stores the table in the weights file, and fits a
penalty; the search then adds each slot's confusable units as arcs the recogniser never proposed and
tries them one slot at a time (pipeline.search). An added arc gets the slot's lowest arc posterior and
first-pass share, each lowered by the penalty (times e^-penalty, minus penalty), so it wins only where
the LM prefers it by more than that.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from pipeline.network import Label, Network

ConfusionTable = dict[str, str]  # unit: the units it shared a slot with, sorted, space-separated (one line in JSON)


def mine_confusions(networks: Iterable[Network]) -> ConfusionTable:
    """Every pair of single units that share a slot of some network, both ways."""
    pairs: dict[str, set[str]] = {}
    for network in networks:
        for slot in network.slots:
            units = [label[0] for label in slot if len(label) == 1]
            for unit in units:
                pairs.setdefault(unit, set()).update(other for other in units if other != unit)
    return {unit: " ".join(sorted(others)) for unit, others in sorted(pairs.items()) if others}


def add_confusable_arcs(network: Network, table: ConfusionTable, penalty: float) -> None:
    """Add, in place, each slot's confusable units (the table's, of the slot's single-unit arcs) that the
    slot lacks, with the slot's lowest posterior times e^-penalty and its lowest share minus penalty;
    ``network.added`` records them per slot."""
    network.added = []
    for slot, shares in zip(network.slots, network.shares):
        posterior = min(slot.values()) * math.exp(-penalty)
        share = min(shares.values()) - penalty
        added: set[Label] = set()
        for label in [label for label in slot if len(label) == 1]:
            for unit in table.get(label[0], "").split():
                arc = (unit,)
                if arc not in slot:
                    slot[arc], shares[arc] = posterior, share
                    added.add(arc)
        network.added.append(added)


def confusion_changes(network: Network, labels: list[Label]) -> list[tuple[int, list[Label]]]:
    """Single-slot changes of a path to an added arc: (slot, [arc]) for every added arc it does not hold."""
    return [(index, [arc]) for index, added in enumerate(network.added) for arc in sorted(added)
            if arc != labels[index]]
