"""Aligning a hypothesis with its reference for people to read, like ``align-text`` or sclite's pralign.

Each column is a (reference unit, hypothesis unit, operation) triple: ``C`` correct, ``S`` substituted,
``I`` inserted (no reference unit), ``D`` deleted (no hypothesis unit). The alignment has the fewest
edits (the same count as :func:`pipeline.metrics.edit_counts`).
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.cells import cell_len

GAP = "***"


def align(ref: Sequence[str], hyp: Sequence[str]) -> list[tuple[str | None, str | None, str]]:
    """A minimum-edit alignment of two unit sequences, as columns in order."""
    R, H = len(ref), len(hyp)
    # cost[i][j]: edits between ref[:i] and hyp[:j]
    cost = [[0] * (H + 1) for _ in range(R + 1)]
    for i in range(R + 1):
        cost[i][0] = i
    for j in range(H + 1):
        cost[0][j] = j
    for i in range(1, R + 1):
        for j in range(1, H + 1):
            diagonal = cost[i - 1][j - 1] + (ref[i - 1] != hyp[j - 1])
            cost[i][j] = min(diagonal, cost[i - 1][j] + 1, cost[i][j - 1] + 1)
    columns = []
    i, j = R, H
    while i or j:
        if i and j and cost[i][j] == cost[i - 1][j - 1] + (ref[i - 1] != hyp[j - 1]):
            columns.append((ref[i - 1], hyp[j - 1], "C" if ref[i - 1] == hyp[j - 1] else "S"))
            i, j = i - 1, j - 1
        elif i and cost[i][j] == cost[i - 1][j] + 1:
            columns.append((ref[i - 1], None, "D"))
            i -= 1
        else:
            columns.append((None, hyp[j - 1], "I"))
            j -= 1
    return columns[::-1]


def errors_of(columns: list[tuple[str | None, str | None, str]]) -> int:
    return sum(op != "C" for _, _, op in columns)


def render(columns: list[tuple[str | None, str | None, str]], labels: tuple[str, str] = ("REF", "HYP")) -> list[str]:
    """Three lines, columns padded to a common display width (CJK characters are two cells wide):
    the reference, the hypothesis (``***`` for a gap) and the operations (blank where correct)."""
    rows: list[list[str]] = [[], [], []]
    for ref, hyp, op in columns:
        cells = [ref if ref is not None else GAP, hyp if hyp is not None else GAP, "" if op == "C" else op]
        if op == "S":
            cells[0], cells[1] = cells[0].upper(), cells[1].upper()
        width = max(cell_len(c) for c in cells)
        for row, cell in zip(rows, cells):
            row.append(cell + " " * (width - cell_len(cell)))
    names = [labels[0], labels[1], "OP"]
    label_width = max(len(n) for n in names) + 1
    return [f"{name + ':':<{label_width}} " + " ".join(row).rstrip() for name, row in zip(names, rows)]
