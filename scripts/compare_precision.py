"""Does the bf16 fast mode change any chosen hypothesis? Rescore a dev file in fp32 and in bf16.

    python scripts/compare_precision.py ../shared/data/zh-rmrb/dev.nbest.json -m exp/zh --weights w.json

Prints how many utterances get a different best hypothesis, the error rates of both, the largest
LM-score difference, and the time each precision took.
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import torch

from pipeline.evaluate import evaluate_utterances
from pipeline.models import load_scorer
from pipeline.nbest import read_nbest
from pipeline.rescore import Rescorer, Weights


def rescore(utterances: list[dict], model: Path, weights: Weights, precision: str) -> tuple[list[dict], float]:
    rescorer = Rescorer(load_scorer(model, precision=precision), weights)
    start = time.perf_counter()
    result = list(rescorer.rescore_utterances(copy.deepcopy(utterances)))
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("nbest", type=Path)
    parser.add_argument("-m", "--model", type=Path, required=True)
    parser.add_argument("--weights", type=Path, help="a weights file from 'asr-rescore tune' (default: lm_weight 1)")
    args = parser.parse_args()
    torch.set_num_threads(1)

    utterances = read_nbest(args.nbest)
    weights = Weights.load(args.weights) if args.weights else Weights()
    exact, exact_s = rescore(utterances, args.model, weights, "fp32")
    fast, fast_s = rescore(utterances, args.model, weights, "bf16")
    changed = sum(a["best"] != b["best"] for a, b in zip(exact, fast))
    largest = max(
        abs(h["lm_logprob"] - g["lm_logprob"])
        for a, b in zip(exact, fast) for h, g in zip(a["hypotheses"], b["hypotheses"])
    )
    rate_exact, rate_fast = evaluate_utterances(exact).rescored, evaluate_utterances(fast).rescored
    label = evaluate_utterances(exact).label
    print(f"{args.nbest}: {len(utterances)} utterances; best hypothesis changed in {changed}")
    print(f"  {label} fp32 {100 * rate_exact.rate:.2f}%  bf16 {100 * rate_fast.rate:.2f}%  "
          f"(difference {100 * (rate_fast.rate - rate_exact.rate):+.2f} points)")
    print(f"  largest |lm_logprob difference| {largest:.4f} nats; time fp32 {exact_s:.1f} s, bf16 {fast_s:.1f} s "
          f"({exact_s / fast_s:.2f}x)")


if __name__ == "__main__":
    main()
