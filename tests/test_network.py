"""The confusion network of an n-best list, its best paths, and the search through the CLI."""

from __future__ import annotations

import itertools
import json
import math

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.metrics import edit_counts
from pipeline.network import (
    SearchWeights, best_path_to, best_paths, build_network, join_units, network_candidates, oracle_errors,
    path_first_pass, path_logpost,
)
from pipeline.rescore import Rescorer, Weights
from pipeline.tune_network import FIRST_PASS_CANDIDATES
from pipeline.weights import NETWORK_DEFAULTS
from test_cli import write_json
from test_rescore import TableScorer

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("restore_logging")
# The search's reach on lists of two or three hypotheses, where the default stage budget (a tenth of the
# hypotheses) would let one new text through a stage: tests of the budget are in test_screen.py.
UNLIMITED = {**NETWORK_DEFAULTS, "stage_budget": None}


def test_the_network_of_identical_hypotheses_is_a_chain():
    network = build_network([list("历史重演")] * 3, [-1.0, -2.0, -3.0], temperature=1.0)
    assert [list(slot) for slot in network.slots] == [[("历",)], [("史",)], [("重",)], [("演",)]]
    assert all(slot[label] == pytest.approx(1.0) for slot in network.slots for label in slot)


def test_equal_lengths_align_by_position_with_first_pass_posteriors():
    network = build_network([list("ab"), list("xb"), list("ay")], [0.0, math.log(0.5), math.log(0.25)], 1.0)
    p = [1 / 1.75, 0.5 / 1.75, 0.25 / 1.75]
    assert network.slots[0] == pytest.approx({("a",): p[0] + p[2], ("x",): p[1]})
    assert network.slots[1] == pytest.approx({("b",): p[0] + p[1], ("y",): p[2]})


def test_unequal_lengths_align_to_the_first_pass_best_with_gaps_and_empty_arcs():
    units = [["the", "light", "was", "good"], ["the", "light", "good"], ["the", "big", "light", "was", "good"]]
    network = build_network(units, [0.0, -1.0, -2.0], temperature=1.0)
    texts = {join_units(path, "word") for path in network.paths}
    assert texts == {" ".join(u) for u in units}  # every hypothesis is a path of its network
    assert any(() in slot and ("was",) in slot for slot in network.slots)  # the deletion: an empty arc
    assert any(("big",) in slot for slot in network.slots)  # the insertion: a gap slot


def exhaustive(network):
    paths = []
    for labels in itertools.product(*[list(slot) for slot in network.slots]):
        paths.append((path_logpost(network, labels), list(labels)))
    return sorted(paths, key=lambda item: -item[0])


@pytest.mark.parametrize("seed", range(5))
def test_best_paths_equal_exhaustive_enumeration(seed):
    import random

    rng = random.Random(seed)
    units = [[rng.choice("abc") for _ in range(4)] for _ in range(6)]
    network = build_network(units, [rng.uniform(-3, 0) for _ in units], temperature=1.0)
    everything = exhaustive(network)
    found = best_paths(network, len(everything) + 5)
    assert len(found) == len(everything)
    assert [lp for lp, _ in found] == pytest.approx([lp for lp, _ in everything])
    assert best_paths(network, 1)[0][1] == everything[0][1]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(st.sampled_from("abc"), max_size=4), min_size=1, max_size=4),
       st.lists(st.sampled_from("abcd"), max_size=5))
def test_network_oracle_equals_the_best_of_every_path(hyps, reference):
    """Unequal lengths give gap slots, empty arcs and arcs of several units; the dynamic programme must
    find the same floor as scoring every path."""
    network = build_network(hyps, [-float(i) for i in range(len(hyps))], temperature=1.0)
    fewest = min(edit_counts(reference, [u for label in labels for u in label]).errors
                 for labels in itertools.product(*[list(slot) for slot in network.slots]))
    assert oracle_errors(network, reference) == fewest
    assert fewest <= min(edit_counts(reference, hyp).errors for hyp in hyps)  # every input is a path


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(st.sampled_from("ab"), max_size=4), min_size=1, max_size=4),
       st.lists(st.sampled_from("ab"), max_size=4), st.floats(0, 2), st.floats(0, 2))
@example([list("baba"), []], list("ba"), 1.0, 1.0)  # three paths spell "ba"
def test_the_best_path_to_a_text_is_the_best_of_every_path_that_spells_it(hyps, text, arc_weight, first_pass_weight):
    """scripts/error_sources.py scores a reference by its best path: that must be the best of all its paths
    (gap slots and empty arcs let several paths spell one text), and None exactly when none spells it."""
    network = build_network(hyps, [-0.7 * i for i in range(len(hyps))], temperature=1.0)
    search = SearchWeights(arc_weight=arc_weight, first_pass_weight=first_pass_weight)
    spelling = [labels for labels in itertools.product(*[list(slot) for slot in network.slots])
                if [u for label in labels for u in label] == text]
    found = best_path_to(network, text, search)
    if not spelling:
        assert found is None
        return
    best = max(search.path_total(path_logpost(network, p), path_first_pass(network, p)) for p in spelling)
    logpost, first_pass, labels = found
    assert search.path_total(logpost, first_pass) == pytest.approx(best)
    assert (logpost, first_pass) == pytest.approx((path_logpost(network, labels), path_first_pass(network, labels)))
    assert [u for label in labels for u in label] == text


def test_with_a_zero_lm_weight_the_search_returns_the_arc_posterior_best_path():
    # posteriors 0.4, 0.3, 0.3: slot 1 "a" (0.4) wins, slot 2 "x" (0.6): "a x", none of the inputs
    texts, scores = ["a y", "b x", "c x"], [0.0, math.log(0.3 / 0.4), math.log(0.3 / 0.4)]
    weights = Weights(lm_weight=0.0, search="network",
                      network={"temperature": 1.0, "candidates": 10, "lm_weight": 0.0, "backward_weight": 0.0,
                               "length_bonus": 0.0})
    result = Rescorer(TableScorer({}), weights).rescore(texts, scores)
    network = build_network([t.split() for t in texts], scores, 1.0)
    assert result.best == join_units(best_paths(network, 1)[0][1], "word") == "a x"
    assert not result.best_in_input and result.searched
    assert result.ranks == [1, 2, 3]  # the input hypotheses keep their ranking


def test_no_expanded_paths_leave_the_inputs_alone_even_in_an_empty_network():
    assert best_paths(build_network([], [], 1.0), 0) == [] and best_paths(build_network([["a"]], [0.0], 1.0), 0) == []
    scores = [0.0, -1.0]
    candidates = network_candidates(build_network([list("ab"), list("xy")], scores, 1.0), scores, "char", count=0)
    assert set(candidates) == {"ab", "xy"}  # not the combinations "ay", "xb"


def test_candidates_hold_every_input_hypothesis():
    units = [list("abc"), list("abd"), list("xbc")]
    candidates = network_candidates(build_network(units, [0.0, -1.0, -2.0], 1.0), [0.0, -1.0, -2.0], "char", count=2)
    assert {"abc", "abd", "xbc"} <= set(candidates)


def test_tune_with_search_records_it_and_rescore_applies_it(trained_model_dir, tmp_path):
    source = write_json(tmp_path / "dev.json")
    weights = tmp_path / "w.json"
    result = runner.invoke(app, ["tune", str(source), "-m", str(trained_model_dir), "-o", str(weights),
                                 "--search", "network"])
    assert result.exit_code == 0, result.output
    tuned = json.loads(weights.read_text())
    network = tuned["weights"]["network"]
    assert network["candidates"] in (*FIRST_PASS_CANDIDATES, NETWORK_DEFAULTS["candidates"]) and network["passes"] in range(5)
    assert tuned["dev"]["network_oracle"] <= tuned["dev"]["oracle"]
    kept = "mined from the dev lists): penalty" in result.output  # the table's size and cost, or why it was left out
    assert kept == bool(tuned["weights"].get("confusions"))
    assert kept != ("confusable units: not kept (they did not cut the dev errors by 2%)" in result.output)
    applied = runner.invoke(app, ["rescore", str(source), "-m", str(trained_model_dir), "--weights", str(weights),
                                  "--search", "network"])
    assert applied.exit_code == 0, applied.output
    assert all(isinstance(u["best_in_input"], bool) for u in json.loads(applied.stdout)["utterances"])


def combination_dev_set() -> tuple[list[dict], dict[str, float]]:
    """Three lists whose reference is only in the network (the first word of one hypothesis, the second
    of the other), and an LM table that knows each reference."""
    utterances, table = [], {}
    for k in range(3):
        right, wrong = f"a{k} x{k}", f"b{k} y{k}"
        utterances.append({"id": f"u{k}", "reference": right, "hypotheses": [
            {"text": f"a{k} y{k}", "score": 0.0}, {"text": f"b{k} x{k}", "score": -0.1}]})
        table.update({right: -1.0, wrong: -30.0, f"a{k} y{k}": -10.0, f"b{k} x{k}": -11.0})
    return utterances, table


def test_tune_keeps_the_search_when_it_makes_fewer_dev_errors():
    from pipeline.tune import tune_weights

    utterances, table = combination_dev_set()
    weights, figures = tune_weights(Rescorer(TableScorer(table, default=-30.0)), utterances, "word",
                                    search="network")
    assert figures["tuned"] > 0 and figures["searched"] == 0  # every reference found, none in the lists
    assert figures["network_oracle"] == 0 < figures["oracle"]
    assert weights.search == "network"
    result = Rescorer(TableScorer(table, default=-30.0), weights).rescore(["a0 y0", "b0 x0"], [0.0, -0.1])
    assert result.best == "a0 x0" and not result.best_in_input


def test_tune_turns_the_search_off_when_it_does_not_beat_plain_rescoring(caplog):
    """Each reference is the first-pass best; the network's best path (and its other inputs) differ."""
    from pipeline.tune import tune_weights

    utterances = [{"id": f"u{k}", "reference": f"a{k} y{k}", "hypotheses": [
        {"text": f"a{k} y{k}", "score": 0.0}, {"text": f"b{k} x{k}", "score": -0.3},
        {"text": f"c{k} x{k}", "score": -0.3}]} for k in range(3)]
    table = {f"a{k} x{k}": 0.0 for k in range(3)}  # the LM likes the network's wrong combination best
    weights, figures = tune_weights(Rescorer(TableScorer(table, default=-5.0)), utterances, "word",
                                    search="network")
    assert figures["tuned"] == 0
    assert weights.search == "none" and weights.network["passes"] >= 1  # the fitted settings kept, search off
    assert "no fewer than plain rescoring" in caplog.text


def test_tune_counts_the_passes_that_reach_a_reference_beyond_the_candidates():
    """One candidate path per list: only single-slot changes reach the three references that need a
    combination; a fourth list, whose reference is its second hypothesis, calls for a positive LM weight."""
    from pipeline.tune_network import tune_network

    utterances, table = combination_dev_set()
    utterances.append({"id": "u3", "reference": "r s", "hypotheses": [{"text": "p q", "score": 0.0},
                                                                       {"text": "r s", "score": -0.1}]})
    table.update({"r s": -1.0, "p q": -10.0})
    rescorer = Rescorer(TableScorer(table, default=-30.0), Weights(network=dict(UNLIMITED)), unit="word")
    settings, figures = tune_network(rescorer, utterances, "word", candidates=1)
    assert settings["passes"] >= 1 and figures["search_errors"] == 0


def test_tune_expands_paths_only_where_the_passes_cannot_reach_the_references(tmp_path):
    """A reference that takes one word from each of two hypotheses differing in non-adjacent slots is one
    pass from the inputs (copying a run), so tune expands no paths; where they differ in adjacent slots,
    the run copied is the whole other hypothesis, and only expanded paths reach the reference."""
    from pipeline.tune_network import tune_network

    utterances, table = [], {}
    for k in range(3):
        utterances.append({"id": f"u{k}", "reference": f"a{k} q x{k}", "hypotheses": [
            {"text": f"a{k} q y{k}", "score": 0.0}, {"text": f"b{k} q x{k}", "score": -0.1}]})
        table.update({f"a{k} q x{k}": -1.0, f"a{k} q y{k}": -10.0, f"b{k} q x{k}": -11.0})
    rescorer = Rescorer(TableScorer(table, default=-30.0), Weights(network=dict(UNLIMITED)), unit="word")
    settings, figures = tune_network(rescorer, utterances, "word")
    assert figures["search_errors"] == 0 and settings["candidates"] == 0 and settings["passes"] >= 1
    weights = Weights(search="network", network=settings)
    weights.save(tmp_path / "w.json")
    result = Rescorer(TableScorer(table, default=-30.0), Weights.load(tmp_path / "w.json")).rescore(
        ["a1 q y1", "b1 q x1"], [0.0, -0.1])
    assert result.best == "a1 q x1" and not result.best_in_input

    adjacent, table = combination_dev_set()
    rescorer = Rescorer(TableScorer(table, default=-30.0), Weights(), unit="word")
    settings, figures = tune_network(rescorer, adjacent, "word")
    assert figures["search_errors"] == 0 and settings["candidates"] == NETWORK_DEFAULTS["candidates"]


def test_tune_runs_at_least_one_pass_even_where_the_expanded_paths_alone_do_as_well_on_dev():
    """Every path of these small networks is a candidate, so a pass changes nothing on the dev set; the
    paths alone lost out of sample on every dev set measured (pipeline.tune_network.MAX_PASSES)."""
    from pipeline.tune_network import tune_network

    utterances, table = combination_dev_set()
    rescorer = Rescorer(TableScorer(table, default=-30.0), Weights(), unit="word")
    settings, figures = tune_network(rescorer, utterances, "word")
    assert figures["search_errors"] == 0 and settings["passes"] == 1


def test_the_input_bonus_keeps_an_input_hypothesis_against_a_new_text_the_lm_prefers():
    settings = {"temperature": 1.0, "candidates": 10, "lm_weight": 1.0, "backward_weight": 0.0,
                "length_bonus": 0.0, "passes": 0}
    table = {"a x": -1.0}
    texts, scores = ["a y", "b x"], [0.0, -0.1]
    free = Rescorer(TableScorer(table, default=-3.0), Weights(search="network", network=settings))
    assert free.rescore(texts, scores).best == "a x"
    trusting = Rescorer(TableScorer(table, default=-3.0),
                        Weights(search="network", network={**settings, "input_bonus": 5.0}))
    assert trusting.rescore(texts, scores).best == "a y"


@pytest.mark.parametrize("passes", [0, 2])
def test_local_search_reaches_a_path_the_lm_prefers_beyond_the_expanded_candidates(passes):
    """Inputs "ab" and "xy"; one expanded path ("ab"); the LM prefers "ay", one slot change away."""
    scorer = TableScorer({"ay": -1.0}, default=-20.0)
    settings = {"temperature": 1.0, "candidates": 1, "lm_weight": 1.0, "backward_weight": 0.0, "length_bonus": 0.0,
                "passes": passes, "stage_budget": None}
    rescorer = Rescorer(scorer, Weights(search="network", network=settings), unit="char")
    result = rescorer.rescore(["ab", "xy"], [0.0, -1.0])
    assert result.best == ("ay" if passes else "ab")
    assert result.best_in_input == (not passes)


def test_the_pooled_search_of_many_lists_equals_searching_each_list_alone_with_one_at_a_time_scores(trained_lm):
    """The search pools every list's candidates (and each pass's variants) into one LM pass; the result
    must equal searching one list at a time with every text scored on its own (no batching at all)."""
    from lm.scorer import SentenceScorer, score_one_at_a_time
    from conftest import CHINESE, ENGLISH

    encoder = SentenceScorer(trained_lm, threads=1)

    class OneAtATime:
        def score(self, texts):
            return score_one_at_a_time(trained_lm, encoder.encode(texts))

    lists = []
    for sentence in ENGLISH[:3] + CHINESE[:3]:
        words = sentence.split() if " " in sentence else list(sentence)
        joiner = " " if " " in sentence else ""
        first, last = ["的"] + words[1:], words[:-1] + ["the"]  # the sentence is only in the network
        lists.append([{"text": joiner.join(first), "score": 0.0}, {"text": joiner.join(last), "score": -2.0},
                      {"text": joiner.join(words[:-1]), "score": -2.5}])
    settings = {"temperature": 1.0, "candidates": 1, "lm_weight": 1.0, "backward_weight": 0.0,
                "length_bonus": 0.5, "input_bonus": 0.0, "passes": 2}  # one path: the passes find the rest
    pooled = Rescorer(SentenceScorer(trained_lm, threads=1), Weights(search="network", network=settings))
    alone = Rescorer(OneAtATime(), Weights(search="network", network=settings))
    together = pooled.rescore_batch(lists)
    assert any(not r.best_in_input for r in together)  # the search moved beyond the lists somewhere
    for hyps, result in zip(lists, together):
        single = alone.rescore_batch([hyps])[0]
        assert result.best == single.best
        assert result.lm_logprobs == pytest.approx(single.lm_logprobs, abs=1e-4)


def test_mbr_among_the_searched_candidates_picks_the_consensus_over_the_top_scoring_outlier():
    from pipeline.rescore import pool_mbr

    pool = {"abc": -1.0, "abd": -1.2, "abe": -1.2, "xyz": -0.9}  # xyz scores highest but agrees with nothing
    assert max(pool, key=pool.get) == "xyz"
    assert pool_mbr(pool, "char", 1.0) == "abc"  # expected edits: abc 1.32, abd 1.37, xyz 2.12
    assert pool_mbr(pool, "char", 0.01) == "xyz"  # a sharp posterior: the highest total


def test_search_with_mbr_is_tuned_recorded_and_applied(trained_model_dir, tmp_path):
    source = write_json(tmp_path / "dev.json")
    weights = tmp_path / "w.json"
    result = runner.invoke(app, ["tune", str(source), "-m", str(trained_model_dir), "-o", str(weights),
                                 "--search", "network", "--decision", "mbr"])
    assert result.exit_code == 0, result.output
    tuned = json.loads(weights.read_text())["weights"]
    assert tuned["decision"] == "mbr" and tuned["network"]["mbr_temperature"] > 0
    tuned["search"] = "network"
    weights.write_text(json.dumps({"weights": tuned}))
    applied = runner.invoke(app, ["rescore", str(source), "-m", str(trained_model_dir), "--weights", str(weights),
                                  "--allow-other-model"])
    assert applied.exit_code == 0, applied.output
    assert all("best_in_input" in u for u in json.loads(applied.stdout)["utterances"])


def test_without_a_fitted_search_temperature_mbr_leaves_the_search_its_highest_scoring_candidate(tmp_path):
    """A weights file from before the search had an MBR step (no network.mbr_temperature) keeps its answers."""
    from pipeline.weights import read_weights_file

    settings = {"temperature": 1.0, "candidates": 10, "lm_weight": 1.0, "backward_weight": 0.0,
                "length_bonus": 0.0, "passes": 0}
    path = tmp_path / "old.json"
    path.write_text(json.dumps({"weights": {"search": "network", "decision": "mbr", "network": settings}}))
    weights, _ = read_weights_file(path)
    assert weights.network["mbr_temperature"] is None
    texts, scores = ["abc", "abd", "abe", "xyz"], [-1.0, -1.2, -1.2, -0.9]
    table = {"xyz": -0.1}
    searched = Rescorer(TableScorer(table, default=-3.0), weights, unit="char").rescore(texts, scores)
    as_map = Rescorer(TableScorer(table, default=-3.0),
                      Weights(search="network", network=dict(weights.network)), unit="char").rescore(texts, scores)
    assert searched.best == as_map.best == "xyz"
    weights.network["mbr_temperature"] = 100.0  # a flat posterior: the consensus
    assert Rescorer(TableScorer(table, default=-3.0), weights, unit="char").rescore(texts, scores).best != "xyz"


def test_rescore_says_when_mbr_cannot_apply_to_the_search(trained_model_dir, tmp_path):
    source = write_json(tmp_path / "dev.json")
    result = runner.invoke(app, ["rescore", str(source), "-m", str(trained_model_dir), "--search", "network",
                                 "--decision", "mbr", "-o", str(tmp_path / "out.json")])
    assert result.exit_code == 0, result.output
    assert "no MBR temperature for the search" in result.stderr
    plain = runner.invoke(app, ["rescore", str(source), "-m", str(trained_model_dir), "--search", "network",
                                "-o", str(tmp_path / "out2.json")])
    assert "MBR temperature" not in plain.stderr


def test_single_slot_changes_offer_the_two_most_probable_other_arcs_of_each_slot():
    from pipeline.network import slot_alternatives

    units = [["a", "x"], ["b", "x"], ["c", "x"], ["d", "y"]]
    network = build_network(units, [0.0, -1.0, -2.0, -3.0], temperature=1.0)
    changes = slot_alternatives(network, network.paths[0])
    assert changes == [(0, [("b",)]), (0, [("c",)]), (1, [("y",)])]  # "d" (slot 0) is the third most probable


def test_first_pass_shares_pin_each_single_run_and_add_up_over_a_combination():
    from pipeline.network import path_first_pass

    units = [list("一二三四"), list("壹二三四"), list("一二三肆"), list("壹贰三四")]
    scores = [0.0, -1.0, -2.0, -4.0]
    network = build_network(units, scores, temperature=1.0)
    assert [path_first_pass(network, path) for path in network.paths] == pytest.approx(scores)
    combined = [("壹",), ("二",), ("三",), ("肆",)]  # the runs of the second and third hypotheses
    assert path_first_pass(network, combined) == pytest.approx(-3.0)
    # the fourth's -4 over two slots: 壹 is pinned at -1 by the second, so 贰 carries the other -3
    assert network.shares[1][("贰",)] == pytest.approx(-3.0)


def test_candidates_keep_each_input_hypothesis_its_own_first_pass_score():
    units = [list("ab"), list("xb"), list("ay"), list("xy")]
    scores = [0.0, -1.0, -1.0, -5.0]  # "xy" scores 3 below the sum of its runs' shares
    candidates = network_candidates(build_network(units, scores, 1.0), scores, "char", count=4)
    assert candidates["xy"][1] == -5.0


def test_run_changes_copy_a_hypothesis_word_where_no_single_slot_change_can():
    from pipeline.network import run_alternatives

    units = [list("部队改编"), list("不对改编"), list("部队改变")]
    network = build_network(units, [0.0, -1.0, -2.0], temperature=1.0)
    changes = run_alternatives(network, network.paths[0])
    assert sorted(changes) == [(0, [("不",), ("对",)]), (3, [("变",)])]


@pytest.mark.parametrize("passes", [0, 1])
def test_the_first_pass_scoring_combines_two_hypotheses_runs_the_lm_prefers(passes):
    """Inputs 一二三四 (0), 壹二三四 (-1), 一二三肆 (-2); the LM prefers 壹二三肆, none of them, then 壹二三四:
    without a pass that input wins; one pass copies 肆 into it (estimated first pass -3, total -4)."""
    scorer = TableScorer({"壹二三四": -5.0, "壹二三肆": -1.0}, default=-20.0)
    settings = {"temperature": 1.0, "candidates": 1, "arc_weight": 0.0, "first_pass_weight": 1.0,
                "lm_weight": 1.0, "backward_weight": 0.0, "length_bonus": 0.0, "passes": passes}
    rescorer = Rescorer(scorer, Weights(search="network", network=settings), unit="char")
    result = rescorer.rescore(["一二三四", "壹二三四", "一二三肆"], [0.0, -1.0, -2.0])
    assert result.best == ("壹二三肆" if passes else "壹二三四")
    assert result.best_in_input == (not passes)


def test_a_weights_file_from_before_the_first_pass_term_keeps_its_arc_posterior_scoring(tmp_path):
    old = {"temperature": 1.0, "candidates": 20, "lm_weight": 1.0, "backward_weight": 0.0, "length_bonus": 0.0,
           "input_bonus": 0.0, "passes": 1, "mbr_temperature": None}
    path = tmp_path / "w.json"
    path.write_text(json.dumps({"weights": {"lm_weight": 1.0, "search": "network", "network": old}}))
    network = Weights.load(path).network
    assert (network["arc_weight"], network["first_pass_weight"]) == (1.0, 0.0)
