"""A progress bar on stderr for rescoring and tuning: count of total, rate and time left.

Shown only when stderr is a terminal. While it is up, log records go through the bar's console,
so a warning prints above the bar instead of onto it.
"""

from __future__ import annotations

import logging
import sys

from rich.console import Console
from rich.progress import (
    BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TaskProgressColumn, TextColumn, TimeElapsedColumn,
)
from rich.text import Text

stderr = Console(stderr=True)


class RateColumn(ProgressColumn):
    """Items per second since the start, and the time left at that rate (steadier than a moving window
    when updates come a chunk at a time)."""

    def __init__(self, unit: str):
        super().__init__()
        self.unit = unit

    def render(self, task) -> Text:
        elapsed = task.elapsed or 0.0
        if not task.completed or not elapsed:
            return Text(f"- {self.unit}/s, time left -", style="progress.data.speed")
        rate = task.completed / elapsed
        left = "-" if task.total is None else format_duration((task.total - task.completed) / rate)
        return Text(f"{rate:,.1f} {self.unit}/s, {left} left", style="progress.data.speed")


def format_duration(seconds: float) -> str:
    minutes, seconds = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


class progress_bar:
    """``with progress_bar(enabled, "rescoring") as bar``: ``bar.total(n)``, ``bar.advance(n)``; None when off."""

    def __init__(self, enabled: bool, description: str, unit: str = "utt"):
        self.description = description
        self.progress = None
        self.task = None
        self.redirected: list[tuple[logging.StreamHandler, object]] = []
        if enabled and sys.stderr.isatty():
            self.progress = Progress(
                TextColumn(description), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(), TimeElapsedColumn(),
                RateColumn(unit), console=stderr, transient=True,
            )

    def __enter__(self) -> progress_bar | None:
        if self.progress is None:
            return None
        original = sys.stderr
        self.progress.__enter__()  # replaces sys.stderr with a proxy that prints above the bar
        self.task = self.progress.add_task(self.description, total=None)
        self.route_logging(original)
        return self

    def route_logging(self, original) -> None:
        """Point the log handlers that wrote to stderr at rich's proxy of it."""
        if sys.stderr is original:
            return
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream is original:
                self.redirected.append((handler, handler.setStream(sys.stderr)))

    def total(self, count: int) -> None:
        self.progress.update(self.task, total=count)

    def advance(self, count: int) -> None:
        self.progress.update(self.task, advance=count)

    def __exit__(self, *exc) -> None:
        if self.progress is None:
            return
        for handler, stream in self.redirected:
            handler.setStream(stream)
        self.progress.__exit__(*exc)
