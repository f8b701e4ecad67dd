"""Plain rescoring, MBR and the confusion-network search on a dev set, over random halves: for each
split, ``tune --decision mbr --search network`` on one half, each method measured on the other.

Every text is scored once over all splits (a memo in front of the LM), so ten splits cost little more
than one. "as tuned" is what ``rescore --weights`` does with those weights (the search only where
tune kept it); "search without confusions" the search with the same weights less the confusable units
(pipeline.confusions). For the search's cost against plain rescoring, see scripts/compare_search.py.

    python scripts/compare_methods.py ../shared/data/zh-rmrb/dev.nbest.json [-m MODEL_DIR] [--splits 10] [--first-split 0] [--candidates N]
        [--stage-budgets 0.1,none]

``--stage-budgets`` tunes and measures each split once per budget of the search's stages (pipeline.screen;
"none": no limit), and prints beside the search the texts its network scored per input hypothesis, the
inputs included (plain rescoring: 1.00).

``--plain-only`` tunes and measures plain rescoring alone (no search, no MBR): minutes instead of tens of
minutes, for comparing models. ``--score-fields score`` weighs only the given first-pass fields.
"""

from __future__ import annotations

import argparse
import copy
import logging
import random
import statistics
from pathlib import Path

from lm.checkpoint import backward_model_dir
from pipeline.commands import apply_options, make_rescorer
from pipeline.errors import UsageError
from pipeline.metrics import detect_unit, error_counts, oracle_counts
from pipeline.models import default_model_dir
from pipeline.nbest import read_nbest
from pipeline.tune import first_pass_fields, tune_weights
from pipeline.tune_network import list_oracle, score_units_per_nat
from pipeline.weights import NETWORK_DEFAULTS, Weights

METHODS = {  # name: (decision, search, passes, with the confusable units); None: what tune chose
    "plain": ("map", "none", None, True),
    "MBR": ("mbr", "none", None, True),
    "search, no passes": ("map", "network", 0, True),
    "search without confusions": ("map", "network", None, False),
    "search": ("map", "network", None, True),
    "search + MBR": ("mbr", "network", None, True),
    "as tuned": ("map", None, None, True),
}


class Memo:
    """A scorer that scores each text once and remembers it."""

    def __init__(self, scorer):
        self.scorer, self.known = scorer, {}
        self.requested = 0  # texts asked for, once per call: what the network would score without the memo

    def score(self, texts):
        self.requested += len(set(texts))
        new = [t for t in dict.fromkeys(texts) if t not in self.known]
        if new:
            self.known.update(zip(new, self.scorer.score(new)))
        return [self.known[t] for t in texts]

    def score_ngram(self, texts):
        return self.scorer.score_ngram(texts)


def error_rate(rescorer, weights: Weights, utterances: list[dict], unit: str) -> tuple[float, float]:
    """The error rate of the weights, and the texts the forward network scored per input hypothesis."""
    rescorer.weights = weights
    before = rescorer.scorer.requested
    results = rescorer.rescore_batch([u["hypotheses"] for u in utterances])
    counts = [error_counts(u["reference"], r.best, unit) for u, r in zip(utterances, results)]
    inputs = len({h["text"] for u in utterances for h in u["hypotheses"]})
    return (sum(c.errors for c in counts) / max(sum(c.ref_len for c in counts), 1),
            (rescorer.scorer.requested - before) / max(inputs, 1))


def oracles(rescorer, utterances: list[dict], unit: str) -> str:
    """The floors of the whole file: the n-best oracle and that of the hypotheses' confusion networks."""
    units = max(sum(error_counts(u["reference"], "", unit).ref_len for u in utterances), 1)
    nbest = sum(oracle_counts(u["reference"], [h["text"] for h in u["hypotheses"]], unit).errors for u in utterances)
    network = sum(list_oracle(rescorer.network_candidates(u["hypotheses"]) if u["hypotheses"] else None, u, unit)
                  for u in utterances)
    return f"oracle of the whole file: n-best {100 * nbest / units:.2f}%, confusion network {100 * network / units:.2f}%"


def confusion_settings(weights: Weights) -> str:
    """The confusable units' penalty and count weight tune chose, in nats of the LM as it tries them."""
    network = weights.network
    if not weights.confusions or network.get("confusion_penalty") is None:
        return ", no confusable units"
    nats = score_units_per_nat(network)
    return (f", confusable units at {network['confusion_penalty'] / nats:g} nats, count weight "
            f"{(network.get('confusion_count_weight') or 0.0) / nats:g}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dev", type=Path, help="dev n-best file with references")
    parser.add_argument("-m", "--model", type=Path, help="model directory (default: the embedded model)")
    parser.add_argument("--splits", type=int, default=10, help="random halves to tune on and measure (default: 10)")
    parser.add_argument("--first-split", type=int, default=0,
                        help="seed of the first split (run splits 0-4 and 5-9 as two processes on two cores)")
    parser.add_argument("--candidates", type=int, help="paths the arc-posterior fit expands per list, and the most the first-pass fit tries "
                        "(default: as tune does)")
    parser.add_argument("--plain-only", action="store_true", help="tune and measure plain rescoring only")
    parser.add_argument("--score-fields", help="first-pass fields to weigh, comma-separated (default: as tune picks)")
    parser.add_argument("--stage-budgets", default=str(NETWORK_DEFAULTS["stage_budget"]),
                        help="budgets of the search's stages to compare, comma-separated ('none': no limit)")
    args = parser.parse_args()
    if args.candidates is not None:
        NETWORK_DEFAULTS["candidates"] = args.candidates
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    utterances = [u for u in read_nbest(args.dev) if isinstance(u.get("reference"), str)]
    unit = detect_unit(u["reference"] for u in utterances)
    weights = Weights(score_fields={f: 1.0 for f in first_pass_fields(utterances)})
    try:
        weights = apply_options(weights, None, None, args.score_fields, None)  # --score-fields as rescore reads it
    except UsageError as error:
        parser.error(str(error))
    backward = backward_model_dir(args.model or default_model_dir())
    rescorer = make_rescorer(args.model, backward, weights, "auto", "fp32", 16384, 1, "cpu")
    rescorer.scorer = Memo(rescorer.scorer)
    if rescorer.backward_scorer is not None:
        rescorer.backward_scorer = Memo(rescorer.backward_scorer)
    initial = rescorer.weights
    if not args.plain_only:
        print(oracles(rescorer, utterances, unit), flush=True)
    methods = {"plain": METHODS["plain"]} if args.plain_only else METHODS
    budgets = [None if b.strip() == "none" else float(b) for b in args.stage_budgets.split(",")]
    for budget in budgets:
        initial.network["stage_budget"] = budget
        if len(budgets) > 1:
            print(f"stage budget {budget}", flush=True)
        compare_on_splits(rescorer, initial, utterances, unit, methods, args)


def compare_on_splits(rescorer, initial: Weights, utterances: list[dict], unit: str, methods: dict, args) -> None:
    """Tune on one half and measure each method on the other, for each split; print each and the means."""
    decision, search = ("map", "none") if args.plain_only else ("mbr", "network")
    rates: dict[str, list[float]] = {name: [] for name in methods}
    work: list[float] = []
    for seed in range(args.first_split, args.first_split + args.splits):
        order = list(range(len(utterances)))
        random.Random(seed).shuffle(order)
        tune_half = [utterances[i] for i in sorted(order[: len(order) // 2])]
        test_half = [utterances[i] for i in sorted(order[len(order) // 2:])]
        rescorer.weights = copy.deepcopy(initial)
        tuned, _ = tune_weights(rescorer, tune_half, unit, decision=decision, search=search)
        for name, (method_decision, method_search, passes, confusions) in methods.items():
            weights = copy.deepcopy(tuned)
            weights.decision, weights.search = method_decision, method_search or tuned.search
            weights.network["passes"] = tuned.network["passes"] if passes is None else passes
            if not confusions:
                weights.confusions = None  # no table, no added arcs, whatever the penalty
            rate, texts = error_rate(rescorer, weights, test_half, unit)
            rates[name].append(rate)
            if name == "search":
                work.append(texts)
        print(f"split {seed}: " + ", ".join(f"{name} {100 * r[-1]:.2f}%" for name, r in rates.items())
              + f" (search {'kept' if tuned.search == 'network' else 'off'}, {tuned.network['passes']} passes, "
              f"{tuned.network['candidates']} expanded paths" + confusion_settings(tuned)
              + (f", {work[-1]:.2f} texts per input" if work else "") + ")",
              flush=True)
    print(f"mean of {args.splits}: " + ", ".join(f"{n} {100 * statistics.mean(r):.2f}%" for n, r in rates.items())
          + (f"; the search's network texts per input {statistics.mean(work):.2f}" if work else ""), flush=True)


if __name__ == "__main__":
    main()
