"""How many epochs a run's time budget allows, timed on a few training steps before the run starts.

The regularisation rule (:mod:`lm.regularisation`) needs it: the small-corpus settings pay only when
the network has the epochs to use them, and a slow or busy machine gets few. The figure is measured
once and kept in ``train/budget.json``, so that a resumed run makes the same choice.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from lm import atomic, distributed

BUDGET_FILE = "budget.json"
TIMED_STEPS = 4  # timed on a second pass, after one pass over them and one more step untimed


def epochs_in_budget(seconds_per_step: float, steps_per_epoch: int, max_minutes: float | None, epochs: int) -> float:
    """The epochs a run reaches: ``epochs``, or fewer where the time budget ends it first."""
    if not max_minutes:
        return float(epochs)
    epoch_s = max(seconds_per_step * steps_per_epoch, 1e-9)
    return min(float(epochs), 60 * max_minutes / epoch_s)


def time_steps(step: Callable[[torch.Tensor], object], batches: Sequence[torch.Tensor], world) -> float:
    """Mean seconds of ``step(batch)`` (one training step) over the first batches, the mean over all
    processes, so that they agree.

    The batches are timed on a second pass: a step's first meeting with a batch shape pays for setting up
    its kernels and memory, which training pays once per shape and then reuses every epoch. Timed on
    their first pass, the steps measured 1.71 s where the next 40 of the run took 1.45 and the same 40
    again 1.38 (zh-rmrb, one thread); on the second pass, 1.47.
    """
    timed = batches[: TIMED_STEPS + 1]
    for batch in timed:
        step(batch)
    durations = []
    for batch in timed[1:]:
        start = time.perf_counter()
        step(batch)
        durations.append(time.perf_counter() - start)
    mean = sum(durations) / max(len(durations), 1)
    return distributed.all_reduce_sum([mean], world)[0] / world.size


def planned_epochs(work_dir: Path, measure, steps_per_epoch: int, config, is_main: bool) -> float:
    """The epochs this run's budget allows: ``config.epochs`` without a time budget; else read from
    ``work_dir/budget.json``, or measured with ``measure()`` (seconds per step) and recorded there."""
    if not config.max_minutes:
        return float(config.epochs)
    path = Path(work_dir) / BUDGET_FILE
    recorded = read_budget(path)
    same_run = recorded and (recorded.get("max_minutes"), recorded.get("steps_per_epoch")) == (
        config.max_minutes, steps_per_epoch)
    if same_run:
        return min(float(recorded["epochs_in_budget"]), float(config.epochs))
    seconds = measure()
    epochs = epochs_in_budget(seconds, steps_per_epoch, config.max_minutes, config.epochs)
    if is_main:
        atomic.atomic_write_json(path, {"seconds_per_step": seconds, "steps_per_epoch": steps_per_epoch,
                                        "max_minutes": config.max_minutes, "epochs_in_budget": epochs})
    return epochs


def read_budget(path: Path) -> dict | None:
    """The recorded measurement, or None where there is none (or it cannot be read: measured again)."""
    try:
        recorded = json.loads(path.read_text())
        return recorded if float(recorded["epochs_in_budget"]) >= 0 else None
    except (OSError, ValueError, KeyError, TypeError):  # TypeError: not an object, or not a number
        return None
