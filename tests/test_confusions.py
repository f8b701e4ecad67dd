"""Confusable units: mined from dev lists, added to networks as arcs, tried by the search, fitted by tune."""

from __future__ import annotations

import copy
import json
import math

import pytest

from pipeline.confusions import add_confusable_arcs, mine_confusions
from pipeline.errors import WeightsFileError
from pipeline.network import build_network
from pipeline.rescore import Rescorer, Weights
from pipeline.search import SearchMemo
from pipeline.tune import tune_weights
from pipeline.tune_network import tune_network
from pipeline.weights import NETWORK_DEFAULTS, read_weights_file
from test_network import UNLIMITED, combination_dev_set
from test_rescore import TableScorer
from test_screen import NgramTable

pytestmark = pytest.mark.usefixtures("restore_logging")


def test_mining_pairs_the_single_units_of_each_slot_both_ways_and_skips_runs_and_empty_arcs():
    networks = [build_network([list("ab"), list("xb")], [0.0, -1.0], 1.0),
                build_network([list("ac"), list("yc")], [0.0, -1.0], 1.0),
                build_network([["p", "q"], ["p"], ["p", "s"], ["p", "q", "t", "u"]], [0.0, -1.0, -2.0, -3.0], 1.0)]
    # the third: a slot of q, the empty arc and s, and a gap slot of the empty arc and the run "t u"
    assert [set(slot) for slot in networks[2].slots[1:]] == [{("q",), (), ("s",)}, {(), ("t", "u")}]
    assert mine_confusions(networks) == {"a": {"x": 1, "y": 1}, "q": {"s": 1}, "s": {"q": 1}, "x": {"a": 1},
                                         "y": {"a": 1}}


def test_mining_counts_the_slots_each_pair_shared():
    networks = [build_network([list("ab"), list("xb")], [0.0, -1.0], 1.0) for _ in range(3)]
    networks.append(build_network([list("ab"), list("yb")], [0.0, -1.0], 1.0))
    assert mine_confusions(networks) == {"a": {"x": 3, "y": 1}, "x": {"a": 3}, "y": {"a": 1}}


def test_an_added_arc_gets_the_slots_lowest_posterior_and_share_lowered_by_the_penalty():
    network = build_network([list("ab"), list("xb")], [0.0, -1.0], 1.0)
    before = [dict(slot) for slot in network.slots], [dict(shares) for shares in network.shares]
    add_confusable_arcs(network, {"a": {"y": 1, "x": 1}, "b": {"c": 1}, "z": {"w": 1}}, penalty=2.0)
    assert network.added == [{("y",)}, {("c",)}]  # x is in the slot already; nothing holds z
    assert network.slots[0][("y",)] == pytest.approx(min(before[0][0].values()) * math.exp(-2.0))
    assert network.shares[0][("y",)] == pytest.approx(min(before[1][0].values()) - 2.0)
    assert network.slots[1][("c",)] == pytest.approx(math.exp(-2.0)) and network.shares[1][("c",)] == -2.0
    assert all(network.slots[s][label] == p for s in range(2) for label, p in before[0][s].items())


def test_a_pair_confused_often_pays_less_by_the_count_weight_times_the_log_of_its_count_never_below_0():
    network = build_network([list("ab"), list("xb")], [0.0, -1.0], 1.0)
    lowest = min(network.shares[0].values())
    add_confusable_arcs(network, {"a": {"y": 1, "z": 20}, "x": {"y": math.ceil(math.e ** 2)}, "b": {"c": 10 ** 6}},
                        penalty=3.0, count_weight=0.5)
    assert network.shares[0][("z",)] == pytest.approx(lowest - (3.0 - 0.5 * math.log(20)))
    assert network.shares[0][("y",)] == pytest.approx(lowest - (3.0 - 0.5 * math.log(8)))  # x's count, the higher
    assert network.shares[1][("c",)] == 0.0 and network.slots[1][("c",)] == 1.0  # 3 - 0.5 ln 10^6 < 0: 0


def test_a_slot_gets_at_most_the_cap_of_added_arcs_the_commonest_pairs():
    from pipeline.confusions import MAX_ADDED_ARCS

    network = build_network([list("ab"), list("xb")], [0.0, -1.0], 1.0)
    partners = {f"w{k}": k + 1 for k in range(MAX_ADDED_ARCS + 5)}  # w0 seen once ... the last most often
    add_confusable_arcs(network, {"a": partners}, penalty=1.0)
    assert network.added[0] == {(f"w{k}",) for k in range(5, MAX_ADDED_ARCS + 5)}
    assert len(network.slots[0]) == 2 + MAX_ADDED_ARCS


def test_a_memo_of_networks_hands_out_copies_so_one_penalty_s_arcs_do_not_reach_the_next():
    """Tune tries each penalty on the same networks: a memo that handed out its own network would keep the
    first trial's arcs (the second would add none and keep their costs)."""
    hyps = [{"text": "力史重演", "score": 0.0}, {"text": "力使重演", "score": -1.0}]
    rescorer = Rescorer(TableScorer({}), confused(2.0, {"力": {"历": 3}, "史": {"始": 1}}), unit="char")
    networks: dict = {}
    for penalty in (2.0, 5.0, None, 5.0):
        rescorer.weights.network = {**rescorer.weights.network, "confusion_penalty": penalty}
        _, network, candidates = rescorer.network_candidates(hyps, networks)
        _, fresh, fresh_candidates = rescorer.network_candidates(hyps)
        assert (network.slots, network.shares, network.added) == (fresh.slots, fresh.shares, fresh.added)
        assert candidates == fresh_candidates and len(networks) == 1
    assert [set(slot) for slot in next(iter(networks.values())).slots] == [{("力",)}, {("史",), ("使",)},
                                                                            {("重",)}, {("演",)}]


def confused(penalty, table=None) -> Weights:
    return Weights(search="network", network={**UNLIMITED, "passes": 1, "confusion_penalty": penalty},
                   confusions=table if table is not None else {"力": {"历": 1}})


@pytest.mark.parametrize(("penalty", "best"), [(2.0, "历史重演"), (30.0, "力史重演"), (None, "力史重演")])
def test_the_search_takes_a_confusable_unit_only_where_the_lm_prefers_it_by_more_than_the_penalty(penalty, best):
    """No hypothesis holds 历; the LM prefers 历史重演 by 19 nats, and the added arc costs the penalty."""
    scorer = TableScorer({"历史重演": -1.0}, default=-20.0)
    result = Rescorer(scorer, confused(penalty), unit="char").rescore(["力史重演", "力使重演"], [0.0, -1.0])
    assert result.best == best
    assert result.best_in_input == (best != "历史重演")


def confusion_dev_set(unfixable: int) -> tuple[list[dict], dict[str, float]]:
    """q stands beside p in the slots of three lists; in three others only p does, and q is their reference's
    (the confusable unit fixes their three errors); ``unfixable`` more lists of one hypothesis one error off."""
    utterances, table = [], {}
    for k in range(3):
        utterances.append({"id": f"v{k}", "reference": f"q r{k}", "hypotheses": [
            {"text": f"p r{k}", "score": 0.0}, {"text": f"q r{k}", "score": -0.5}]})
        table[f"q r{k}"] = -1.0
    for k in range(3):
        utterances.append({"id": f"u{k}", "reference": f"q s{k}", "hypotheses": [
            {"text": f"p s{k}", "score": 0.0}, {"text": f"p t{k}", "score": -0.5}]})
        table[f"q s{k}"] = -1.0
    for k in range(unfixable):
        utterances.append({"id": f"w{k}", "reference": f"o{k} n{k}", "hypotheses": [{"text": f"m{k} n{k}", "score": 0.0}]})
    return utterances, table


def test_tune_mines_the_dev_lists_and_keeps_the_confusions_that_reach_references_outside_the_networks(tmp_path):
    """confusion_dev_set: the confusable unit q fixes every error."""
    utterances, table = confusion_dev_set(unfixable=0)
    weights, figures = tune_weights(Rescorer(TableScorer(table, default=-20.0)), utterances, "word", search="network")
    assert figures["searched"] == 0 < figures["network_oracle"]  # beyond the networks' own floor
    assert weights.search == "network" and weights.network["confusion_penalty"] is not None
    assert weights.confusions["p"] == {"q": 3} and weights.confusions["s0"] == {"t0": 1}
    weights.save(tmp_path / "w.json")
    assert json.loads((tmp_path / "w.json").read_text())["weights"]["confusions"]["p"] == "q:3"  # one line a unit
    loaded, _ = read_weights_file(tmp_path / "w.json")
    assert loaded.confusions == weights.confusions and loaded.network == weights.network
    result = Rescorer(TableScorer({"q s9": -1.0}, default=-20.0), loaded).rescore(["p s9", "p t9"], [0.0, -0.5])
    assert result.best == "q s9" and not result.best_in_input


def penalty_window_dev_set() -> tuple[list[dict], dict[str, float]]:
    """First-pass gaps of 100: to reach q in the v lists the LM weight must exceed 100/19 (about 5), so a
    penalty of 8 in score units is under 2 LM nats. The LM prefers q by 19 nats in the u lists (reference q)
    and by 3 in the w lists (reference p): only a penalty between 3 and 19 nats fixes the one and keeps the
    other, and none in score units from 1 to 8 does."""
    utterances, table = [], {}
    for k in range(3):
        utterances.append({"id": f"v{k}", "reference": f"q r{k}", "hypotheses": [
            {"text": f"p r{k}", "score": 0.0}, {"text": f"q r{k}", "score": -100.0}]})
        table[f"q r{k}"] = -1.0
        utterances.append({"id": f"u{k}", "reference": f"q s{k}", "hypotheses": [
            {"text": f"p s{k}", "score": 0.0}, {"text": f"p t{k}", "score": -100.0}]})
        table[f"q s{k}"], table[f"p t{k}"] = -1.0, -25.0
        utterances.append({"id": f"w{k}", "reference": f"p w{k}", "hypotheses": [
            {"text": f"p w{k}", "score": 0.0}, {"text": f"p z{k}", "score": -100.0}]})
        table[f"q w{k}"], table[f"p z{k}"] = -17.0, -25.0
    return utterances, table


def test_tune_fits_the_same_search_whether_its_trials_share_networks_and_ngram_ratings_or_not():
    """The memo only saves work. Only a penalty of the later trials fits these lists: a trial that got a
    network the first trial had added its arcs to would add none, and tune would fit another search."""
    utterances, table = penalty_window_dev_set()
    rescorer = Rescorer(NgramTable(table, {}, default=-20.0), unit="word")
    plain, _ = tune_weights(rescorer, utterances, "word")
    fitted = []
    for memo in (SearchMemo(), SearchMemo.lm_scores_only()):
        rescorer.weights = copy.deepcopy(plain)
        fitted.append(tune_network(rescorer, utterances, "word", memo=memo))
    assert fitted[0] == fitted[1]
    assert fitted[0][1]["search_errors"] == 0


def test_tune_leaves_the_confusions_out_where_they_do_not_cut_dev_errors():
    utterances, table = combination_dev_set()  # every reference is a path of its network
    weights, figures = tune_weights(Rescorer(TableScorer(table, default=-30.0)), utterances, "word",
                                    search="network")
    assert figures["searched"] == 0
    assert weights.confusions is None and weights.network["confusion_penalty"] is None


@pytest.mark.parametrize("unfixable, kept", [(146, True), (148, False)])
def test_tune_keeps_the_confusions_only_where_they_cut_at_least_the_minimum_share_of_dev_errors(unfixable, kept):
    """They fix 3 errors: of 149, 2.01% (kept); of 151, 1.99% (under CONFUSION_MIN_GAIN's 2%: chance, for
    the best of the pairs tried), and then the search without them is no better than plain rescoring."""
    utterances, table = confusion_dev_set(unfixable)
    weights, figures = tune_weights(Rescorer(TableScorer(table, default=-20.0)), utterances, "word", search="network")
    assert (weights.confusions is not None) == kept
    assert (weights.network["confusion_penalty"] is not None) == kept
    assert figures["searched"] * 2 * (6 + unfixable) == pytest.approx(unfixable + (0 if kept else 3))
    assert weights.search == ("network" if kept else "none")  # without them no better than plain rescoring


def test_tune_tries_penalties_in_nats_of_the_lm_whatever_the_scale_of_the_first_pass_scores():
    """penalty_window_dev_set: only a penalty between 3 and 19 LM nats fits it."""
    utterances, table = penalty_window_dev_set()
    weights, figures = tune_weights(Rescorer(TableScorer(table, default=-20.0)), utterances, "word", search="network")
    nats = weights.network["lm_weight"] + weights.network["backward_weight"]
    assert figures["searched"] == 0 and weights.confusions is not None
    assert 3 < weights.network["confusion_penalty"] / nats < 19


def test_a_weights_file_from_before_the_counts_counts_each_pair_once(tmp_path):
    path = tmp_path / "w.json"
    path.write_text(json.dumps({"weights": {"search": "network", "confusions": {"力": "历 立", "a": "b:2 c"}}}))
    weights, _ = read_weights_file(path)
    assert weights.confusions == {"力": {"历": 1, "立": 1}, "a": {"b": 2, "c": 1}}


@pytest.mark.parametrize("bad", [{"confusions": {"a": ["b"]}}, {"confusions": ["a"]},
                                 {"confusions": {"a": {"b": 0}}},
                                 {"network": {**NETWORK_DEFAULTS, "confusion_penalty": -1.0}},
                                 {"network": {**NETWORK_DEFAULTS, "confusion_count_weight": -1.0}}])
def test_a_weights_file_with_a_malformed_confusion_table_or_penalty_is_refused_in_one_line(tmp_path, bad):
    path = tmp_path / "w.json"
    path.write_text(json.dumps({"weights": bad}))
    with pytest.raises(WeightsFileError, match="confusion_penalty and confusion_count_weight must be 0 or more") as error:
        read_weights_file(path)
    assert "\n" not in str(error.value)


def test_a_weights_file_from_before_the_confusions_searches_without_them(tmp_path):
    path = tmp_path / "old.json"
    old_network = {k: v for k, v in NETWORK_DEFAULTS.items() if not k.startswith("confusion")}
    path.write_text(json.dumps({"weights": {"search": "network", "network": old_network}}))
    weights, _ = read_weights_file(path)
    assert weights.confusions is None and weights.network["confusion_penalty"] is None


def test_the_passes_single_slot_changes_leave_added_arcs_to_the_confusion_rounds():
    from pipeline.network import slot_alternatives

    network = build_network([list("ab"), list("xb")], [0.0, -1.0], 1.0)
    add_confusable_arcs(network, {"b": {"c": 1}, "a": {"y": 1}}, penalty=0.0)
    assert slot_alternatives(network, network.paths[0]) == [(0, [("x",)])]


def test_only_the_lists_whose_best_moved_go_on_to_the_next_round():
    """pq moves to Pq, then PQ, one change a round (a stage lets one new text through); xy never moves, so
    the network scores one of its three changes, not one in each of the three rounds."""
    scorer = TableScorer({"Pq": -10.0, "PQ": -1.0}, default=-20.0)
    weights = Weights(search="network", network={**NETWORK_DEFAULTS, "passes": 0, "confusion_penalty": 0.5},
                      confusions={"p": {"P": 1}, "q": {"Q": 1}, "x": {"A": 1, "B": 1, "C": 1}})
    first, second = Rescorer(scorer, weights, unit="char").rescore_batch([[{"text": "pq", "score": 0.0}],
                                                                           [{"text": "xy", "score": 0.0}]])
    assert first.best == "PQ" and second.best == "xy"
    assert [t for call in scorer.calls for t in call if t.endswith("y") and t != "xy"] == ["Ay"]
