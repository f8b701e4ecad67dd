"""Weight averaging during training: a moving average of the network whose horizon grows with the run.

The average is a power-function EMA (Karras et al. 2024, "Analyzing and Improving the Training Dynamics
of Diffusion Models"): after step t it moves towards the current weights by ``1 - (1 - 1/t)^(power + 1)``,
which weights step s of the run so far in proportion to ``s^power``. Its reach is a fixed share of the run
(with ``power`` 7, about the last tenth of the steps), so it suits a time budget whose step count is not
known in advance, where a fixed EMA decay would average too little of a long run or too much of a short one.
The network and the average are both validated; training keeps whichever is better (:mod:`lm.train`).
torch's :class:`~torch.optim.swa_utils.AveragedModel` holds the copy; this module only supplies the update.
Off by default (``--average-power 0``): with the cosine decay to 2% of the peak learning rate the last
steps barely move, and on zh-rmrb the average (power 7) validated worse than the network at all 28 epochs.
"""

from __future__ import annotations

import torch
from torch.optim.swa_utils import AveragedModel


def power_ema_beta(updates: int, power: float) -> float:
    """The share of the old average kept at update number ``updates`` (1 = the first, a copy)."""
    return (1.0 - 1.0 / updates) ** (power + 1.0)


def make_average(model: torch.nn.Module, power: float) -> AveragedModel:
    """A copy of ``model`` that :meth:`AveragedModel.update_parameters` moves as a power EMA."""

    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], done: torch.Tensor) -> None:
        weight = 1.0 - power_ema_beta(int(done) + 1, power)
        torch._foreach_lerp_(averaged, current, weight)

    return AveragedModel(model, multi_avg_fn=update)
