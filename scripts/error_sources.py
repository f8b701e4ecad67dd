"""Where the searched transcripts' errors come from: outside the network, the scores, or the search.

    python scripts/error_sources.py DEV -m MODEL_DIR --weights W.json

Rescores DEV (with references) as ``rescore --weights W.json`` does, with the confusion-network search,
and sorts each utterance whose ``best`` is not its reference into one of three:

- **outside the network**: no path of the list's network spells the reference, so no weights and no
  search could return it (the errors there are bounded below by the network's oracle);
- **the scores prefer another text**: the reference's best path totals no more than ``best`` under the
  weights: a better LM, or better weights, is what would fix it;
- **the search missed it**: the reference totals more than ``best``, but the search never scored it:
  more candidates or passes would fix it.

A text's total is that of its best path (pipeline.network.best_path_to), the LM scores being the same
forward and backward scores ``rescore`` uses. With ``decision: mbr`` in the weights the highest total is
taken instead (MBR's choice is not the highest total, so the comparison would not hold).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.commands import make_rescorer, resolve_weights
from pipeline.metrics import error_counts, split_units, text_length
from pipeline.nbest import read_nbest
from pipeline.network import best_path_to, oracle_errors
from pipeline.search import NetworkSearch

KINDS = ("outside the network", "the scores prefer another text", "the search missed it")


def text_total(search, network, inputs: dict[str, float], text: str, unit: str, lm: tuple) -> float | None:
    """The search's total of ``text`` in a list whose input texts have the first-pass scores ``inputs``, by
    its best path (None when no path spells it)."""
    path = best_path_to(network, split_units(text, unit), search)
    if path is None:
        return None
    logpost, first_pass, _ = path
    if text in inputs:  # an input keeps its own first-pass score, as in the search's candidates
        first_pass = inputs[text]
    return search.total(logpost, first_pass, *lm, text_length(text, unit), text in inputs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dev", type=Path, help="an n-best file whose utterances have references")
    parser.add_argument("-m", "--model", type=Path)
    parser.add_argument("--weights", type=Path, required=True, help="weights tuned with --search network")
    args = parser.parse_args()
    try:  # the pipeline's user errors are ValueErrors (pipeline.errors): one line, as the CLI prints them
        choice, backward = resolve_weights(args.weights, args.model, None, None, None, None, None, False)
        weights = choice.weights
        weights.decision = "map"
        if weights.search != "network":
            raise SystemExit(f"{args.weights}: the weights do not use the search (search: {weights.search})")
        rescorer = make_rescorer(args.model, backward, weights, "auto", "fp32", 16384, 1, "cpu")
        utterances = [u for u in read_nbest(args.dev) if u.get("reference") is not None and u["hypotheses"]]
        if not utterances:
            raise SystemExit(f"{args.dev}: no utterance with a reference and hypotheses")
        lists = [u["hypotheses"] for u in utterances]
        results = rescorer.rescore_batch(lists, [u["id"] for u in utterances])
    except ValueError as error:
        raise SystemExit(str(error)) from None
    search = NetworkSearch(rescorer).search
    known: dict = {}
    rescorer.score_texts((t for u, r in zip(utterances, results) for t in (u["reference"], r.best)), known)

    utts, errors, floor, units = dict.fromkeys(KINDS, 0), dict.fromkeys(KINDS, 0), 0, 0
    for utt, result in zip(utterances, results):
        unit, network, _ = rescorer.network_candidates(utt["hypotheses"])
        reference, best = utt["reference"], result.best
        units += len(split_units(reference, unit))
        if best == reference:
            continue
        inputs = {h["text"]: rescorer.first_pass_score(h) for h in utt["hypotheses"]}
        ref_total = text_total(search, network, inputs, reference, unit, known[reference])
        if ref_total is None:
            kind = KINDS[0]
            floor += oracle_errors(network, split_units(reference, unit))
        else:  # best is an input or a path of the network, so some path spells it
            best_total = text_total(search, network, inputs, best, unit, known[best])
            kind = KINDS[2] if ref_total > best_total + 1e-9 else KINDS[1]
        utts[kind] += 1
        errors[kind] += error_counts(reference, best, unit).errors
    print(f"{len(utterances)} utterances, {units:,} reference units, {sum(errors.values()):,} errors "
          f"({100 * sum(errors.values()) / units:.2f}%)")
    for kind in KINDS:
        extra = f" (the network's oracle: {floor:,})" if kind == KINDS[0] else ""
        print(f"{kind}: {utts[kind]} utterances, {errors[kind]:,} errors{extra}")


if __name__ == "__main__":
    main()
