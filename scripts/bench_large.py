"""Large-file benchmark: wall time and peak memory of `rescore` on a big JSON Lines file, --jobs 1 vs N.

    python scripts/bench_large.py ../shared/data/zh-rmrb/dev.nbest.json --utterances 200000 --hyps 5
    python scripts/bench_large.py ../shared/data/zh-rmrb/dev.nbest.json --utterances 20000 --jobs 1 2

The file is built from a real dev set: its utterances repeated under new ids (the first --hyps
hypotheses of each), so the text is realistic. Peak memory is GNU time's "Maximum resident set size":
for --jobs 1 that is the whole run; with workers it is the largest single process.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import subprocess
import tempfile
import time
from pathlib import Path


def build_jsonl(source: Path, target: Path, utterances: int, hyps: int) -> int:
    """Write ``utterances`` utterances cycling over the source file; returns the hypothesis count.

    Each repeat of a source utterance gets a different first word (or character) in all of its
    hypotheses, so no text is scored twice across repeats while the lists keep their shared prefixes.
    """
    base = json.loads(source.read_text(encoding="utf-8"))["utterances"]
    rng = random.Random(0)
    starts = [h["text"].split()[0] if " " in h["text"] else h["text"][:1] for u in base for h in u["hypotheses"][:1] if h["text"]]
    count = 0
    with open(target, "w", encoding="utf-8") as f:
        for i in range(utterances):
            u = dict(base[i % len(base)])
            u["id"] = f"big-{i:07d}"
            u.pop("reference", None)  # the repeats' texts changed, and the error summary is not what is timed
            start = rng.choice(starts) + ("" if not starts[0].isascii() else " ")
            u["hypotheses"] = [{**h, "text": start + h["text"]} for h in u["hypotheses"][:hyps]]
            count += len(u["hypotheses"])
            f.write(json.dumps(u, ensure_ascii=False) + "\n")
    return count


def run_rescore(path: Path, out: Path, model: str | None, jobs: int) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB, the main process) of one rescore run."""
    command = ["/usr/bin/time", "-v", "rescore", str(path), "-o", str(out), "--no-progress", "--jobs", str(jobs)]
    if model:
        command += ["-m", model]
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(result.stderr[-2000:])
    peak_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", result.stderr).group(1))
    return seconds, peak_kb / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="a canonical n-best file to replicate")
    parser.add_argument("--utterances", type=int, default=20000)
    parser.add_argument("--hyps", type=int, default=10)
    parser.add_argument("--jobs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("-m", "--model", help="model directory (default: the embedded model)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "big.jsonl"
        hypotheses = build_jsonl(args.source, path, args.utterances, args.hyps)
        size_mb = path.stat().st_size / 2**20
        print(f"{path.name}: {args.utterances} utterances, {hypotheses} hypotheses, {size_mb:.0f} MB")
        baseline = None
        for jobs in args.jobs:
            seconds, peak_mb = run_rescore(path, Path(tmp) / f"out{jobs}.jsonl", args.model, jobs)
            baseline = baseline or seconds
            print(f"--jobs {jobs}: {seconds:7.1f} s  {hypotheses / seconds:8.0f} hyps/s  speed-up {baseline / seconds:.2f}x  "
                  f"peak RSS (main process) {peak_mb:.0f} MB")


if __name__ == "__main__":
    main()
