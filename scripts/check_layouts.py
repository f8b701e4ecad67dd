"""Check that every toolkit layout gives the same result as our JSON for one dev set.

Writes the dev set in each layout (Kaldi archives, ESPnet2 Nbest_recog, NeMo TSV + manifest) with the
test suite's writers, rescores each and the JSON with the same weights, and prints how many `best`
texts agree and the WER/CER of each:

    python scripts/check_layouts.py ../shared/data/en-kjv/dev.nbest.json [-m MODEL_DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from layouts import write_espnet, write_kaldi, write_kaldi_text, write_nemo  # noqa: E402


def run(*args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True, text=True)
    if result.returncode:
        sys.exit(result.stderr)
    return result.stdout


def rescore(source: list[str], weights: Path, model: list[str], out: Path) -> dict[str, str]:
    run("rescore", *source, *model, "--weights", str(weights), "-o", str(out), "--no-progress")
    report = json.loads(run("evaluate", str(out), "--json"))
    best = {u["id"]: u["best"] for u in map(json.loads, out.read_text().splitlines())} if out.suffix == ".jsonl" else \
        {u["id"]: u["best"] for u in json.loads(out.read_text())["utterances"]}
    return best, report["rescored"]["rate"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dev", type=Path)
    parser.add_argument("-m", "--model", type=Path)
    args = parser.parse_args()
    model = ["-m", str(args.model)] if args.model else []
    utterances = json.loads(args.dev.read_text(encoding="utf-8"))["utterances"]
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        # Kaldi carries costs, not a total: its JSON twin has the same two fields under Kaldi's names.
        # (a list with a total score only puts it all in the acoustic cost, with a zero graph cost)
        kaldi_twin = [{**u, "hypotheses": [{"text": h["text"], "ac_score": h.get("am_score", h["score"]),
                                            "lm_withlm_score": h.get("lm_score", 0.0)} for h in u["hypotheses"]]}
                      for u in utterances]
        plain_twin = [{**u, "hypotheses": [{"text": h["text"], "score": h["score"]} for h in u["hypotheses"]]}
                      for u in utterances]
        refs = write_kaldi_text(tmp / "text", utterances)
        cases = {
            "kaldi": (kaldi_twin, [str(write_kaldi(tmp / "kaldi", kaldi_twin, {"acwt": "ac_score", "lmwt.withlm": "lm_withlm_score"})),
                                   "--references", str(refs)]),
            "espnet": (plain_twin, [str(write_espnet(tmp / "espnet", plain_twin)), "--references", str(refs)]),
        }
        beams, manifest = write_nemo(tmp / "beams.tsv", tmp / "manifest.json", plain_twin)
        depth = max(len(u["hypotheses"]) for u in plain_twin)
        cases["nemo"] = (plain_twin, [str(beams), "--beam-size", str(depth), "--references", str(manifest)])
        for name, (twin, source) in cases.items():
            canonical = tmp / f"{name}.json"
            canonical.write_text(json.dumps({"utterances": twin}, ensure_ascii=False), encoding="utf-8")
            weights = tmp / f"{name}.weights.json"
            run("tune", str(canonical), *model, "-o", str(weights), "--no-progress")
            json_best, json_rate = rescore([str(canonical)], weights, model, tmp / f"{name}.json.out.jsonl")
            layout_best, layout_rate = rescore(source, weights, model, tmp / f"{name}.layout.out.jsonl")
            same = sum(json_best[k] == layout_best.get(k) for k in json_best)
            print(f"{name:>6}: same best for {same} of {len(json_best)} utterances; "
                  f"rescored error rate {100 * layout_rate:.2f}% ({name}) vs {100 * json_rate:.2f}% (JSON)")


if __name__ == "__main__":
    main()
