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
    """A minimum-edit alignment of two unit sequences, as columns in order.

    Tracing back from the end it prefers a match or substitution, then a deletion, then an insertion.
    A common suffix is always matched that way, so it is cut before the table is filled: n-best
    hypotheses share most of their text (the network search aligns every hypothesis of a list).
    """
    R, H = len(ref), len(hyp)
    suffix = 0
    while suffix < min(R, H) and ref[R - 1 - suffix] == hyp[H - 1 - suffix]:
        suffix += 1
    R, H = R - suffix, H - suffix
    # cost[i][j]: edits between ref[:i] and hyp[:j]
    cost = [list(range(H + 1))]
    for i in range(1, R + 1):
        above, unit = cost[-1], ref[i - 1]
        row = [i]
        left = i
        for j in range(1, H + 1):
            best = above[j - 1] + (unit != hyp[j - 1])
            if above[j] + 1 < best:
                best = above[j] + 1
            if left + 1 < best:
                best = left + 1
            row.append(best)
            left = best
        cost.append(row)
    return trace_back(cost, ref[:R], hyp[:H]) + [(r, h, "C") for r, h in zip(ref[R:], hyp[H:])]


def trace_back(cost: list[list[int]], ref: Sequence[str], hyp: Sequence[str]) -> list[tuple[str | None, str | None, str]]:
    """The columns of a filled edit-distance table, traced back from the end: a match or substitution
    where it is optimal, else a deletion, else an insertion."""
    columns = []
    i, j = len(ref), len(hyp)
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
