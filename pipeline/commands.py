"""What the rescore, tune and evaluate commands do, once the CLI has gathered their options."""

from __future__ import annotations

import errno
import functools
import json
import logging
import sys
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from pipeline.batch import Shard, rescore_file
from pipeline.errors import UsageError
from pipeline.evaluate import ErrorTally, EvaluationReport, evaluate_utterances
from lm.checkpoint import backward_model_dir
from pipeline.models import default_model_dir, load_scorer
from pipeline.nbest import read_nbest
from pipeline.rescore import Rescorer, Weights

log = logging.getLogger(__name__)
stderr = Console(stderr=True)


def build_weights(weights_path, lm_weight, length_bonus, score_fields, backward_weight, backward_model) -> Weights:
    """Weights from a tune file, then individual options on top."""
    weights = Weights.load(weights_path) if weights_path else Weights()
    if score_fields is not None:
        names = [n.strip() for n in score_fields.split(",") if n.strip()]
        weights.score_fields = {n: weights.score_fields.get(n, 1.0) for n in names}
    if lm_weight is not None:
        weights.lm_weight = lm_weight
    if length_bonus is not None:
        weights.length_bonus = length_bonus
    if backward_weight is not None:
        weights.backward_weight = backward_weight
    elif backward_model is not None and not weights_path:
        weights.backward_weight = weights.lm_weight
    return weights


def find_backward_model(model: Path | None, backward_model: Path | None, weights: Weights) -> Path | None:
    """``--backward-model``, else the backward model trained beside the forward one (``MODEL_DIR/backward``).

    A found one is left out when its weight is 0 (``--backward-weight 0`` or a tuned 0): no time is spent on it.
    """
    if backward_model is not None:
        return backward_model
    found = backward_model_dir(model or default_model_dir())
    if found is None and weights.backward_weight:
        log.warning("the weights give backward_weight %g but %s has no backward model: that term is left out",
                    weights.backward_weight, model or default_model_dir())
    return found if weights.backward_weight else None


def make_rescorer(model, backward_model, weights: Weights, unit, precision, batch_tokens, threads, device) -> Rescorer:
    """Load the model(s) and build the rescorer; module-level so worker processes can call it."""
    check_choice("unit", unit, ("auto", "word", "char"))
    scorer = load_scorer(model, threads=threads, device=device, precision=precision, batch_tokens=batch_tokens)
    backward = None
    if backward_model is not None:
        backward = load_scorer(backward_model, threads=threads, device=device, precision=precision, batch_tokens=batch_tokens)
        if backward.lm.direction != "backward":
            log.warning("%s is a %s model; --backward-model expects one trained with --direction backward", backward_model, backward.lm.direction)
    return Rescorer(scorer, weights, backward_scorer=backward, unit=unit)


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise UsageError(f"--{name} must be one of {', '.join(choices)}, got {value!r}")


def run_rescore(nbest: Path, model, output, weights, lm_weight, length_bonus, score_fields, backward_model,
                backward_weight, unit, jobs, shard, skip_bad, precision, batch_tokens, threads, device, progress) -> None:
    check_choice("precision", precision, ("fp32", "bf16"))  # the unit is checked by make_rescorer
    if jobs < 1:
        raise UsageError(f"--jobs must be at least 1, got {jobs}")
    if output is not None and not output.parent.is_dir():
        raise FileNotFoundError(errno.ENOENT, "the output's directory does not exist", str(output.parent))
    combined = build_weights(weights, lm_weight, length_bonus, score_fields, backward_weight,
                             backward_model or backward_model_dir(model or default_model_dir()))
    backward_model = find_backward_model(model, backward_model, combined)
    factory = functools.partial(make_rescorer, model, backward_model, combined, unit, precision, batch_tokens, threads, device)
    rescorer = factory()  # load here so a bad model fails before any work; workers load their own copy
    if jobs == 1:
        factory = lambda: rescorer  # noqa: E731
    tally = ErrorTally(unit)
    with progress_bar(progress) as advance:
        report = rescore_file(nbest, output, factory, jobs, Shard.parse(shard), skip_bad, progress=advance, on_utterance=tally.add)
    result = tally.result()
    if report.skipped:  # each one was listed as it was skipped
        log.warning("%d bad utterances skipped", len(report.skipped))
    if result.utterances:
        print_summary(result, skipped=len(report.skipped))


class progress_bar:
    """A transient utterance counter on stderr, shown only when stderr is a terminal."""

    def __init__(self, enabled: bool):
        self.progress = None
        if enabled and sys.stderr.isatty():
            self.progress = Progress(TextColumn("rescoring"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                     console=stderr, transient=True)

    def __enter__(self):
        if self.progress is None:
            return None
        self.progress.__enter__()
        task = self.progress.add_task("rescoring", total=None)
        return lambda n: self.progress.update(task, advance=n)

    def __exit__(self, *exc):
        if self.progress is not None:
            self.progress.__exit__(*exc)


def print_summary(report: EvaluationReport, skipped: int = 0) -> None:
    """The short table printed on stderr after rescoring a file with references."""
    table = Table(title=None, show_header=True, header_style="bold")
    for name in ("utterances", "hypotheses", f"first-pass {report.label}", f"rescored {report.label}", f"oracle {report.label}"):
        table.add_column(name, justify="right")
    rescored = f"{100 * report.rescored.rate:.2f}%" if report.rescored else "-"
    table.add_row(str(report.utterances), str(report.hypotheses), f"{100 * report.first_pass.rate:.2f}%", rescored,
                  f"{100 * report.oracle.rate:.2f}%")
    stderr.print(table)
    if skipped:
        stderr.print(f"{skipped} utterances skipped (see the warnings above)")


def run_tune(dev_nbest, output, model, score_fields, backward_model, unit, precision, threads, device) -> None:
    from pipeline.tune import first_pass_fields, tune_weights

    check_choice("precision", precision, ("fp32", "bf16"))
    utterances = read_nbest(dev_nbest)
    if score_fields is None:
        score_fields = ",".join(first_pass_fields(utterances))
    backward_model = backward_model or backward_model_dir(model or default_model_dir())
    weights = build_weights(None, None, None, score_fields, None, backward_model)
    rescorer = make_rescorer(model, backward_model, weights, unit, precision, 16384, threads, device)
    tuned, figures = tune_weights(rescorer, utterances, unit)
    backward = rescorer.backward_scorer
    tuned.save(output, {"dev": {"file": str(dev_nbest), **figures}, "model": str(rescorer.scorer.lm.path),
                        "backward_model": str(backward.lm.path) if backward else None})
    label = figures["metric"]
    stderr.print(
        f"tuned on {figures['utterances']} utterances: first-pass {label} {100 * figures['first_pass']:.2f}%, "
        f"tuned {100 * figures['tuned']:.2f}%, oracle {100 * figures['oracle']:.2f}%"
    )
    stderr.print(f"weights: {json.dumps(tuned.__dict__)} -> {output}")


def run_evaluate(nbest: Path, unit: str, as_json: bool) -> None:
    from pipeline.nbest import iter_utterances

    check_choice("unit", unit, ("auto", "word", "char"))
    report = evaluate_utterances(iter_utterances(nbest), unit)
    if report.utterances == 0:
        raise UsageError(f"{nbest}: no utterance has a 'reference'; nothing to evaluate")
    if as_json:
        print(json.dumps(report.as_dict(), indent=2))
        return
    table = Table(show_header=True, header_style="bold")
    for name in ("", report.label, "errors", "sub", "ins", "del", "ref units"):
        table.add_column(name, justify="right")
    for name, counts in (("first pass", report.first_pass), ("rescored", report.rescored), ("oracle", report.oracle)):
        if counts is not None:
            table.add_row(name, f"{100 * counts.rate:.2f}%", str(counts.errors), str(counts.substitutions),
                          str(counts.insertions), str(counts.deletions), str(counts.ref_len))
    Console().print(table)
    Console().print(f"{report.utterances} utterances, {report.hypotheses} hypotheses")
