"""A training progress bar on stderr: loss, tokens per second and time left."""

from __future__ import annotations

import logging
import sys
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


log = logging.getLogger(__name__)


class TrainingProgress:
    """Progress of the current epoch: a bar on a terminal, a log line a minute otherwise (log files).

    A no-op when disabled (tests, non-zero ranks).
    """

    def __init__(self, enabled: bool = True, log_every_s: float = 60.0):
        self.enabled = enabled
        self.use_bar = enabled and sys.stderr.isatty()
        self.log_every_s = log_every_s
        self.last_log = time.monotonic()
        self.progress: Progress | None = None
        self.task = None
        self.loss: float | None = None
        self.tokens = 0
        self.window_start = time.monotonic()
        self.tokens_per_s = 0.0

    def __enter__(self) -> TrainingProgress:
        if self.use_bar:
            self.progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}  {task.fields[speed]} tok/s  {task.fields[budget]}"),
                TimeRemainingColumn(),
                console=Console(file=sys.stderr),
                transient=False,
            )
            self.progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
            self.progress.__exit__(*exc)

    def start_epoch(self, epoch: int, num_batches: int, done: int) -> None:
        if self.progress is None:
            return
        if self.task is not None:
            self.progress.update(self.task, visible=True)
        self.task = self.progress.add_task(
            f"epoch {epoch + 1}", total=num_batches, completed=done, loss="-", speed="-", budget=""
        )

    def update(self, loss: float | None, tokens: int, elapsed_s: float, max_minutes: float | None) -> None:
        """Record one step; the bar refreshes its smoothed loss and speed."""
        if loss is not None:
            self.loss = loss if self.loss is None else 0.98 * self.loss + 0.02 * loss
        self.tokens += tokens
        now = time.monotonic()
        if now - self.window_start > 2.0:
            self.tokens_per_s = self.tokens / (now - self.window_start)
            self.tokens, self.window_start = 0, now
        budget = f"{elapsed_s / 60:.1f}/{max_minutes:g} min" if max_minutes else f"{elapsed_s / 60:.1f} min"
        if self.progress is None:
            self.log_line(budget)
            return
        self.progress.update(
            self.task, advance=1, loss=f"{self.loss:.3f}" if self.loss is not None else "-",
            speed=f"{self.tokens_per_s:,.0f}", budget=budget,
        )

    def log_line(self, budget: str) -> None:
        if not self.enabled or time.monotonic() - self.last_log < self.log_every_s:
            return
        self.last_log = time.monotonic()
        loss = f"{self.loss:.3f}" if self.loss is not None else "-"
        log.info("training: loss %s, %s tok/s, %s", loss, f"{self.tokens_per_s:,.0f}", budget)
