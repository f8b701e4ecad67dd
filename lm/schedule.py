"""The learning-rate schedule: linear warm-up, then cosine decay to ``min_lr_ratio`` of the peak.

Progress through the decay is the share of planned steps done or, with a time budget
(``--max-minutes``), the share of the budget used, whichever is ahead. With a budget the rate
therefore follows the wall clock, and two runs on machines of different speed end with different
weights; with ``--max-minutes 0`` the schedule counts steps only and a run is reproducible.
"""

from __future__ import annotations

import logging
import math

from lm.session import Session, elapsed_s

log = logging.getLogger(__name__)

MAX_WARMUP_SHARE = 0.1  # the warm-up takes at most this share of the planned steps


def plan_warmup(requested: int, total_steps: int) -> int:
    """The warm-up to use: as asked, or shortened to a tenth of a run too short for it (logged once)."""
    limit = max(1, int(total_steps * MAX_WARMUP_SHARE))
    if requested <= limit:
        return requested
    log.warning("--warmup-steps %d is longer than this run's %d planned steps allow: warming up over %d steps "
                "(a tenth of the run) so that the learning rate reaches its peak", requested, total_steps, limit)
    return limit


def lr_at(session: Session) -> float:
    """The learning rate of the next step."""
    config, state = session.config, session.state
    warmup = state.warmup_steps
    if state.step < warmup:
        return config.lr * (state.step + 1) / warmup
    progress = state.step / max(state.total_steps, 1)
    if config.max_minutes:
        progress = max(progress, elapsed_s(session) / (60 * config.max_minutes))
    cosine = 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return config.lr * (config.min_lr_ratio + (1 - config.min_lr_ratio) * cosine)
