"""Plain rescoring against the confusion-network search, tuned on one random half of a dev file and
measured on the other (the CLI end to end), with the rescoring time of each:

    python scripts/compare_search.py ../shared/data/zh-rmrb/dev.nbest.json [-m MODEL_DIR] [--splits 3] [--passes N]

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


def cli(*args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True, text=True)
    if result.returncode:
        sys.exit(result.stderr)
    return result.stdout


def rescored_rate(source: Path, weights: Path, model: list[str], search: str, out: Path) -> tuple[float, float]:
    started = time.monotonic()
    cli("rescore", str(source), *model, "--weights", str(weights), "--search", search, "-o", str(out), "--no-progress")
    elapsed = time.monotonic() - started
    return json.loads(cli("evaluate", str(out), "--json"))["rescored"]["rate"], elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dev", type=Path)
    parser.add_argument("-m", "--model", type=Path)
    parser.add_argument("--splits", type=int, default=3)
    parser.add_argument("--passes", type=int, help="rounds of local changes (default: as tuned)")
    args = parser.parse_args()
    model = ["-m", str(args.model)] if args.model else []
    utterances = json.loads(args.dev.read_text(encoding="utf-8"))["utterances"]
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
            cli("tune", str(tune_file), *model, "-o", str(weights), "--search", "network", "--no-progress")
            tuned = json.loads(weights.read_text())
            if args.passes is not None:
                tuned["weights"]["network"]["passes"] = args.passes
                weights.write_text(json.dumps(tuned))
            kept = tuned["weights"]["search"] == "network"
            plain, plain_s = rescored_rate(test_file, weights, model, "none", tmp / "plain.json")
            searched, search_s = rescored_rate(test_file, weights, model, "network", tmp / "searched.json")
            inputs = sum(not u.get("best_in_input", True)
                         for u in json.loads((tmp / "searched.json").read_text())["utterances"])
            rows.append((plain, searched, searched if kept else plain, search_s / plain_s))
            print(f"split {seed}: plain {100 * plain:.2f}%, network search {100 * searched:.2f}% "
                  f"({tuned['weights']['network']['passes']} passes, {tuned['weights']['network']['candidates']} paths, "
                  f"{inputs} bests not in the list; "
                  f"tune {'kept' if kept else 'turned off'} the search), time x{search_s / plain_s:.2f}")
    mean = lambda k: 100 * statistics.mean(r[k] for r in rows)  # noqa: E731
    print(f"mean of {args.splits}: plain {mean(0):.2f}%, search {mean(1):.2f}%, as tuned {mean(2):.2f}%, "
          f"time x{statistics.mean(r[3] for r in rows):.2f}")


if __name__ == "__main__":
    main()
