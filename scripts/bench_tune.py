"""Benchmark of ``tune --search network``: its trials sharing the built networks and the screen's n-gram
ratings (as tune does) against sharing the LM scores alone (as it did before), in one process.

    python scripts/bench_tune.py ../shared/data/en-kjv/dev.nbest.json -m MODEL_DIR [--utterances 100] [--repeats 2]

Tunes plain rescoring once, then fits the search (pipeline.tune_network) with each memo in turn,
``--repeats`` times each, alternating so that a noisy machine slows both alike; prints each run's
seconds, the ratio of the means, and whether every run fitted the same settings. Each run starts from
an empty memo, so both variants score each text with the network once.
"""

from __future__ import annotations

import argparse
import copy
import logging
import statistics
import time
from pathlib import Path

from lm.checkpoint import backward_model_dir
from pipeline.commands import make_rescorer
from pipeline.metrics import detect_unit
from pipeline.models import default_model_dir
from pipeline.nbest import read_nbest
from pipeline.search import SearchMemo
from pipeline.tune import first_pass_fields, tune_weights
from pipeline.tune_network import tune_network
from pipeline.weights import Weights


VARIANTS = {
    "shared networks and n-gram ratings": SearchMemo,
    "LM scores only": SearchMemo.lm_scores_only,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dev", type=Path)
    parser.add_argument("-m", "--model", type=Path)
    parser.add_argument("--utterances", type=int, default=100, help="the first N utterances of DEV (0: all)")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    utterances = [u for u in read_nbest(args.dev) if isinstance(u.get("reference"), str)]
    utterances = utterances[: args.utterances] if args.utterances else utterances
    unit = detect_unit(u["reference"] for u in utterances)
    weights = Weights(score_fields={f: 1.0 for f in first_pass_fields(utterances)})
    backward = backward_model_dir(args.model or default_model_dir())
    rescorer = make_rescorer(args.model, backward, weights, "auto", "fp32", 16384, 1, "cpu")
    plain, _ = tune_weights(rescorer, utterances, unit)
    seconds: dict[str, list[float]] = {name: [] for name in VARIANTS}
    fitted = []
    for repeat in range(args.repeats):
        for name, memo in VARIANTS.items():
            rescorer.weights = copy.deepcopy(plain)
            start = time.perf_counter()
            settings, figures = tune_network(rescorer, utterances, unit, memo=memo())
            seconds[name].append(time.perf_counter() - start)
            fitted.append((settings, figures["search_errors"], figures["confusions"]))
            print(f"run {repeat + 1}, {name}: {seconds[name][-1]:.1f} s, {figures['search_errors']} dev errors",
                  flush=True)
    means = {name: statistics.mean(values) for name, values in seconds.items()}
    shared, alone = means.values()
    print(f"{len(utterances)} utterances: mean {shared:.1f} s against {alone:.1f} s, "
          f"ratio {shared / alone:.2f}; the same settings in every run: {all(f == fitted[0] for f in fitted)}")


if __name__ == "__main__":
    main()
