"""Error rates for evaluation: word error rate (WER) or character error rate (CER).

Counts come from a Levenshtein alignment of reference and hypothesis units (words, or
characters for Chinese). Sum ``EditCounts`` over a set and take ``.rate`` at the end:
the corpus rate is total errors over total reference units, not a mean of per-utterance rates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Hashable, Iterable, Sequence

from lm.tokenizer import cjk_fraction

UNITS = ("word", "char")

# Ideographs and kana: Chinese and Japanese are scored per character. Hangul is not
# listed: Korean puts spaces between words.
@dataclass(frozen=True)
class EditCounts:
    """Substitutions, insertions and deletions of one or more alignments, and the reference length."""

    substitutions: int = 0
    insertions: int = 0
    deletions: int = 0
    ref_len: int = 0

    @property
    def errors(self) -> int:
        """Total edits: S + I + D."""
        return self.substitutions + self.insertions + self.deletions

    @property
    def rate(self) -> float:
        """errors / ref_len; with an empty reference 0.0 if there are no errors, else inf."""
        if self.ref_len == 0:
            return 0.0 if self.errors == 0 else float("inf")
        return self.errors / self.ref_len

    def __add__(self, other: EditCounts) -> EditCounts:
        if not isinstance(other, EditCounts):
            return NotImplemented
        return EditCounts(
            self.substitutions + other.substitutions,
            self.insertions + other.insertions,
            self.deletions + other.deletions,
            self.ref_len + other.ref_len,
        )

    def __radd__(self, other: object) -> EditCounts:
        """Let built-in sum() start from 0."""
        if other == 0:
            return self
        return NotImplemented


def edit_counts(ref: Sequence[Hashable], hyp: Sequence[Hashable]) -> EditCounts:
    """Count S, I and D of a minimum-edit (Levenshtein) alignment of hyp against ref.

    Among alignments with the fewest edits it picks the one with the fewest insertions
    plus deletions, then the fewest insertions, so the split into S/I/D is deterministic:
    ref "a b", hyp "b c" counts as 2 substitutions, not a deletion and an insertion.
    """
    # Each cell holds one int that orders alignments by (errors, ins + dels, ins):
    # cost = errors * base**2 + (ins + dels) * base + ins, with base larger than any count.
    base = len(ref) + len(hyp) + 1
    sub_cost, del_cost = base * base, base * base + base
    ins_cost = del_cost + 1
    previous = [j * ins_cost for j in range(len(hyp) + 1)]  # ref[:0] against hyp[:j]
    for i, ref_unit in enumerate(ref, 1):
        current = [i * del_cost]
        for j, hyp_unit in enumerate(hyp, 1):
            diagonal = previous[j - 1] + (0 if ref_unit == hyp_unit else sub_cost)
            current.append(min(diagonal, previous[j] + del_cost, current[j - 1] + ins_cost))
        previous = current
    errors, rest = divmod(previous[-1], base * base)
    ins_plus_dels, insertions = divmod(rest, base)
    return EditCounts(
        substitutions=errors - ins_plus_dels,
        insertions=insertions,
        deletions=ins_plus_dels - insertions,
        ref_len=len(ref),
    )


def detect_unit(texts: Iterable[str]) -> str:
    """Return "char" if more than half the non-space characters are CJK, else "word"."""
    return "char" if cjk_fraction(texts) > 0.5 else "word"


def split_units(text: str, unit: str) -> list[str]:
    """Split text into scoring units: whitespace-separated words, or non-space characters."""
    if unit == "word":
        return text.split()
    if unit == "char":
        return [char for char in text if not char.isspace()]
    raise ValueError(f"unit must be one of {UNITS}, got {unit!r}")


def text_length(text: str, unit: str) -> int:
    """Length for the length bonus: words for spaced text, characters for Chinese."""
    return len(split_units(text, unit))


def error_counts(ref: str, hyp: str, unit: str) -> EditCounts:
    """Edit counts of one hypothesis text against its reference, in words or characters."""
    return edit_counts(split_units(ref, unit), split_units(hyp, unit))


def oracle_counts(ref: str, hyps: Sequence[str], unit: str) -> EditCounts:
    """Counts of the hypothesis with the fewest errors (the first one on ties).

    An empty list counts every reference unit as deleted, as an empty output would.
    """
    if not hyps:
        return error_counts(ref, "", unit)
    return min((error_counts(ref, hyp, unit) for hyp in hyps), key=lambda counts: counts.errors)
