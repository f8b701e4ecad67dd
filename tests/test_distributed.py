"""Distributed training under torchrun (two CPU processes, gloo): gradients are synchronised.

Each rank trains on its own half of every epoch's batches. With synchronised gradients (DDP) the two
ranks take identical optimiser steps and end with identical weights; without it they would drift
apart after the first step. The worker below runs the real training command in each rank and saves
that rank's weights just before the run finishes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

TINY_OPTIONS = [
    "--vocab-size", "120", "--embedding-dim", "32", "--hidden-dim", "32", "--num-layers", "1", "--dropout", "0",
    "--epochs", "3", "--lr", "0.02", "--warmup-steps", "2", "--max-minutes", "0", "--batch-tokens", "256",
    "--precision", "fp32", "--threads", "1", "--valid-fraction", "0.1", "--patience", "100", "--no-progress",
    "--direction", "forward", "--ngram-order", "0",
]

# Runs `asr-rescore train` in each rank; before the run finishes, every rank saves its weights.
WORKER = """
import os, sys, torch
import lm.train
from pipeline.cli import main

real_finish = lm.train.finish_run
folder = sys.argv[1]

def save_then_finish(session):
    rank = int(os.environ["RANK"])
    torch.save({k: v.detach().clone() for k, v in session.model.state_dict().items()},
               os.path.join(folder, f"rank{rank}.pt"))
    real_finish(session)

lm.train.finish_run = save_then_finish
sys.argv = ["asr-rescore", *sys.argv[2:]]
main()
"""


def run_torchrun(tmp_path, corpus, out) -> subprocess.CompletedProcess:
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(worker),
               str(tmp_path), "train", str(corpus), "-o", str(out), *TINY_OPTIONS]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)


@pytest.mark.slow
def test_two_ranks_end_with_identical_weights_and_only_rank_0_writes(tmp_path, corpus_file):
    out = tmp_path / "ddp"
    result = run_torchrun(tmp_path, corpus_file, out)
    assert result.returncode == 0, result.stderr[-3000:]
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert rank0.keys() == rank1.keys()
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), f"{key}: the ranks' weights differ (gradients not synchronised)"
    # ... and they trained: the final weights are not the initial ones
    finished = json.loads((out / "train" / "finished.json").read_text())
    assert finished["step"] > 3
    # Only rank 0 wrote: one metrics line per validation, not two.
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["event"] for row in metrics if row["event"] == "valid"] == ["valid"] * 3, metrics


@pytest.mark.slow
def test_unsynchronised_ranks_would_be_caught(tmp_path, corpus_file, monkeypatch):
    """The check above fails when DDP is taken out: each rank then steps on its own batches only."""
    sitecustomize = tmp_path / "nosync"
    sitecustomize.mkdir()
    (sitecustomize / "sitecustomize.py").write_text(
        "import torch.nn.parallel\n"
        "torch.nn.parallel.DistributedDataParallel = lambda module, *a, **k: module\n"
    )
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(sitecustomize), os.environ.get("PYTHONPATH", "")]))
    result = run_torchrun(tmp_path, corpus_file, tmp_path / "nosync-run")
    assert result.returncode == 0, result.stderr[-3000:]
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert any(not torch.equal(rank0[key], rank1[key]) for key in rank0)
