"""``metrics.jsonl``: one JSON line per validation (``"event": "valid"``) and one with the mean training
loss every 50 steps (``"event": "train"``), appended as training goes.

An append is one ``write`` of a whole line; a run killed in the middle of one leaves a partial last
line, which the next append replaces (on resume) and readers skip.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"


def perplexity_from_loss(loss: float) -> float:
    """exp(loss), capped so that a diverged or not-yet-validated run (inf) still prints a number."""
    return math.exp(min(loss, 50))


def kept_loss(row: dict) -> float:
    """A validation row's loss of what training kept: the weight average's where it validated better."""
    return row["average_valid_loss"] if row.get("kept") == "average" else row["valid_loss"]


def append_metrics(out_dir: Path, row: dict) -> None:
    """Append one row, first cutting off a partial line left by a run killed mid-write."""
    path = Path(out_dir) / METRICS_FILE
    drop_partial_line(path)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")


def drop_partial_line(path: Path) -> None:
    """Truncate a file to its last complete line (one that ends in a newline)."""
    if not path.is_file():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with open(path, "r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)
        log.warning("%s: dropped a partial last line left by an interrupted run", path)


def read_metrics(out_dir: Path, event: str | None = None) -> list[dict]:
    """The complete rows of ``metrics.jsonl`` (a partial last line is skipped).

    ``event``: only ``"valid"`` rows (one per validation; rows of older versions have no event) or
    ``"train"`` rows (the mean training loss every 50 steps).
    """
    path = Path(out_dir) / METRICS_FILE
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines(keepends=True):
        if line.endswith("\n") and line.strip():
            row = json.loads(line)
            if event is None or row.get("event", "valid") == event:
                rows.append(row)
    return rows
