"""Fitting the confusion-network search (pipeline.network) on a dev set, after the usual weights."""

from __future__ import annotations

import logging
import statistics
from collections.abc import Sequence

import torch

from pipeline.confusions import ConfusionTable, mine_confusions
from pipeline.mbr import best_mbr_temperature, mbr_evidence
from pipeline.metrics import error_counts, oracle_counts, split_units
from pipeline.network import oracle_errors
from pipeline.rescore import Rescorer, text_length
from pipeline.search import SearchMemo
from pipeline.tune import DevSet, search_weights
from pipeline.weights import NETWORK_DEFAULTS, stage_budget

log = logging.getLogger(__name__)


NETWORK_TEMPERATURES = (0.25, 0.5, 1.0, 2.0, 4.0)  # times the lists' median spread of first-pass scores
MAX_PASSES = 4  # rounds of local changes tried on the dev set (more gained nothing on zh-rmrb dev)
# The first-pass scoring (the plain weights, the estimated first-pass score, arc weight 0) is tried with
# these input bonuses; the bonus that makes the fewest dev errors is kept. They stay in score units, unlike
# CONFUSION_PENALTIES below: a grid of -0.5 to 5 nats of the LM measured no better (en-kjv dev, the default
# pair, 5 splits: 26.35% WER against 26.27%, with 1.47 texts scored per input against 1.41; zh-rmrb dev,
# 10 splits: 6.92% CER against 6.93%), since on en-kjv the bonus that pays is under half a nat.
INPUT_BONUSES = (-0.5, 0.0, 0.5, 1.0, 2.0, 3.0)
# Paths expanded per list under the first-pass scoring, besides the inputs and the arc-posterior fit's count:
# its passes reach the combinations by copying runs of the inputs, so few or no expanded paths were as
# accurate on zh-rmrb dev and score far fewer new texts (on en-kjv dev, 20 paths add about 3,400 texts
# to a search that adds about 7,400). Of the counts with the fewest dev errors, the smallest is kept.
FIRST_PASS_CANDIDATES = (0, 1)
# The expanded paths without a pass of local changes lost to plain rescoring on the test halves in
# every comparison measured (scripts/compare_methods.py, three zh-rmrb and three en-kjv models: 0.13 to 0.41
# points worse on average), even where they won on the tuning half; so tune fits 1 to MAX_PASSES passes,
# and 0 stays a manual setting.
# Penalties of an arc the mined confusion table adds (pipeline.confusions), and weights of the log of its
# pair's count, tried on the dev set in nats of the LM: each is multiplied by the fitted LM weights (forward
# and backward), since an added arc wins where the LM terms prefer it by more than its penalty, and the
# first-pass scores it is set against have any scale a recogniser gives them (zh-rmrb's total a few
# nats, en-kjv's hundreds).
CONFUSION_PENALTIES = (1.0, 2.0, 3.0, 4.0, 6.0, 8.0)
CONFUSION_COUNT_WEIGHTS = (0.0, 1.5, 3.0)
# The units are kept only where the best of those 18 pairs makes at least this share fewer dev errors than
# the search without them. The best of 18 tries on the same lists gains something by chance: with the
# embedded model on en-kjv dev halves it cut 0.4% to 1.1% of the tuning half's errors (10 splits) and
# 0.1% on the other halves (27.38% WER against 27.41%), for a fifth more search time; on zh-rmrb the
# units cut 6% of the errors on the other halves (docs/results.md).
CONFUSION_MIN_GAIN = 0.02


def tune_network(rescorer: Rescorer, utterances: Sequence[dict], unit: str, candidates: int | None = None,
                 progress=None, decision: str = "map", memo: SearchMemo | None = None) -> tuple[dict, dict]:
    """Fit the network search (pipeline.network) on a dev set, the first-pass fields' weights as tuned.

    For each arc temperature on a grid, expand every list, score the new texts (each text once over
    the whole grid), and search the candidates' LM, backward, length and input weights that minimise
    errors (the arc log posterior held at 1). Then run the search with those weights for 1 to
    ``MAX_PASSES`` rounds of local changes and keep the round count with the fewest errors. Then fit the
    first-pass scoring (:func:`fit_first_pass_search`) and keep it unless it makes more errors; then the
    confusable units (:func:`fit_confusions`); with ``decision="mbr"``, fit the temperature of the MBR
    choice among the scored candidates. Returns the settings and figures (errors; the oracles of the
    network, of the arc-posterior fit's candidates and of the network with the confusable units; the
    confusion table, or None). Every search shares ``memo`` (a new one unless given: scripts/bench_tune.py
    gives one that keeps less).
    """
    candidates = candidates or NETWORK_DEFAULTS["candidates"]
    lists = [u["hypotheses"] for u in utterances]
    first_pass = [[rescorer.first_pass_score(h) for h in hyps] for hyps in lists]
    spreads = [statistics.pstdev(s) for s in first_pass if len(s) > 1]
    scale = statistics.median(spreads) if spreads and statistics.median(spreads) > 0 else 1.0
    memo = SearchMemo() if memo is None else memo  # shared by every search below
    best = None
    network_oracle = None
    for k, factor in enumerate(NETWORK_TEMPERATURES):
        rescorer.weights.network = {**rescorer.weights.network, "temperature": scale * factor,
                                    "candidates": candidates, "confusion_penalty": None}  # the lists' own arcs
        built = [rescorer.network_candidates(hyps, memo.networks) if hyps else None for hyps in lists]
        expanded = [{t: c[0] for t, c in item[2].items()} if item else {} for item in built]
        if network_oracle is None:  # the arcs, unlike their posteriors, do not depend on the temperature
            network_oracle = sum(list_oracle(item, u, unit) for item, u in zip(built, utterances))
            log.info("network search: the oracle of the networks makes %d errors", network_oracle)
            mined = mine_confusions(item[1] for item in built if item)
        rescorer.score_texts((t for c in expanded for t in c), memo.lm)
        dev = network_dev_set(expanded, utterances, memo.lm, unit, rescorer.backward_scorer is not None)
        vector, errors = search_weights(dev, dev.names[1:])
        oracle = int(dev.errors.masked_fill(~dev.valid, 10 ** 9).min(dim=1).values.sum())
        log.info("network search, temperature %.3g: %d errors (the candidates' oracle %d)", scale * factor, errors, oracle)
        if best is None or errors < best[0]:
            best = (errors, scale * factor, vector, dev, oracle)
        if progress:
            progress.advance(1)
    _, temperature, vector, dev, oracle = best
    values = dict(zip(dev.names, vector.tolist()))
    settings = {"temperature": temperature, "candidates": candidates, "arc_weight": 1.0, "first_pass_weight": 0.0,
                "lm_weight": values["lm_weight"],
                "backward_weight": values.get("backward_weight", 0.0), "length_bonus": values["length_bonus"],
                "input_bonus": values["input_bonus"], "mbr_temperature": None,
                "stage_budget": stage_budget(rescorer.weights.network)}
    rescorer.weights.network = {**rescorer.weights.network, **settings}
    settings["passes"], errors, by_passes = fewest_errors_passes(rescorer, lists, utterances, unit, memo)
    log.info("network search, arc posteriors: %s errors after 0..%d passes of local changes; using %d",
             by_passes, MAX_PASSES, settings["passes"])
    shared_errors, shared = fit_first_pass_search(rescorer, lists, utterances, unit, memo, settings)
    if shared_errors <= errors:
        settings, errors = shared, shared_errors
    rescorer.weights.network = {**rescorer.weights.network, **settings}
    errors, table = fit_confusions(rescorer, lists, utterances, unit, memo, errors, mined)
    settings.update({k: rescorer.weights.network[k] for k in ("confusion_penalty", "confusion_count_weight")})
    confusion_oracle = None  # the floor of the networks with the confusable units' arcs
    if table is not None:
        built = [rescorer.network_candidates(hyps, memo.networks) if hyps else None for hyps in lists]
        confusion_oracle = sum(list_oracle(item, u, unit) for item, u in zip(built, utterances))
        log.info("network search, confusable units: the oracle of the networks with them makes %d errors", confusion_oracle)
    units = max(dev.reference_units, 1)
    if decision == "mbr":
        _, pools = search_as_rescoring(rescorer, lists, memo, settings["passes"])
        highest = errors
        settings["mbr_temperature"], errors = fit_pool_mbr_temperature(pools, utterances, unit)
        log.info("network search, MBR: temperature %.4g, %d errors (the highest total: %d)",
                 settings["mbr_temperature"], errors, highest)
    scoring = "first-pass shares" if settings["first_pass_weight"] else "arc posteriors"
    return settings, {"search_errors": errors, "searched": errors / units, "network_oracle": network_oracle / units,
                      "candidates_oracle": oracle / units,
                      "search_passes": settings["passes"], "search_candidates": settings["candidates"],
                      "search_scoring": scoring, "confusions": table,
                      "confusion_oracle": None if confusion_oracle is None else confusion_oracle / units}


def score_units_per_nat(network: dict) -> float:
    """How many score units one nat of the LM is worth in the search's total: its LM weights' sum (1 without)."""
    return (network["lm_weight"] + network["backward_weight"]) or 1.0


def fit_confusions(rescorer: Rescorer, lists: Sequence[Sequence[dict]], utterances: Sequence[dict], unit: str,
                   memo: SearchMemo, errors: int, table: ConfusionTable) -> tuple[int, ConfusionTable | None]:
    """Search with the dev lists' confusion table (pipeline.confusions) at each of ``CONFUSION_PENALTIES`` and
    ``CONFUSION_COUNT_WEIGHTS`` (times the LM weights), the other settings as fitted (``errors`` without
    it). Sets the rescorer's penalty and count weight to the pair that made the fewest errors, and returns
    those errors and the table; or ``errors`` and None, the penalty None, where the best did not make
    at least a ``CONFUSION_MIN_GAIN`` share of them fewer."""
    weights = rescorer.weights
    weights.confusions = table
    nats = score_units_per_nat(weights.network)
    best: tuple[int, float | None, float | None] = (errors, None, None)
    for count_weight in CONFUSION_COUNT_WEIGHTS:
        for penalty in CONFUSION_PENALTIES:
            weights.network = {**weights.network, "confusion_penalty": penalty * nats,
                               "confusion_count_weight": count_weight * nats}
            history, _ = search_as_rescoring(rescorer, lists, memo, int(weights.network["passes"]))
            found = errors_of(history[-1], utterances, unit)
            log.info("network search, confusable units (penalty %g, count weight %g LM nats): %d errors "
                     "(without them: %d)", penalty, count_weight, found, errors)
            if found < best[0]:
                best = (found, penalty * nats, count_weight * nats)
    if best[1] is not None and errors - best[0] < CONFUSION_MIN_GAIN * errors:
        log.info("network search, confusable units left out: %d errors against %d without them, a gain under %g%%",
                 best[0], errors, 100 * CONFUSION_MIN_GAIN)
        best = (errors, None, None)
    weights.network = {**weights.network, "confusion_penalty": best[1], "confusion_count_weight": best[2]}
    if best[1] is None:
        weights.confusions = None
    return best[0], weights.confusions


def list_oracle(built, utterance: dict, unit: str) -> int:
    """The fewest errors of any path through one list's network (``built``: its unit, network and
    candidates, as ``Rescorer.network_candidates`` gives them; None for an empty list), counted in
    ``unit``. A list whose own unit differs (a Chinese list in an English file) counts its n-best
    oracle, since its arcs are not units of the count."""
    if built is None or built[0] != unit:
        return oracle_counts(utterance["reference"], [h["text"] for h in utterance["hypotheses"]], unit).errors
    return oracle_errors(built[1], split_units(utterance["reference"], unit))


def fit_first_pass_search(rescorer: Rescorer, lists: Sequence[Sequence[dict]], utterances: Sequence[dict], unit: str,
                          memo: SearchMemo, settings: dict) -> tuple[int, dict]:
    """The search scored as plain rescoring scores (its tuned weights; a new text's first-pass score
    estimated from its arcs' shares; the arc posterior unweighed), with the input bonus and the passes that
    make the fewest dev errors, and the fewest expanded paths (``FIRST_PASS_CANDIDATES``) that make them.
    Returns those errors and the settings.

    The posterior of an arc that only a low-ranked hypothesis holds is tiny, while its share of the
    first-pass score is what the recogniser gave it (zh-rmrb dev: README, The combined score).
    """
    weights = rescorer.weights
    base = {**settings, "arc_weight": 0.0, "first_pass_weight": 1.0, "lm_weight": weights.lm_weight,
            "backward_weight": weights.backward_weight, "length_bonus": weights.length_bonus}
    best: tuple[int, dict] | None = None
    for count in sorted({*FIRST_PASS_CANDIDATES, settings["candidates"]}):  # a tie keeps the cheaper count
        for bonus in INPUT_BONUSES:
            trial = {**base, "candidates": count, "input_bonus": bonus}
            rescorer.weights.network = trial
            passes, errors, by_passes = fewest_errors_passes(rescorer, lists, utterances, unit, memo)
            log.info("network search, first-pass shares, %d paths, input bonus %g: %s errors after 0..%d passes",
                     count, bonus, by_passes, MAX_PASSES)
            if best is None or errors < best[0]:
                best = (errors, {**trial, "passes": passes})
    return best


def fewest_errors_passes(rescorer: Rescorer, lists: Sequence[Sequence[dict]], utterances: Sequence[dict], unit: str,
                         memo: SearchMemo) -> tuple[int, int, list[int]]:
    """The search with the rescorer's network settings for up to ``MAX_PASSES`` passes: the pass count
    (1 or more, see MAX_PASSES) with the fewest dev errors, those errors, and the errors after each."""
    history, _ = search_as_rescoring(rescorer, lists, memo, MAX_PASSES)
    by_passes = [errors_of(bests, utterances, unit) for bests in history]
    passes = min(range(1, len(by_passes)), key=lambda p: (by_passes[p], p))
    return passes, by_passes[passes], by_passes


def search_as_rescoring(rescorer: Rescorer, lists: Sequence[Sequence[dict]], memo: SearchMemo, passes: int):
    """Rescorer.searched_bests started, as rescoring starts it, from the inputs' LM scores only. Tune's memo
    holds every path it expanded too, and a search that knew them would pass them all where rescoring
    screens them (pipeline.screen); the memo only saves scoring a text twice."""
    inputs = {h["text"]: memo.lm[h["text"]] for hyps in lists for h in hyps}
    return rescorer.searched_bests(lists, inputs, passes, memo)


def errors_of(bests: dict[int, str], utterances: Sequence[dict], unit: str) -> int:
    """Errors of the chosen texts (by list position; an empty list outputs "")."""
    return sum(error_counts(u["reference"], bests.get(k, ""), unit).errors for k, u in enumerate(utterances))


def fit_pool_mbr_temperature(pools: dict[int, dict[str, float]], utterances: Sequence[dict],
                             unit: str) -> tuple[float, int]:
    """The temperature of the MBR choice among each list's scored candidates {text: total} with the fewest
    dev errors (:func:`pipeline.mbr.best_mbr_temperature`)."""
    texts = {u: list(pool) for u, pool in pools.items()}
    evidence = [mbr_evidence([split_units(t, unit) for t in texts[u]], list(pools[u].values())) if u in pools else None
                for u in range(len(utterances))]
    counted: dict[tuple[int, int | None], int] = {}

    def errors(u: int, index: int | None) -> int:
        if (u, index) not in counted:
            text = "" if index is None else texts[u][index]
            counted[u, index] = error_counts(utterances[u]["reference"], text, unit).errors
        return counted[u, index]

    return best_mbr_temperature(evidence, errors)


def network_dev_set(expanded: list[dict[str, float]], utterances: Sequence[dict], cache: dict, unit: str,
                    with_backward: bool) -> DevSet:
    """The searched candidates of every list as a DevSet: arc log posterior, LM, length, whether the text is
    an input hypothesis (, backward)."""
    names = ["field:arc", "lm_weight", "length_bonus", "input_bonus"] + (["backward_weight"] if with_backward else [])
    U, H = len(expanded), max(1, max((len(c) for c in expanded), default=0))
    features = torch.zeros(U, H, len(names), dtype=torch.float64)
    errors = torch.zeros(U, H, dtype=torch.int64)
    valid = torch.zeros(U, H, dtype=torch.bool)
    reference_units = 0
    for u, (candidates, utterance) in enumerate(zip(expanded, utterances)):
        reference = utterance["reference"]
        empty = error_counts(reference, "", unit)
        reference_units += empty.ref_len
        errors[u, 0] = empty.errors
        inputs = {h["text"] for h in utterance["hypotheses"]}
        for h, (text, logpost) in enumerate(candidates.items()):
            lm, backward = cache[text]
            row = [logpost, lm, text_length(text, unit), float(text in inputs)] + ([backward] if with_backward else [])
            features[u, h] = torch.tensor(row, dtype=torch.float64)
            errors[u, h] = error_counts(reference, text, unit).errors
            valid[u, h] = True
    return DevSet(names, features, errors, valid, reference_units)
