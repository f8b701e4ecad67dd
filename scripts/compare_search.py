"""Plain rescoring against the confusion-network search, tuned on one random half of a dev file and
measured on the other (the CLI end to end), with the rescoring time of each.

    python scripts/compare_search.py ../shared/data/zh-rmrb/dev.nbest.json [-m MODEL_DIR] [--splits 3] [--passes N]
        [--candidates N] [--stage-budget F|none] [--against-budget F|none] [--without-confusions]

"as tuned" is what ``rescore --weights`` does: the search where ``tune --search network`` kept it (it
made fewer errors than plain rescoring on the tuning half), plain rescoring where it turned it off.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pipeline.nbest import read_nbest


def cli(*args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True, text=True)
    if result.returncode:
        sys.exit(result.stderr)
    return result.stdout


def rescored_rate(source: Path, weights: Path, model: list[str], search: str, out: Path,
                  *options: str) -> tuple[float, float]:
    started = time.monotonic()
    cli("rescore", str(source), *model, "--weights", str(weights), "--search", search, "-o", str(out), "--no-progress",
        *options)
    elapsed = time.monotonic() - started
    return json.loads(cli("evaluate", str(out), "--json"))["rescored"]["rate"], elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dev", type=Path, help="dev n-best file with references")
    parser.add_argument("-m", "--model", type=Path, help="model directory (default: the embedded model)")
    parser.add_argument("--splits", type=int, default=3, help="random halves to tune on and measure (default: 3)")
    parser.add_argument("--passes", type=int, help="rounds of local changes (default: as tuned)")
    parser.add_argument("--candidates", type=int, help="paths expanded per list (default: as tuned)")
    parser.add_argument("--stage-budget", help="tune and rescore with this stage budget (default: tune's)")
    parser.add_argument("--against-budget", help="also rescore each test half with this stage budget instead "
                        "(the same tuned weights), and print its error rate and time ratio beside")
    parser.add_argument("--without-confusions", action="store_true", help="also rescore each test half with the "
                        "search without the confusable units (the same tuned weights otherwise), and print its "
                        "error rate and time ratio beside")
    args = parser.parse_args()
    model = ["-m", str(args.model)] if args.model else []
    utterances = read_nbest(args.dev)  # JSON or JSON Lines (the halves are written as JSON)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        for seed in range(args.splits):
            order = list(range(len(utterances)))
            random.Random(seed).shuffle(order)
            halves = [sorted(order[: len(order) // 2]), sorted(order[len(order) // 2:])]
            tune_file, test_file = tmp / f"tune{seed}.json", tmp / f"test{seed}.json"
            for path, half in zip((tune_file, test_file), halves):
                path.write_text(json.dumps({"utterances": [utterances[i] for i in half]}, ensure_ascii=False))
            weights = tmp / f"w{seed}.json"
            budget = ["--stage-budget", args.stage_budget] if args.stage_budget else []
            cli("tune", str(tune_file), *model, "-o", str(weights), "--search", "network", "--no-progress", *budget)
            tuned = json.loads(weights.read_text())
            for name in ("passes", "candidates"):
                if getattr(args, name) is not None:
                    tuned["weights"]["network"][name] = getattr(args, name)
            weights.write_text(json.dumps(tuned))
            kept = tuned["weights"]["search"] == "network"
            plain, plain_s = rescored_rate(test_file, weights, model, "none", tmp / "plain.json")
            searched, search_s = rescored_rate(test_file, weights, model, "network", tmp / "searched.json")
            inputs = sum(not u.get("best_in_input", True)
                         for u in json.loads((tmp / "searched.json").read_text())["utterances"])
            row = (plain, searched, searched if kept else plain, search_s / plain_s)
            variants = {}  # label: (error rate, time ratio)
            if args.against_budget:
                other, other_s = rescored_rate(test_file, weights, model, "network", tmp / "other.json",
                                               "--stage-budget", args.against_budget)
                variants[f"stage budget {args.against_budget}"] = (other, other_s / plain_s)
            if args.without_confusions:
                tuned["weights"]["confusions"] = None  # no table, no added arcs, whatever the penalty
                bare = tmp / f"w{seed}-without-confusions.json"
                bare.write_text(json.dumps(tuned))
                other, other_s = rescored_rate(test_file, bare, model, "network", tmp / "other.json")
                variants["without the confusable units"] = (other, other_s / plain_s)
            rows.append((row, variants))
            print(f"split {seed}: plain {100 * plain:.2f}%, network search {100 * searched:.2f}% "
                  f"({tuned['weights']['network']['passes']} passes, {tuned['weights']['network']['candidates']} paths, "
                  f"stage budget {tuned['weights']['network']['stage_budget']}, {inputs} bests not in the list; "
                  f"tune {'kept' if kept else 'turned off'} the search), time x{search_s / plain_s:.2f}"
                  + "".join(f"; {label}: {100 * rate:.2f}%, time x{ratio:.2f}" for label, (rate, ratio) in variants.items()),
                  flush=True)
    mean = lambda k: statistics.mean(r[k] for r, _ in rows)  # noqa: E731
    extra = lambda label, k: statistics.mean(v[label][k] for _, v in rows)  # noqa: E731
    print(f"mean of {args.splits}: plain {100 * mean(0):.2f}%, search {100 * mean(1):.2f}%, "
          f"as tuned {100 * mean(2):.2f}%, time x{mean(3):.2f}"
          + "".join(f"; {label}: {100 * extra(label, 0):.2f}%, time x{extra(label, 1):.2f}" for label in rows[0][1]))


if __name__ == "__main__":
    main()
