"""Weight tuning on a development set: score once, then search the weights that minimise WER/CER.

Every hypothesis's LM score, first-pass fields, length and error count against the reference are
computed once; a candidate weight vector is then evaluated for the whole set with one matrix product
and an argmax. The search is coordinate descent over a coarse grid per weight, then a finer grid
around the best point. The first score field's weight is fixed at 1 (only ratios change a ranking);
among equally good values the middle of the best run is taken, which generalises better than an edge.
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from pipeline.errors import UsageError
from pipeline.evaluate import evaluate_utterances
from pipeline.fields import is_number
from pipeline.metrics import detect_unit, error_counts
from pipeline.rescore import Rescorer, Weights, text_length
from pipeline.weights import stage_budget

log = logging.getLogger(__name__)


@dataclass
class DevSet:
    """Per-hypothesis features of a dev set, padded to (U, H); ``valid`` marks real hypotheses.

    features (U, H, K) float64, in the order of ``names``; errors (U, H) int64 edit errors.
    """

    names: list[str]
    features: torch.Tensor
    errors: torch.Tensor
    valid: torch.Tensor
    reference_units: int


OUTPUT_FIELDS = frozenset({"total_score"})  # written by rescoring: never a first-pass score


def first_pass_fields(utterances: Sequence[dict]) -> list[str]:
    """The first-pass scores tuning weighs when none are named: ``score`` and every other ``*_score``
    number that all hypotheses carry (a recogniser's ``am_score``, ``lm_score``, ``ctc_score``...).

    Letting tuning re-weight a recogniser's own terms helps when its ``score`` mixes them with fixed
    weights (en-kjv dev: 28.7% WER with score, am_score and lm_score, 29.7% with score alone, Kneser-Ney LM).
    """
    hypotheses = [h for u in utterances for h in u["hypotheses"]]
    if not hypotheses:
        return ["score"]
    names = [n for n in hypotheses[0] if n == "score" or (n.endswith("_score") and n not in OUTPUT_FIELDS)]
    names = [n for n in names if all(is_number(h.get(n)) for h in hypotheses)]
    return sorted(names, key=lambda n: n != "score") or ["score"]  # score first: its weight stays 1


def score_lists(rescorer: Rescorer, lists: Sequence[Sequence[dict]], progress=None, chunk_hypotheses: int = 4000):
    """Every list's LM scores, pooled in chunks of about ``chunk_hypotheses`` so progress can be shown."""
    if progress:
        progress.total(len(lists))
    results, start = [], 0
    while start < len(lists):
        end, size = start, 0
        while end < len(lists) and (size < chunk_hypotheses or end == start):
            size += len(lists[end])
            end += 1
        results.extend(rescorer.rescore_batch(lists[start:end]))
        if progress:
            progress.advance(end - start)
        start = end
    return results


def collect_dev_set(rescorer: Rescorer, utterances: Sequence[dict], unit: str, progress=None) -> DevSet:
    """Score every hypothesis once and tabulate what the search needs."""
    lists = [u["hypotheses"] for u in utterances]
    results = score_lists(rescorer, lists, progress)
    field_names = list(rescorer.weights.score_fields)
    names = [f"field:{f}" for f in field_names] + ["lm_weight", "length_bonus"]
    if rescorer.backward_scorer is not None:
        names.append("backward_weight")
    U, H = len(lists), max(1, max((len(h) for h in lists), default=0))  # >= 1 column: see below
    features = torch.zeros(U, H, len(names), dtype=torch.float64)
    errors = torch.zeros(U, H, dtype=torch.int64)
    valid = torch.zeros(U, H, dtype=torch.bool)
    reference_units = 0
    for u, (utterance, result) in enumerate(zip(utterances, results)):
        empty_output = error_counts(utterance["reference"], "", unit)
        reference_units += empty_output.ref_len
        errors[u, 0] = empty_output.errors  # an empty list outputs "": kept when no hypothesis fills column 0
        for h, hyp in enumerate(utterance["hypotheses"]):
            row = [rescorer.field_value(hyp, f) for f in field_names]
            row += [result.lm_logprobs[h], float(text_length(hyp["text"], unit))]
            if result.backward_logprobs is not None:
                row.append(result.backward_logprobs[h])
            features[u, h] = torch.tensor(row, dtype=torch.float64)
            errors[u, h] = error_counts(utterance["reference"], hyp["text"], unit).errors
            valid[u, h] = True
    return DevSet(names, features, errors, valid, reference_units)


def count_errors(dev: DevSet, vector: torch.Tensor) -> int:
    """Total errors of the hypotheses that ``vector`` ranks first (ties: the earlier hypothesis)."""
    totals = (dev.features @ vector).masked_fill(~dev.valid, float("-inf"))
    # argmax returns the first of equal maxima: column 0 (the empty output's errors) for an empty list
    chosen = totals.argmax(dim=1, keepdim=True)
    return int(dev.errors.gather(1, chosen).sum())


def within_utterance_spread(dev: DevSet, column: int) -> float:
    """Median over utterances of the standard deviation of one feature across the n-best list."""
    spreads = []
    for u in range(dev.features.shape[0]):
        values = dev.features[u, dev.valid[u], column]
        if values.numel() > 1:
            spreads.append(float(values.std()))
    return statistics.median(spreads) if spreads else 0.0


SIGNED_WEIGHTS = ("length_bonus", "input_bonus")  # weights that may be negative; the others are scales >= 0


def coarse_grid(dev: DevSet, name: str) -> list[float]:
    """Candidate values of one weight, scaled so that its term moves totals as much as the first field."""
    column = dev.names.index(name)
    anchor = within_utterance_spread(dev, 0) or 1.0
    spread = within_utterance_spread(dev, column)
    if spread == 0:
        return [0.0]  # a feature that never differs within a list cannot change a ranking
    scale = anchor / spread
    if name in SIGNED_WEIGHTS:
        return [scale * k / 10 for k in range(-30, 31)]
    return [0.0] + [scale * 2 ** (k / 4) for k in range(-24, 17)]


def fine_grid(value: float, coarse: list[float]) -> list[float]:
    """Values between the neighbours of ``value`` in its coarse grid."""
    position = min(range(len(coarse)), key=lambda i: abs(coarse[i] - value))
    low = coarse[max(position - 1, 0)]
    high = coarse[min(position + 1, len(coarse) - 1)]
    return [low + (high - low) * k / 20 for k in range(21)]


def best_value(dev: DevSet, vector: torch.Tensor, column: int, candidates: list[float]) -> tuple[float, int]:
    """The candidate for one weight with the fewest errors; the middle of a tied run."""
    errors = []
    for value in candidates:
        vector[column] = value
        errors.append(count_errors(dev, vector))
    fewest = min(errors)
    tied = [i for i, e in enumerate(errors) if e == fewest]
    run = longest_run(tied)
    return candidates[run[len(run) // 2]], fewest


def longest_run(indices: list[int]) -> list[int]:
    runs, current = [], [indices[0]]
    for i in indices[1:]:
        if i == current[-1] + 1:
            current.append(i)
        else:
            runs.append(current)
            current = [i]
    runs.append(current)
    return max(runs, key=len)


def search_weights(dev: DevSet, free: list[str], rounds: int = 3) -> tuple[torch.Tensor, int]:
    """Coordinate descent over coarse grids, then over fine grids around the best point.

    With a backward LM the descent runs twice, from zero and from the best joint forward/backward
    interpolation, and keeps the better end point (the first on a tie).
    """
    grids = {name: coarse_grid(dev, name) for name in free}
    starts = [initial_vector(dev)]
    if "backward_weight" in free:
        joint = initial_vector(dev)
        search_interpolation(dev, joint, grids["lm_weight"])
        starts.append(joint)
    results = [coordinate_descent(dev, start, free, grids, rounds) for start in starts]
    return min(results, key=lambda result: result[1])


def initial_vector(dev: DevSet) -> torch.Tensor:
    vector = torch.zeros(len(dev.names), dtype=torch.float64)
    vector[0] = 1.0
    return vector


def coordinate_descent(dev: DevSet, vector: torch.Tensor, free: list[str], grids: dict, rounds: int):
    errors = count_errors(dev, vector)
    for stage in ("coarse", "fine"):
        for _ in range(rounds):
            before = vector.clone()
            for name in free:
                column = dev.names.index(name)
                grid = grids[name] if stage == "coarse" else fine_grid(float(vector[column]), grids[name])
                vector[column], errors = best_value(dev, vector, column, grid)
            if torch.equal(before, vector):
                break
    return vector, errors


def search_interpolation(dev: DevSet, vector: torch.Tensor, lm_grid: list[float]) -> int:
    """Start the forward and backward LM weights from their best joint point: ``scale`` times
    ``(1 - share, share)``. The two scores are so correlated that searching one weight at a time
    from zero rarely moves the second one.
    """
    forward, backward = dev.names.index("lm_weight"), dev.names.index("backward_weight")
    best: tuple[int, float, float] | None = None
    for share in [k / 10 for k in range(11)]:
        for scale in lm_grid:
            vector[forward], vector[backward] = scale * (1 - share), scale * share
            errors = count_errors(dev, vector)
            if best is None or errors < best[0]:
                best = (errors, scale * (1 - share), scale * share)
    errors, vector[forward], vector[backward] = best
    return errors


def tune_weights(rescorer: Rescorer, utterances: Sequence[dict], unit: str = "auto", progress=None,
                 decision: str = "map", search: str = "none") -> tuple[Weights, dict]:
    """Find weights minimising errors on ``utterances`` (which need references). Returns weights and figures."""
    dev_utterances = [u for u in utterances if isinstance(u.get("reference"), str)]
    if not dev_utterances:
        raise UsageError("tuning needs references: no utterance in the dev set has a 'reference'")
    if not rescorer.weights.score_fields:
        raise UsageError("tuning needs at least one first-pass score field (e.g. --score-fields score)")
    unit = detect_unit(u["reference"] for u in dev_utterances) if unit == "auto" else unit
    dev = collect_dev_set(rescorer, dev_utterances, unit, progress)
    free = [n for n in dev.names[1:]]
    log.info("searching %s on %d utterances", ", ".join(free), len(dev_utterances))
    vector, errors = search_weights(dev, free)
    weights = weights_from_vector(dev.names, vector)
    weights.posterior_temperature = fit_temperature(dev, vector)
    map_errors = errors
    if decision == "mbr":
        weights.decision = "mbr"
        weights.mbr_temperature, errors = fit_mbr_temperature(dev, vector, dev_utterances, unit)
        log.info("MBR: temperature %.4g, %d errors (the highest total: %d)", weights.mbr_temperature, errors, map_errors)
    searched = {}
    if search == "network":
        from pipeline.tune_network import tune_network

        weights.network["stage_budget"] = stage_budget(rescorer.weights.network)  # given, not fitted
        rescorer.weights = weights  # the arcs are weighed with the tuned first-pass fields
        weights.network, searched = tune_network(rescorer, dev_utterances, unit, decision=decision)
        weights.confusions = searched.pop("confusions")
        weights.search = choose_search(searched["search_errors"], errors, dev.reference_units)
    baseline = evaluate_utterances(dev_utterances, unit)
    figures = {
        "unit": unit,
        "metric": baseline.label,
        "utterances": len(dev_utterances),
        "hypotheses": int(dev.valid.sum()),
        "first_pass": baseline.first_pass.rate,
        "tuned": errors / max(dev.reference_units, 1),
        "tuned_highest_total": map_errors / max(dev.reference_units, 1),
        "decision": decision,
        "oracle": baseline.oracle.rate,
        "posterior_temperature": weights.posterior_temperature,
        "curves": error_curves(dev, vector, free),
        **{key: value for key, value in searched.items() if key != "search_errors"},
    }
    return weights, figures


def choose_search(search_errors: int, plain_errors: int, units: int) -> str:
    """"network" when the search makes fewer dev errors than plain rescoring, else "none" (said once).

    The search's settings are recorded either way, so ``rescore --search network`` can still force it.
    """
    if search_errors < plain_errors:
        return "network"
    log.warning("the network search made %d errors on the dev set (%.2f%%), no fewer than plain rescoring's %d "
                "(%.2f%%): the weights keep search none (rescore --search network still applies it)",
                search_errors, 100 * search_errors / max(units, 1), plain_errors, 100 * plain_errors / max(units, 1))
    return "none"


def fit_temperature(dev: DevSet, vector: torch.Tensor) -> float:
    """The posterior temperature that best predicts which hypothesis has the fewest errors (max likelihood).

    Calibrates ``posterior`` as a confidence: with T fitted, the fewest-error hypothesis gets on average
    the probability the posteriors claim for it. Searched on a log grid from 0.01 to 1000.
    """
    totals = (dev.features @ vector).masked_fill(~dev.valid, float("-inf"))
    fewest = dev.errors.masked_fill(~dev.valid, torch.iinfo(torch.int64).max).min(dim=1, keepdim=True).values
    target = (dev.errors == fewest) & dev.valid  # every hypothesis tied for fewest errors counts as right
    usable = dev.valid.sum(dim=1) > 1
    if not bool(usable.any()):
        return 1.0
    best_t, best_ll = 1.0, float("-inf")
    for k in range(-40, 61):
        temperature = 10 ** (k / 20)
        logp = torch.log_softmax(totals / temperature, dim=1)
        right = torch.logsumexp(logp.masked_fill(~target, float("-inf")), dim=1)
        ll = float(right[usable].mean())
        if ll > best_ll:
            best_t, best_ll = temperature, ll
    return best_t


def fit_mbr_temperature(dev: DevSet, vector: torch.Tensor, utterances: Sequence[dict], unit: str) -> tuple[float, int]:
    """The MBR posterior temperature with the fewest dev errors (:func:`pipeline.mbr.best_mbr_temperature`)."""
    from pipeline.mbr import best_mbr_temperature, mbr_evidence
    from pipeline.metrics import split_units

    totals = dev.features @ vector
    evidence = []
    for u, utterance in enumerate(utterances):
        hyps = utterance["hypotheses"]
        evidence.append(mbr_evidence([split_units(h["text"], unit) for h in hyps], totals[u, :len(hyps)].tolist())
                        if hyps else None)
    return best_mbr_temperature(evidence, lambda u, index: int(dev.errors[u, 0 if index is None else index]))


def error_curves(dev: DevSet, vector: torch.Tensor, free: list[str], points: int = 41) -> dict:
    """For each tuned weight, the dev error rate along it with the others at the chosen point (for --plot)."""
    curves = {}
    units = max(dev.reference_units, 1)
    for name in free:
        column = dev.names.index(name)
        chosen = float(vector[column])
        grid = coarse_grid(dev, name)
        step = max((abs(b - a) for a, b in zip(grid, grid[1:])), default=1.0) or 1.0
        span = max(abs(chosen), step) * 2
        low = chosen - span if name in SIGNED_WEIGHTS else max(0.0, chosen - span)  # LM and field scales stay >= 0
        values = [low + (chosen + span - low) * k / (points - 1) for k in range(points)]
        trial = vector.clone()
        rates = []
        for value in values:
            trial[column] = value
            rates.append(count_errors(dev, trial) / units)
        curves[name.removeprefix("field:")] = {"values": values, "error_rate": rates, "chosen": chosen}
    return curves


def weights_from_vector(names: list[str], vector: torch.Tensor) -> Weights:
    values = dict(zip(names, vector.tolist()))
    return Weights(
        lm_weight=values["lm_weight"],
        length_bonus=values["length_bonus"],
        backward_weight=values.get("backward_weight", 0.0),
        score_fields={n.removeprefix("field:"): v for n, v in values.items() if n.startswith("field:")},
    )

