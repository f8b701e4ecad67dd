"""The search's screen: which new texts the network scores, ranked by the n-gram, within a stage budget."""

from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

from conftest import CHINESE, ENGLISH, make_random_model_dir
from lm.checkpoint import load_model_dir
from lm.scorer import SentenceScorer
from pipeline.cli import app
from pipeline.errors import WeightsFileError
from pipeline.metrics import edit_counts
from pipeline.rescore import Rescorer, Weights
from pipeline.screen import screen, stage_allowance
from pipeline.search import SearchMemo
from pipeline.weights import NETWORK_DEFAULTS
from test_cli import write_json
from test_rescore import TableScorer

runner = CliRunner()


def test_the_ngram_alone_scores_each_text_as_the_engine_scores_the_models_ngram_part(trained_lm):
    texts = ENGLISH[:4] + CHINESE[:4] + ["god 的 light", ENGLISH[0], "x" * 3, ""]  # lengths 0 to many
    cheap = SentenceScorer(trained_lm, threads=1).score_ngram(texts)
    engine = SentenceScorer(trained_lm.part("ngram"), threads=1).score(texts)
    assert cheap == pytest.approx(engine, abs=1e-9)
    # pooled in several batches, the same
    assert SentenceScorer(trained_lm, batch_tokens=8).score_ngram(texts) == pytest.approx(cheap, abs=1e-9)


def test_a_model_without_an_ngram_has_no_ngram_scores(tmp_path, tokenizer):
    lm = load_model_dir(make_random_model_dir(tmp_path / "m", tokenizer))
    assert SentenceScorer(lm).score_ngram(["a b"]) is None


def test_stage_allowance_is_the_budget_share_of_the_list_rounded_up():
    assert [stage_allowance(n, 0.1) for n in (1, 10, 11, 50)] == [1, 1, 2, 5]
    assert stage_allowance(50, None) is None


def refuse(pairs):
    raise AssertionError(f"estimated {list(pairs)} though no list was over its allowance")


def test_proposals_within_the_allowance_are_all_scored_without_an_estimate():
    proposals = {0: {"a": (), "b": ()}, 1: {"c": (), "a": ()}}
    assert screen(proposals, {0: {"b"}, 1: set()}, {0: 1, 1: None}, refuse) == {0: ["a"], 1: ["c", "a"]}


def test_a_list_over_its_allowance_keeps_its_highest_estimates_and_seen_texts_take_no_room():
    proposals = {0: {"seen": (), "low": (), "high": (), "mid": ()}, 1: {"only": ()}}
    asked = []

    def estimate(pairs):
        asked.extend(pairs)
        return {pair: {"low": 1.0, "high": 3.0, "mid": 2.0}[pair[1]] for pair in pairs}

    chosen = screen(proposals, {0: {"seen"}, 1: set()}, {0: 2, 1: 2}, estimate)
    assert chosen == {0: ["high", "mid"], 1: ["only"]}
    assert sorted(asked) == [(0, "high"), (0, "low"), (0, "mid")]  # the list within its allowance is not rated


class NgramTable(TableScorer):
    """A table scorer with n-gram stand-in scores of its own (the screen's ranking)."""

    def __init__(self, table, ngram, default=-20.0):
        super().__init__(table, default)
        self.ngram = ngram
        self.ngram_calls: list[list[str]] = []

    def score_ngram(self, texts):
        self.ngram_calls.append(list(texts))
        return [self.ngram.get(text, -20.0) for text in texts]


def search_settings(budget, passes=1):
    return {"temperature": 1.0, "candidates": 0, "arc_weight": 0.0, "first_pass_weight": 1.0, "lm_weight": 1.0,
            "backward_weight": 0.0, "length_bonus": 0.0, "passes": passes, "stage_budget": budget}


# Against the first input, the second differs at the even positions, the third at the odd ones, each a run
# of its own: a pass from the first proposes ten new one-slot texts, of which a budget of 0.1 scores one.
INPUTS = ["0000000000", "x0x0x0x0x0", "0y0y0y0y0y"]
WANTED = "000000x00y"  # the LM's favourite: two runs copied into the first input, one a pass


@pytest.mark.parametrize(("ngram_likes_it", "found"), [(True, True), (False, False)])
def test_a_stage_sends_the_network_its_budget_of_variants_chosen_by_the_ngram(ngram_likes_it, found):
    """Budget 0.1 of three inputs: one new text a stage. Where the n-gram ranks the first step to WANTED
    highest, two passes reach it; where it ranks another step highest, the network never scores the way."""
    step = "000000x000" if ngram_likes_it else "0y00000000"
    scorer = NgramTable({INPUTS[0]: -10.0, step: -5.0, WANTED: -1.0}, {step: -2.0, WANTED: -2.0})
    rescorer = Rescorer(scorer, Weights(search="network", network=search_settings(0.1, passes=2)), unit="char")
    result = rescorer.rescore(INPUTS, [0.0, -1.0, -1.0])
    assert (result.best == WANTED) == found
    assert scorer.calls[1] == [step]
    assert [len(call) for call in scorer.calls[1:]] == [1, 1]  # one new text in each pass


def test_without_a_budget_a_pass_scores_every_variant():
    scorer = NgramTable({INPUTS[0]: -10.0}, {})
    rescorer = Rescorer(scorer, Weights(search="network", network=search_settings(None)), unit="char")
    rescorer.rescore(INPUTS, [0.0, -1.0, -1.0])
    assert len(scorer.calls[1]) == 10


def test_a_scorer_without_ngram_scores_is_screened_by_the_rest_of_the_total():
    """TableScorer has no score_ngram: the variant with the best estimated first-pass score goes through
    (the third input's runs: -0.1 each against -0.2; of those, the first proposed)."""
    scorer = TableScorer({INPUTS[0]: -10.0}, default=-20.0)
    rescorer = Rescorer(scorer, Weights(search="network", network=search_settings(0.1)), unit="char")
    rescorer.rescore(INPUTS, [0.0, -1.0, -0.5])
    assert scorer.calls[1] == ["0y00000000"]


@pytest.mark.parametrize(("budget", "ok"), [(0.5, True), (None, True), (0, False), (-1, False)])
def test_a_weights_file_gives_a_positive_stage_budget_or_none(tmp_path, budget, ok):
    path = tmp_path / "w.json"
    path.write_text(json.dumps({"weights": {"search": "network", "network": {"stage_budget": budget}}}))
    if ok:
        assert Weights.load(path).network["stage_budget"] == budget
    else:
        with pytest.raises(WeightsFileError, match="stage_budget must be above 0"):
            Weights.load(path)


def test_a_weights_file_from_before_the_budget_gets_the_default(tmp_path):
    path = tmp_path / "w.json"
    path.write_text(json.dumps({"weights": {"search": "network", "network": {"passes": 2}}}))
    assert Weights.load(path).network["stage_budget"] == NETWORK_DEFAULTS["stage_budget"]
    assert math.isfinite(NETWORK_DEFAULTS["stage_budget"])


def test_each_list_in_a_batch_gets_its_own_allowance():
    other = [t.replace("0", "1").replace("x", "z").replace("y", "w") for t in INPUTS]
    scorer = NgramTable({INPUTS[0]: -10.0, other[0]: -10.0}, {})
    rescorer = Rescorer(scorer, Weights(search="network", network=search_settings(0.1)), unit="char")
    rescorer.rescore_batch([[{"text": t, "score": s} for t, s in zip(texts, [0.0, -1.0, -1.0])]
                            for texts in (INPUTS, other)])
    assert sorted(text[0] in "0xy" for text in scorer.calls[1]) == [False, True]  # one text of each list


@pytest.mark.parametrize(("given", "recorded"), [([], NETWORK_DEFAULTS["stage_budget"]),
                                                 (["--stage-budget", "none"], None),
                                                 (["--stage-budget", "0.5"], 0.5)])
def test_tune_records_the_stage_budget_it_searched_with(trained_model_dir, tmp_path, given, recorded):
    source = write_json(tmp_path / "dev.json")
    weights = tmp_path / "w.json"
    result = runner.invoke(app, ["tune", str(source), "-m", str(trained_model_dir), "-o", str(weights),
                                 "--search", "network", "--no-progress", *given])
    assert result.exit_code == 0, result.output
    assert json.loads(weights.read_text())["weights"]["network"]["stage_budget"] == recorded
    assert f"stage budget {recorded}" in result.output


@pytest.mark.parametrize("value", ["0", "-1", "nan", "lots"])
def test_a_stage_budget_that_is_no_positive_fraction_is_a_usage_error(trained_model_dir, tmp_path, value):
    source = write_json(tmp_path / "dev.json")
    result = runner.invoke(app, ["rescore", str(source), "-m", str(trained_model_dir), "--search", "network",
                                 "--stage-budget", value, "-o", str(tmp_path / "out.json")])
    assert result.exit_code == 2
    assert "--stage-budget must be a number above 0 or 'none'" in result.output
    assert not (tmp_path / "out.json").exists()


def test_tune_reports_the_search_errors_that_rescoring_with_its_weights_makes():
    """Tune expands and scores every path while fitting, but its searches start, as rescoring's do, from
    the inputs' scores alone, so the budget screens the same texts: its figure is what rescoring gets.
    Each reference combines two inputs' adjacent characters (a path, which no run copy reaches)."""
    from pipeline.tune_network import tune_network

    utterances, table = [], {}
    for k, (a, b, c) in enumerate(["abc", "def", "ghi", "jkl"]):
        inputs = [a * 3, b * 3, c * 3]
        reference = a + b + c if k % 2 else c + a + b
        utterances.append({"id": f"u{k}", "reference": " ".join(reference),
                           "hypotheses": [{"text": t, "score": -0.3 * i} for i, t in enumerate(inputs)]})
        table[reference] = -1.0
    rescorer = Rescorer(TableScorer(table, default=-20.0), Weights(), unit="char")
    settings, figures = tune_network(rescorer, utterances, "char")
    applied = Rescorer(TableScorer(table, default=-20.0), Weights(search="network", network=settings), unit="char")
    results = applied.rescore_batch([u["hypotheses"] for u in utterances])
    errors = sum(edit_counts(list(u["reference"].replace(" ", "")), list(r.best)).errors
                 for u, r in zip(utterances, results))
    assert figures["search_errors"] == errors > 0  # the budget kept some reference out of reach


def test_a_text_another_list_of_the_batch_scored_does_not_pass_a_lists_screen():
    """The first list's pass proposes x000000000, the other list's input, which the LM loves but the n-gram
    ranks low: its one new text a pass is 0y00000000, so it keeps its input, in a batch as alone."""
    other = ["x000000000", "zzzzzzzzzz", "wwwwwwwwww"]
    scorer = NgramTable({INPUTS[0]: -10.0, "x000000000": -1.0}, {"0y00000000": -2.0})
    rescorer = Rescorer(scorer, Weights(search="network", network=search_settings(0.1)), unit="char")
    as_list = [[{"text": t, "score": s} for t, s in zip(texts, [0.0, -1.0, -1.0])] for texts in (INPUTS, other)]
    alone = rescorer.rescore_batch(as_list[:1])[0].best
    together = rescorer.rescore_batch(as_list)[0].best
    assert alone == together == INPUTS[0]


def test_searches_that_share_a_memo_rate_each_text_with_the_ngram_once_with_the_same_results():
    """Tune runs many searches of one dev set (pipeline.tune_network): the second search with the memo of
    the first asks the n-gram for nothing and finds what a search without a memo finds."""
    scorer = NgramTable({INPUTS[0]: -10.0, "000000x000": -5.0, WANTED: -1.0}, {"000000x000": -2.0, WANTED: -2.0})
    rescorer = Rescorer(scorer, Weights(search="network", network=search_settings(0.1, passes=2)), unit="char")
    lists = [[{"text": t, "score": s} for t, s in zip(INPUTS, [0.0, -1.0, -1.0])]]
    known = dict.fromkeys(INPUTS, (-10.0, None))
    alone = rescorer.searched_bests(lists, dict(known), 2)
    memo = SearchMemo()
    first = rescorer.searched_bests(lists, dict(known), 2, memo)
    scorer.ngram_calls.clear()
    second = rescorer.searched_bests(lists, dict(known), 2, memo)
    assert scorer.ngram_calls == [] and alone == first == second
    assert second[0][-1] == {0: WANTED}
