"""Distributed training under torchrun (two CPU processes, gloo) matches a single-process run."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from lm.checkpoint import load_model_dir
from lm.data import iter_corpus_lines
from lm.perplexity import compute_perplexity
from lm.scorer import SentenceScorer

TINY_OPTIONS = [
    "--vocab-size", "120", "--embedding-dim", "32", "--hidden-dim", "32", "--num-layers", "1", "--dropout", "0",
    "--epochs", "40", "--lr", "0.02", "--warmup-steps", "5", "--max-minutes", "0",
    "--precision", "fp32", "--threads", "1", "--valid-fraction", "0.1", "--patience", "100", "--no-progress",
    "--direction", "forward",
]


def train_command(corpus, out, launcher: list[str], batch_tokens: int) -> list[str]:
    options = [*TINY_OPTIONS, "--batch-tokens", str(batch_tokens)]
    return [*launcher, "-m", "pipeline", "train", str(corpus), "-o", str(out), *options]


def run_training(command: list[str]) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]


def perplexity(model_dir, corpus) -> float:
    return compute_perplexity(SentenceScorer(load_model_dir(model_dir)), list(iter_corpus_lines([corpus]))).ppl_token


@pytest.mark.slow
def test_two_process_gloo_training_matches_single_process(tmp_path, corpus_file):
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    # --batch-tokens is per process: two ranks of 256 make the same global batch as one process of 512.
    run_training(train_command(corpus_file, tmp_path / "ddp", torchrun, batch_tokens=256))
    run_training(train_command(corpus_file, tmp_path / "single", [sys.executable], batch_tokens=512))

    ddp, single = perplexity(tmp_path / "ddp", corpus_file), perplexity(tmp_path / "single", corpus_file)
    assert ddp < 3.0 and single < 3.0, (ddp, single)  # both memorised the corpus
    assert abs(ddp - single) / single < 0.15, (ddp, single)
    # Only rank 0 wrote: one metrics line per validation, not two.
    metrics = (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()
    assert len(metrics) == 40, len(metrics)
    lm = load_model_dir(tmp_path / "ddp")
    assert lm.config["model"] == load_model_dir(tmp_path / "single").config["model"]
