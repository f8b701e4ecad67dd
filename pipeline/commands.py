"""What the rescore, tune and evaluate commands do, once the CLI has gathered their options."""

from __future__ import annotations

import datetime
import errno
import functools
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from pipeline.batch import Shard, rescore_file
from pipeline.errors import UsageError
from pipeline.formats.kaldi import UNTUNED_FIELDS as KALDI_UNTUNED_FIELDS
from pipeline.formats.read import canonical_input, detect_format
from pipeline.evaluate import ErrorTally, EvaluationReport, evaluate_utterances
from lm.checkpoint import backward_model_dir
from pipeline.models import check_device, default_model_dir, load_scorer
from pipeline.nbest import NbestFormatError, read_nbest
from pipeline.progress import progress_bar, stderr
from pipeline.rescore import Rescorer
from pipeline.tune_network import CONFUSION_MIN_GAIN
from pipeline.weights import (
    DECISIONS, SEARCHES, Weights, check_finite_options, check_tuned_for, model_record, read_weights_file, weights_for_model,
)

log = logging.getLogger(__name__)


@dataclass
class WeightChoice:
    """The weights a run uses and where they came from (for messages and the model check)."""

    weights: Weights
    source: str  # "--weights W.json", "MODEL_DIR/weights.json" or "the untuned default"
    path: Path | None = None
    record: dict | None = None


def choose_weights(weights_path: Path | None, model_dir: Path) -> WeightChoice:
    """``--weights``, else the model directory's own ``weights.json``, else the length-neutral default."""
    if weights_path is not None:
        weights, record = read_weights_file(weights_path)
        return WeightChoice(weights, str(weights_path), weights_path, record)
    weights, path, record = weights_for_model(model_dir)
    if path is not None:
        return WeightChoice(weights, str(path), path, record)
    return WeightChoice(weights, "the untuned default")


def apply_options(weights: Weights, lm_weight, length_bonus, score_fields, backward_weight,
                  posterior_temperature=None) -> Weights:
    """Single options on top of the chosen weights; an explicit --length-bonus replaces the length-neutral part."""
    check_finite_options(lm_weight=lm_weight, length_bonus=length_bonus, backward_weight=backward_weight,
                         posterior_temperature=posterior_temperature)
    if posterior_temperature is not None:
        if posterior_temperature <= 0:
            raise UsageError(f"--posterior-temperature must be above 0, got {posterior_temperature}")
        weights.posterior_temperature = posterior_temperature
    if score_fields is not None:
        names = [n.strip() for n in score_fields.split(",") if n.strip()]
        if not names:
            raise UsageError(f"--score-fields names no field, got {score_fields!r}")
        weights.score_fields = {n: weights.score_fields.get(n, 1.0) for n in names}
    if lm_weight is not None:
        weights.lm_weight = lm_weight
    if length_bonus is not None:
        weights.length_bonus, weights.length_neutral = length_bonus, False
    if backward_weight is not None:
        weights.backward_weight = backward_weight
    return weights


def resolve_weights(weights_path, model, backward_model, lm_weight, length_bonus, score_fields, backward_weight,
                    allow_other_model: bool, posterior_temperature=None) -> tuple[WeightChoice, Path | None]:
    """The weights and the backward model of a rescoring run, checked against each other."""
    model_dir = model or default_model_dir()
    choice = choose_weights(weights_path, model_dir)
    found = backward_model or backward_model_dir(model_dir)
    if choice.path is None and found is not None and backward_weight is None:
        choice.weights.backward_weight = lm_weight if lm_weight is not None else choice.weights.lm_weight
    weights = apply_options(choice.weights, lm_weight, length_bonus, score_fields, backward_weight, posterior_temperature)
    used_backward = found if weights.backward_weight else None
    if choice.path is not None and not allow_other_model:
        check_tuned_for(choice.path, choice.record or {}, weights, model_dir, used_backward)
    if weights.backward_weight and found is None:
        if backward_weight is not None:
            raise UsageError(f"--backward-weight {backward_weight:g}, but {model_dir} has no backward model: "
                             "give one with --backward-model DIR")
        log.warning("backward_weight %g of %s left out: %s has no backward model",
                    weights.backward_weight, choice.source, model_dir)  # --allow-other-model said so
        weights.backward_weight = 0.0
    return choice, used_backward


def make_rescorer(model, backward_model, weights: Weights, unit, precision, batch_tokens, threads, device,
                  fields_source: str = "the weights") -> Rescorer:
    """Load the model(s) and build the rescorer; module-level so worker processes can call it."""
    check_choice("unit", unit, ("auto", "word", "char"))
    scorer = load_scorer(model, threads=threads, device=device, precision=precision, batch_tokens=batch_tokens)
    backward = None
    if backward_model is not None:
        backward = load_scorer(backward_model, threads=threads, device=device, precision=precision, batch_tokens=batch_tokens)
        if backward.lm.direction != "backward":
            log.warning("%s is a %s model; --backward-model expects one trained with --direction backward", backward_model, backward.lm.direction)
    return Rescorer(scorer, weights, backward_scorer=backward, unit=unit, fields_source=fields_source)


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise UsageError(f"--{name} must be one of {', '.join(choices)}, got {value!r}")


def run_rescore(nbest: Path, model, output, weights, lm_weight, length_bonus, score_fields, backward_model,
                backward_weight, unit, jobs, shard, skip_bad, precision, batch_tokens, threads, device, progress,
                allow_other_model=False, overwrite_input=False, input_format="auto", references=None, beam_size=None,
                output_format=None, nbest_out=None, posterior_temperature=None, decision=None, search=None,
                stage_budget=None) -> None:
    check_choice("precision", precision, ("fp32", "bf16"))  # the unit is checked by make_rescorer
    check_positive(jobs=jobs, batch_tokens=batch_tokens, threads=threads)
    device = check_device(device)
    shard_spec = Shard.parse(shard)
    output = check_output(output, nbest, overwrite_input)
    if decision is not None:
        check_choice("decision", decision, DECISIONS)
    choice, backward_model = resolve_weights(weights, model, backward_model, lm_weight, length_bonus, score_fields,
                                             backward_weight, allow_other_model, posterior_temperature)
    if decision is not None:
        choice.weights.decision = decision
    if search is not None:
        check_choice("search", search, SEARCHES)
        choice.weights.search = search
    if stage_budget is not None:
        choice.weights.network["stage_budget"] = parse_stage_budget(stage_budget)
    w = choice.weights
    if w.decision == "mbr" and w.search == "network" and w.network.get("mbr_temperature") is None:
        log.warning("--decision mbr with the network search: the weights have no MBR temperature for the search "
                    "(tune --decision mbr --search network fits it), so the search keeps its highest-scoring candidate")
    fields_source = "--score-fields" if score_fields is not None else (
        str(choice.path) if choice.path is not None else "the default score fields")
    if choice.path is None and score_fields is None and resolved_format(nbest, input_format) == "kaldi":
        choice.weights.score_fields = dict(KALDI_UNTUNED_FIELDS)  # a Kaldi list has no total score
        log.info("untuned Kaldi list: weighing %s (tune for your recogniser)", KALDI_UNTUNED_FIELDS)
        fields_source = "the untuned Kaldi fields"
    factory = functools.partial(make_rescorer, model, backward_model, choice.weights, unit, precision, batch_tokens,
                                threads, device, fields_source)
    rescorer = factory()  # load here so a bad model fails before any work; workers load their own copy
    if jobs == 1:
        factory = lambda: rescorer  # noqa: E731
    tally = ErrorTally(unit)
    with canonical_input(nbest, input_format, references, beam_size) as source, progress_bar(progress, "rescoring") as bar:
        report = rescore_file(source, output, factory, jobs, shard_spec, skip_bad, progress=bar,
                              on_utterance=tally.add, check=rescorer.fields.check, output_format=output_format,
                              nbest_out=nbest_out)
    result = tally.result()
    if report.skipped:  # each one was listed as it was skipped
        log.warning("%d bad utterances skipped", len(report.skipped))
    if result.utterances:
        print_summary(result, skipped=len(report.skipped))


def parse_stage_budget(value: str) -> float | None:
    """--stage-budget: a fraction above 0, or 'none' for no limit (pipeline.screen)."""
    if value.strip().lower() == "none":
        return None
    try:
        budget = float(value)
    except ValueError:
        budget = float("nan")
    if not (math.isfinite(budget) and budget > 0):
        raise UsageError(f"--stage-budget must be a number above 0 or 'none', got {value!r}")
    return budget


def resolved_format(path: Path, input_format: str) -> str:
    """The input's layout as ``--format auto`` will read it (stdin: JSON)."""
    if input_format != "auto" or str(path) == "-":
        return input_format if input_format != "auto" else "json"
    return detect_format(path) if path.exists() else "json"


def check_positive(**options: int) -> None:
    """Counts that must be at least 1 (``--threads 0`` keeps torch's default where a command allows it)."""
    for name, value in options.items():
        if value < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1, got {value}")


def check_output(output: Path | None, nbest: Path, overwrite_input: bool) -> Path | None:
    """``-o -`` is stdout; the output's folder must exist; writing onto the input needs --overwrite-input."""
    if output is None or str(output) == "-":
        return None
    if output.is_dir():
        raise UsageError(f"-o {output}: is a directory, expected a file name")
    if not output.parent.is_dir():
        raise FileNotFoundError(errno.ENOENT, "the output's directory does not exist", str(output.parent))
    if output.exists() and nbest.exists() and output.resolve() == nbest.resolve() and not overwrite_input:
        raise UsageError(f"-o {output} is the input file; pass --overwrite-input to replace it with the result")
    return output


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


def run_tune(dev_nbest, output, model, score_fields, backward_model, unit, precision, threads, device,
             progress=True, input_format="auto", references=None, beam_size=None, plot=None, decision="map",
             search="none", stage_budget=None) -> None:
    from pipeline.tune import first_pass_fields, tune_weights

    check_choice("precision", precision, ("fp32", "bf16"))
    check_choice("decision", decision, DECISIONS)
    check_choice("search", search, SEARCHES)
    check_positive(threads=threads)
    device = check_device(device)
    for path in (output, plot):
        if path is not None and not Path(path).parent.is_dir():
            raise FileNotFoundError(errno.ENOENT, "the output's directory does not exist", str(Path(path).parent))
    if plot is not None:
        from pipeline.plots import pyplot

        pyplot()  # matplotlib missing: say so before the work, not after
    with canonical_input(dev_nbest, input_format, references, beam_size) as source:
        utterances = read_nbest(source)
    if not any(isinstance(u.get("reference"), str) for u in utterances):
        raise NbestFormatError(f"{dev_nbest}: no utterance has a 'reference'; tuning needs them")
    options_fields = score_fields is not None
    if score_fields is None:
        score_fields = ",".join(first_pass_fields(utterances))
    model_dir = model or default_model_dir()
    backward_model = backward_model or backward_model_dir(model_dir)
    weights = apply_options(Weights(), None, None, score_fields, None)
    if stage_budget is not None:
        weights.network["stage_budget"] = parse_stage_budget(stage_budget)
    rescorer = make_rescorer(model, backward_model, weights, unit, precision, 16384, threads, device,
                             "--score-fields" if options_fields else "the default score fields")
    for utterance in utterances:
        rescorer.fields.check(utterance, str(dev_nbest))
    with progress_bar(progress, "tuning: scoring") as bar:
        tuned, figures = tune_weights(rescorer, utterances, unit, progress=bar, decision=decision, search=search)
    curves = figures.pop("curves")
    tuned.save(output, {"dev": {"file": str(dev_nbest), **figures},
                        **model_record(model_dir, backward_model), "created": now_iso()})
    if plot is not None:
        from pipeline.plots import plot_tuning

        plot_tuning(curves, figures["metric"], plot)
        stderr.print(f"dev {figures['metric']} along each weight -> {plot}")
    label = figures["metric"]
    stderr.print(
        f"tuned on {figures['utterances']} utterances: first-pass {label} {100 * figures['first_pass']:.2f}%, "
        f"tuned {100 * figures['tuned']:.2f}%, oracle {100 * figures['oracle']:.2f}%"
    )
    if "searched" in figures:
        kept = "on" if tuned.search == "network" else "off: no better than plain rescoring here"
        stderr.print(f"network search ({kept}): {label} {100 * figures['searched']:.2f}% with "
                     f"{figures['search_passes']} passes from {figures['search_candidates']} expanded paths, "
                     f"scored by {figures['search_scoring']}, stage budget {tuned.network['stage_budget']}; "
                     f"oracle of the network {100 * figures['network_oracle']:.2f}%")
        if tuned.confusions:
            stderr.print(f"confusable units ({len(tuned.confusions)} mined from the dev lists): penalty "
                         f"{tuned.network['confusion_penalty']:.3g}, count weight "
                         f"{tuned.network['confusion_count_weight']:.3g}, oracle of the network with them "
                         f"{100 * figures['confusion_oracle']:.2f}%")
        else:
            stderr.print(f"confusable units: not kept (they did not cut the dev errors by {CONFUSION_MIN_GAIN:.0%})")
    shown = {**tuned.__dict__, "confusions": f"{len(tuned.confusions)} units" if tuned.confusions else None}
    stderr.print(f"weights: {json.dumps(shown, ensure_ascii=False)} -> {output}")


def now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def run_evaluate(nbest: Path, unit: str, as_json: bool, input_format="auto", references=None, beam_size=None,
                 details=False) -> None:
    from pipeline.evaluate import change_summary, utterance_changes
    from pipeline.nbest import iter_utterances

    check_choice("unit", unit, ("auto", "word", "char"))
    with canonical_input(nbest, input_format, references, beam_size) as source:
        report = evaluate_utterances(iter_utterances(source), unit)
        if report.utterances == 0:
            raise NbestFormatError(f"{nbest}: no utterance has a 'reference'; nothing to evaluate")
        changes = utterance_changes(iter_utterances(source), report.unit if unit == "auto" else unit) if details else []
    summary = change_summary(changes) if details else None
    if as_json:
        result = report.as_dict()
        if details:
            result.update(summary=summary, details=[c.as_dict() for c in changes])
        print(json.dumps(result, indent=2, ensure_ascii=False))
        return
    if details:
        print_changes(changes, report.unit)
    table = Table(show_header=True, header_style="bold")
    for name in ("", report.label, "errors", "sub", "ins", "del", "ref units"):
        table.add_column(name, justify="right")
    for name, counts in (("first pass", report.first_pass), ("rescored", report.rescored), ("oracle", report.oracle)):
        if counts is not None:
            table.add_row(name, f"{100 * counts.rate:.2f}%", str(counts.errors), str(counts.substitutions),
                          str(counts.insertions), str(counts.deletions), str(counts.ref_len))
    Console().print(table)
    Console().print(f"{report.utterances} utterances, {report.hypotheses} hypotheses")
    if details:
        print(
            f"rescoring changed {summary['changed']} of {summary['utterances']} utterances: {summary['fixed']} fixed "
            f"(fewer errors), {summary['broken']} broken (more errors), {summary['changed_same_errors']} with as many; "
            f"{summary['errors_removed']} errors removed in all")


def print_changes(changes, unit: str) -> None:
    """Each utterance rescoring changed: the reference aligned with the first-pass and the rescored text."""
    from pipeline.alignment import align, render
    from pipeline.metrics import split_units

    for change in changes:
        if change.status == "unchanged":
            continue
        ref = split_units(change.reference, unit)
        print(f"{change.id}  {change.status}: {change.first_pass_errors} -> {change.rescored_errors} errors")
        for label, text in (("1ST", change.first_pass), ("NEW", change.rescored)):
            print("\n".join(render(align(ref, split_units(text, unit)), labels=("REF", label))))
        print()
