"""Highest total against minimum-Bayes-risk on a dev set: tuned on one random half, measured on the other.

Scores the dev file once, then for each of R random halves tunes the weights (and the MBR temperature)
on one half and counts the errors of both decisions on the other; prints each split and the means:

    python scripts/compare_decisions.py ../shared/data/zh-rmrb/dev.nbest.json [-m MODEL_DIR] [--splits 10]
"""

from __future__ import annotations

import argparse
import random
import statistics
from pathlib import Path

import torch

from lm.checkpoint import backward_model_dir
from pipeline.commands import make_rescorer
from pipeline.mbr import least_risk, pairwise_distances, top_hypotheses
from pipeline.metrics import detect_unit, split_units
from pipeline.models import default_model_dir
from pipeline.nbest import read_nbest
from pipeline.tune import DevSet, collect_dev_set, first_pass_fields, fit_mbr_temperature, search_weights
from pipeline.weights import Weights


def subset(dev: DevSet, rows: list[int]) -> DevSet:
    index = torch.tensor(rows)
    return DevSet(dev.names, dev.features[index], dev.errors[index], dev.valid[index], 0)


def errors_of(dev: DevSet, vector: torch.Tensor, utterances: list[dict], unit: str, temperature: float | None) -> int:
    totals = dev.features @ vector
    errors = 0
    for u, utterance in enumerate(utterances):
        n = len(utterance["hypotheses"])
        if n == 0:
            errors += int(dev.errors[u, 0])
            continue
        row = totals[u, :n].tolist()
        if temperature is None:
            errors += int(dev.errors[u, max(range(n), key=lambda i: (row[i], -i))])
            continue
        order = top_hypotheses(row)
        distances = pairwise_distances([split_units(utterance["hypotheses"][i]["text"], unit) for i in order])
        errors += int(dev.errors[u, order[least_risk(distances, [row[i] for i in order], temperature)]])
    return errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dev", type=Path)
    parser.add_argument("-m", "--model", type=Path)
    parser.add_argument("--splits", type=int, default=10)
    args = parser.parse_args()
    utterances = [u for u in read_nbest(args.dev) if isinstance(u.get("reference"), str)]
    unit = detect_unit(u["reference"] for u in utterances)
    fields = first_pass_fields(utterances)
    backward = backward_model_dir(args.model or default_model_dir())
    rescorer = make_rescorer(args.model, backward, Weights(score_fields={f: 1.0 for f in fields}), "auto", "fp32",
                             16384, 1, "cpu")
    dev = collect_dev_set(rescorer, utterances, unit)
    reference_units = [len(split_units(u["reference"], unit)) for u in utterances]
    results = []
    for seed in range(args.splits):
        rows = list(range(len(utterances)))
        random.Random(seed).shuffle(rows)
        tune_rows, test_rows = sorted(rows[: len(rows) // 2]), sorted(rows[len(rows) // 2:])
        tune_dev, test_dev = subset(dev, tune_rows), subset(dev, test_rows)
        tune_utts, test_utts = [utterances[i] for i in tune_rows], [utterances[i] for i in test_rows]
        vector, _ = search_weights(tune_dev, dev.names[1:])
        temperature, _ = fit_mbr_temperature(tune_dev, vector, tune_utts, unit)
        units = sum(reference_units[i] for i in test_rows)
        map_rate = errors_of(test_dev, vector, test_utts, unit, None) / units
        mbr_rate = errors_of(test_dev, vector, test_utts, unit, temperature) / units
        results.append((map_rate, mbr_rate))
        print(f"split {seed}: highest total {100 * map_rate:.2f}%, MBR {100 * mbr_rate:.2f}% (T {temperature:.3g})")
    print(f"mean over {args.splits} splits: highest total {100 * statistics.mean(r[0] for r in results):.2f}%, "
          f"MBR {100 * statistics.mean(r[1] for r in results):.2f}%")


if __name__ == "__main__":
    main()
