"""Error rates of n-best files: first pass, rescored and oracle, with substitutions/insertions/deletions."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from pipeline.metrics import EditCounts, detect_unit, error_counts, oracle_counts


def first_pass_index(hypotheses: list[dict]) -> int:
    """The first-pass choice: highest ``score``, the earlier one on ties (-1 for an empty list)."""
    best, best_score = -1, float("-inf")
    for i, hyp in enumerate(hypotheses):
        score = hyp.get("score", 0.0)
        if best < 0 or score > best_score:
            best, best_score = i, score
    return best


def rescored_text(utterance: dict) -> str | None:
    """The rescored choice: ``best``, else the rank-1 hypothesis; None if the file is not rescored."""
    if isinstance(utterance.get("best"), str):
        return utterance["best"]
    ranked = [h for h in utterance["hypotheses"] if h.get("rank") == 1]
    return ranked[0]["text"] if ranked else None


@dataclass
class EvaluationReport:
    unit: str
    utterances: int = 0
    hypotheses: int = 0
    without_reference: int = 0
    first_pass: EditCounts = field(default_factory=EditCounts)
    rescored: EditCounts | None = None
    oracle: EditCounts = field(default_factory=EditCounts)

    @property
    def label(self) -> str:
        return "CER" if self.unit == "char" else "WER"

    def as_dict(self) -> dict:
        def counts(c: EditCounts | None) -> dict | None:
            if c is None:
                return None
            return {"rate": c.rate, "errors": c.errors, "substitutions": c.substitutions,
                    "insertions": c.insertions, "deletions": c.deletions, "reference_units": c.ref_len}

        return {
            "unit": self.unit, "metric": self.label, "utterances": self.utterances, "hypotheses": self.hypotheses,
            "without_reference": self.without_reference, "first_pass": counts(self.first_pass),
            "rescored": counts(self.rescored), "oracle": counts(self.oracle),
        }


class ErrorTally:
    """Accumulates error counts utterance by utterance (so a streamed file needs no second pass).

    With ``unit="auto"`` the unit is chosen from the first reference seen.
    """

    def __init__(self, unit: str = "auto"):
        self.report = EvaluationReport(unit=unit)
        self.rescored = EditCounts()
        self.all_rescored = True

    def add(self, utterance: dict) -> None:
        report = self.report
        hyps = utterance["hypotheses"]
        report.hypotheses += len(hyps)
        ref = utterance.get("reference")
        if not isinstance(ref, str):
            report.without_reference += 1
            return
        if report.unit == "auto":
            report.unit = detect_unit([ref])
        report.utterances += 1
        first = first_pass_index(hyps)
        report.first_pass += error_counts(ref, hyps[first]["text"] if hyps else "", report.unit)
        report.oracle += oracle_counts(ref, [h["text"] for h in hyps], report.unit)
        chosen = rescored_text(utterance)
        self.all_rescored &= chosen is not None
        self.rescored += error_counts(ref, chosen or "", report.unit)

    def result(self) -> EvaluationReport:
        self.report.rescored = self.rescored if self.all_rescored and self.report.utterances else None
        return self.report


def evaluate_utterances(utterances: Iterable[dict], unit: str = "auto") -> EvaluationReport:
    """Error counts over the utterances that have a reference."""
    tally = ErrorTally(unit)
    for utterance in utterances:
        tally.add(utterance)
    return tally.result()


@dataclass
class UtteranceChange:
    """What rescoring did to one utterance: its first-pass and rescored texts and their errors."""

    id: str
    reference: str
    first_pass: str
    rescored: str
    first_pass_errors: int
    rescored_errors: int

    @property
    def status(self) -> str:
        """``fixed`` (fewer errors), ``broken`` (more), ``changed`` (another text, as many errors) or ``unchanged``."""
        if self.rescored_errors < self.first_pass_errors:
            return "fixed"
        if self.rescored_errors > self.first_pass_errors:
            return "broken"
        return "changed" if self.rescored != self.first_pass else "unchanged"

    def as_dict(self) -> dict:
        return {"id": self.id, "reference": self.reference, "status": self.status,
                "first_pass": {"text": self.first_pass, "errors": self.first_pass_errors},
                "rescored": {"text": self.rescored, "errors": self.rescored_errors}}


def utterance_changes(utterances: Iterable[dict], unit: str) -> list[UtteranceChange]:
    """One entry per rescored utterance with a reference, in file order."""
    changes = []
    for utterance in utterances:
        ref, chosen, hyps = utterance.get("reference"), rescored_text(utterance), utterance["hypotheses"]
        if not isinstance(ref, str) or chosen is None:
            continue
        first = hyps[first_pass_index(hyps)]["text"] if hyps else ""
        changes.append(UtteranceChange(utterance["id"], ref, first, chosen, error_counts(ref, first, unit).errors,
                                       error_counts(ref, chosen, unit).errors))
    return changes


def change_summary(changes: list[UtteranceChange]) -> dict:
    """How many utterances rescoring changed, fixed (fewer errors) and broke (more errors)."""
    statuses = [c.status for c in changes]
    return {"utterances": len(changes), "changed": sum(s != "unchanged" for s in statuses),
            "fixed": statuses.count("fixed"), "broken": statuses.count("broken"),
            "changed_same_errors": statuses.count("changed"),
            "errors_removed": sum(c.first_pass_errors - c.rescored_errors for c in changes)}
