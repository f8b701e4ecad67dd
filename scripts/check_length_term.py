"""What the untuned default's length term does (the README's figures under The combined score):

    python scripts/check_length_term.py ../shared/data/zh-rmrb/dev.nbest.json [-m MODEL_DIR]

Adds an empty hypothesis 30 nats below each list's first-pass best and counts how often it becomes
``best``, with the length-neutral default and with the plain sum (``--length-bonus 0``), and prints the
untuned error rate of the file as given both ways. The CLI end to end; the model is loaded once per run.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from compare_search import cli  # scripts/ is on the path when a script runs

EMPTY_BELOW_BEST = 30.0  # nats below the list's best first-pass score


def with_empty_hypothesis(dev: Path, out: Path) -> None:
    """``dev`` with an empty hypothesis added to each list, EMPTY_BELOW_BEST below its best ``score``."""
    data = json.loads(dev.read_text(encoding="utf-8"))
    for utterance in data["utterances"]:
        best = max(hypothesis["score"] for hypothesis in utterance["hypotheses"])
        utterance["hypotheses"].append({"text": "", "score": best - EMPTY_BELOW_BEST})
    out.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dev", type=Path)
    parser.add_argument("-m", "--model", help="model directory (default: the embedded model)")
    args = parser.parse_args()
    model = ["-m", args.model] if args.model else []
    with tempfile.TemporaryDirectory() as work:
        padded, out = Path(work) / "with_empty.json", Path(work) / "out.json"
        with_empty_hypothesis(args.dev, padded)
        variants = (("length-neutral (the default)", []), ("plain sum (--length-bonus 0)", ["--length-bonus", "0"]))
        for name, options in variants:
            cli("rescore", str(padded), *model, "-o", str(out), "--no-progress", *options)
            utterances = json.loads(out.read_text(encoding="utf-8"))["utterances"]
            empty = sum(utterance["best"] == "" for utterance in utterances)
            cli("rescore", str(args.dev), *model, "-o", str(out), "--no-progress", *options)
            rate = json.loads(cli("evaluate", str(out), "--json"))["rescored"]["rate"]
            print(f"{name}: the empty hypothesis is best in {empty} of {len(utterances)} lists; "
                  f"untuned error rate of the file as given {rate:.2%}")


if __name__ == "__main__":
    main()
