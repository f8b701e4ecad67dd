"""What one training run carries between its parts: its settings, its position, and its objects.

``TrainConfig`` holds the optimisation settings (CLI options map onto its fields), ``TrainState`` where
the run stands (saved in every checkpoint), ``Session`` the model, optimiser, data and device of a run.
``forward_batch`` runs one batch through the model; training and validation share it.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.optim.swa_utils import AveragedModel

from lm import distributed
from lm.data import TokenizedCorpus, collate
from lm.device import resolve_precision
from lm.model import RnnLanguageModel
from lm.ngram import NgramModel
from lm.tokenizer import Tokenizer


class TrainingError(RuntimeError):
    """Training cannot start or continue; the message says why and what is kept."""


@dataclass
class TrainConfig:
    """Optimisation settings; CLI options map onto these fields one to one. Bad values raise ValueError."""

    epochs: int = 30
    max_minutes: float | None = 50.0
    batch_tokens: int = 448
    lr: float = 3e-3
    min_lr_ratio: float = 0.02
    warmup_steps: int = 100
    weight_decay: float = 0.01
    clip: float = 1.0  # gradient-norm clipping threshold; 0 disables it
    seed: int = 1234
    device: str = "auto"
    precision: str = "auto"  # auto | fp32 | bf16
    threads: int | None = None
    valid_fraction: float = 0.02
    patience: int = 4
    max_length: int = 256
    reverse: bool = False
    checkpoint_minutes: float = 5.0
    max_bad_steps: int = 20
    ngram_order: int = 4  # Kneser-Ney n-gram interpolated with the network; 0: none
    ngram_min_count: int = 1  # drop n-grams (order 2+) seen fewer times, for a smaller model
    keep_checkpoint: bool = False  # keep train/last.pt after a finished run
    average_power: float = 0.0  # power EMA of the weights, validated beside them (lm.averaging); 0: none

    def __post_init__(self) -> None:
        at_least = {"epochs": 1, "batch_tokens": 1, "patience": 1, "max_length": 2, "ngram_min_count": 1,
                    "warmup_steps": 0, "max_bad_steps": 0, "ngram_order": 0}
        for name, low in at_least.items():
            if getattr(self, name) < low:
                raise ValueError(f"--{name.replace('_', '-')} must be at least {low}, got {getattr(self, name)}")
        for name in ("lr", "clip", "weight_decay", "min_lr_ratio", "checkpoint_minutes", "max_minutes", "average_power"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise ValueError(f"--{name.replace('_', '-')} must be a finite number >= 0, got {value}")
        if not self.lr > 0:
            raise ValueError(f"--lr must be above 0, got {self.lr}")
        if not 0 < self.valid_fraction < 1:
            raise ValueError(f"--valid-fraction must be between 0 and 1, got {self.valid_fraction}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"--threads must be at least 1 (or 0 for torch's default), got {self.threads}")


@dataclass
class TrainState:
    """Where training stands; saved in ``last.pt`` next to the weights and optimiser state."""

    epoch: int = 0
    batch_index: int = 0
    step: int = 0
    elapsed_s: float = 0.0
    best_valid_loss: float = math.inf
    rnn_weight: float = 1.0  # the network's share in the n-gram mixture of the best model
    best_is_average: bool = False  # the best model is the weight average, not the network as trained
    bad_epochs: int = 0
    bad_steps: int = 0
    clipped_steps: int = 0
    finished: bool = False
    total_steps: int = 0  # the steps the schedule plans for (epochs x batches per epoch)
    warmup_steps: int = 0  # the warm-up actually used (scaled down for a short run)


@dataclass
class Session:
    """Everything one training run passes between its parts."""

    model: RnnLanguageModel
    optimizer: torch.optim.Optimizer
    tokenizer: Tokenizer
    train_corpus: TokenizedCorpus
    valid_corpus: TokenizedCorpus
    config: TrainConfig
    device: torch.device
    world: distributed.World
    out_dir: Path
    record: dict
    state: TrainState = field(default_factory=TrainState)
    ddp_model: torch.nn.Module | None = None
    average: AveragedModel | None = None  # the moving average of the weights (lm.averaging)
    ngram: NgramModel | None = None
    valid_ngram_logprobs: torch.Tensor | None = None  # the n-gram's validation scores, computed once
    stop_requested: bool = False
    stop_event: threading.Event | None = None  # set by another thread to stop as Ctrl-C would
    started_at: float = field(default_factory=time.monotonic)
    train_loss_sum: float = 0.0  # training losses since the last training-loss row of metrics.jsonl
    train_loss_steps: int = 0

    @property
    def work_dir(self) -> Path:
        return self.out_dir / "train"

    @property
    def use_bf16(self) -> bool:
        return resolve_precision(self.config.precision, self.device) == "bf16"


def elapsed_s(session: Session) -> float:
    """Training time of the run so far, across resumes."""
    return session.state.elapsed_s + time.monotonic() - session.started_at


def forward_batch(session: Session, batch: torch.Tensor, train: bool, model: torch.nn.Module | None = None):
    """Run one batch of sentence indices: (N, L) NLL (padding 0) and the batch's x, y, lengths on the CPU.

    ``model`` defaults to the network being trained (DDP-wrapped in training)."""
    corpus = session.train_corpus if train else session.valid_corpus
    x, y, lengths = collate(corpus, batch, session.tokenizer, session.config.max_length)
    non_blocking = session.device.type == "cuda"
    inputs, targets = (x.pin_memory(), y.pin_memory()) if non_blocking else (x, y)
    inputs = inputs.to(session.device, non_blocking=non_blocking)
    targets = targets.to(session.device, non_blocking=non_blocking)
    if model is None:
        model = session.ddp_model if train and session.ddp_model is not None else session.model
    with torch.autocast(session.device.type, dtype=torch.bfloat16, enabled=session.use_bf16):
        nll = model(inputs, targets, lengths)
    return nll, x, y, lengths
