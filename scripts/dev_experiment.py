"""Reproduce the dev-set figures: tune on the first half of a dev file, apply to the second half.

    python scripts/dev_experiment.py ../shared/data/zh-rmrb/dev.nbest.json -m exp/zh
    python scripts/dev_experiment.py ../shared/data/en-kjv/dev.nbest.json -m exp/en --score-fields score

Prints first-pass, rescored and oracle error rates of the held-out half (weights tuned on the other
half) and of the whole file (weights tuned on the first half), for each configuration: the forward
LM alone, and forward + backward when there is a backward model (MODEL_DIR/backward, or
--backward-model). The score fields default to what ``asr-rescore tune`` picks.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch

from lm.checkpoint import backward_model_dir
from pipeline.evaluate import evaluate_utterances
from pipeline.models import load_scorer
from pipeline.nbest import read_nbest
from pipeline.rescore import Rescorer, Weights
from pipeline.tune import first_pass_fields, tune_weights


def run(rescorer: Rescorer, tune_set: list[dict], test_set: list[dict]) -> dict:
    weights, dev_figures = tune_weights(rescorer, tune_set)
    rescorer.weights = weights
    start = time.perf_counter()
    rescored_test = list(rescorer.rescore_utterances(copy.deepcopy(test_set)))
    seconds = time.perf_counter() - start
    rescored_tune = list(rescorer.rescore_utterances(copy.deepcopy(tune_set)))
    test, whole = evaluate_utterances(rescored_test), evaluate_utterances(rescored_tune + rescored_test)
    return {
        "weights": weights.__dict__,
        "tune_half": dev_figures,
        "held_out_half": {"first_pass": test.first_pass.rate, "rescored": test.rescored.rate, "oracle": test.oracle.rate},
        "whole_file": {"first_pass": whole.first_pass.rate, "rescored": whole.rescored.rate, "oracle": whole.oracle.rate},
        "metric": test.label,
        "rescore_seconds_held_out": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dev", type=Path)
    parser.add_argument("-m", "--model", type=Path, required=True)
    parser.add_argument("--backward-model", type=Path)
    parser.add_argument("--score-fields", help="default: score and every other *_score field (as tune does)")
    parser.add_argument("--split", type=int, default=150, help="utterances used for tuning (from the start)")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    torch.set_num_threads(1)

    utterances = read_nbest(args.dev)
    tune_set, test_set = utterances[: args.split], utterances[args.split :]
    names = args.score_fields.split(",") if args.score_fields else first_pass_fields(utterances)
    args.score_fields = ",".join(names)
    fields = {name: 1.0 for name in names}
    forward = load_scorer(args.model, precision=args.precision)
    results = {"forward": run(Rescorer(forward, Weights(score_fields=dict(fields))), tune_set, test_set)}
    backward_model = args.backward_model or backward_model_dir(args.model)
    if backward_model:
        backward = load_scorer(backward_model, precision=args.precision)
        rescorer = Rescorer(forward, Weights(score_fields=dict(fields)), backward_scorer=backward)
        results["forward+backward"] = run(rescorer, tune_set, test_set)
    for name, r in results.items():
        m = r["metric"]
        print(f"{args.dev.parent.name} {name} (fields {args.score_fields}):")
        for part in ("held_out_half", "whole_file"):
            f = r[part]
            print(f"  {part:14} first-pass {m} {100 * f['first_pass']:.2f}%  rescored {100 * f['rescored']:.2f}%  "
                  f"oracle {100 * f['oracle']:.2f}%")
        print(f"  tuned on first {args.split}: {100 * r['tune_half']['tuned']:.2f}%  weights {r['weights']}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
