"""Tests for pipeline.tune: the error count of a weight vector, the search, and the tune command."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from conftest import ENGLISH
from pipeline.cli import app
from pipeline.errors import UsageError
from pipeline.evaluate import evaluate_utterances
from pipeline.metrics import error_counts
from pipeline.rescore import Rescorer, Weights
from pipeline.tune import DevSet, collect_dev_set, count_errors, first_pass_fields, tune_weights


class TableScorer:
    """Hand-set LM scores (what Rescorer needs from a scorer: ``score(texts)``)."""

    def __init__(self, table: dict[str, float]):
        self.table = table

    def score(self, texts):
        return [self.table.get(text, 0.0) for text in texts]


pytestmark = pytest.mark.usefixtures("restore_logging")


# --------------------------------------------------------------------------- count_errors by hand


def hand_made_dev_set() -> DevSet:
    # names: first-pass score, LM, length. u0 has three hypotheses, u1 two (and one padding slot).
    features = torch.tensor(
        [
            [[0.0, -1.0, 2.0], [-1.0, 0.0, 2.0], [-2.0, 5.0, 3.0]],
            [[0.0, 0.0, 1.0], [0.0, 0.0, 1.0], [100.0, 100.0, 100.0]],  # the last slot is padding
        ],
        dtype=torch.float64,
    )
    errors = torch.tensor([[1, 0, 2], [3, 0, 7]])
    valid = torch.tensor([[True, True, True], [True, True, False]])
    return DevSet(["field:score", "lm_weight", "length_bonus"], features, errors, valid, reference_units=10)


@pytest.mark.parametrize(
    ("vector", "expected"),
    [
        ([1.0, 0.0, 0.0], 1 + 3),  # u0 totals 0, -1, -2; u1 is always a tie: its first hypothesis
        ([1.0, 1.0, 0.0], 2 + 3),  # u0 totals -1, -1, 3
        ([0.0, -1.0, 0.0], 1 + 3),  # u0 totals 1, 0, -5
        ([1.0, 2.0, -12.0], 0 + 3),  # u0 totals -26, -25, -28
        ([-1.0, 0.0, 0.0], 2 + 3),  # u0 totals 0, 1, 2
    ],
)
def test_count_errors_by_hand(vector, expected):
    assert count_errors(hand_made_dev_set(), torch.tensor(vector, dtype=torch.float64)) == expected


def test_count_errors_never_picks_padding():
    dev = hand_made_dev_set()
    vector = torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64)  # padding would total 300
    assert count_errors(dev, vector) == 2 + 3


def test_count_errors_ties_pick_the_earlier_hypothesis():
    dev = hand_made_dev_set()
    dev.errors[1] = torch.tensor([0, 5, 0])
    assert count_errors(dev, torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)) == 1 + 0


# --------------------------------------------------------------------------- the search


def two_choice_utterance(i: int, gain: float, correct: str, wrong_errors: int, field: str | None) -> tuple[dict, dict]:
    """Hypothesis A (first pass: score 0, LM 0) against B (score -1, LM ``gain``): B wins iff w * gain > 1.

    Every text has two words, so the length bonus cannot change anything. With ``field`` the gain
    is put in that first-pass field instead of the LM table.
    """
    reference = f"w{i} c{i}"
    wrong = f"w{i} e{i}" if wrong_errors == 1 else f"x{i} e{i}"
    a_text, b_text = (reference, wrong) if correct == "A" else (wrong, reference)
    a = {"text": a_text, "score": 0.0}
    b = {"text": b_text, "score": -1.0}
    table = {}
    if field is None:
        table = {a_text: 0.0, b_text: gain}
    else:
        a[field], b[field] = 0.0, gain
    return {"id": f"u{i}", "reference": reference, "hypotheses": [a, b]}, table


def trade_off_dev_set(field: str | None) -> tuple[list[dict], dict]:
    """Four utterances whose errors, as a function of the weight w of B's gain, are:
    3 for w <= 0.25, 1 for 0.25 < w <= 1, 3 for 1 < w <= 2, 2 for w > 2."""
    specs = [(4.0, "B", 1), (4.0, "B", 1), (1.0, "A", 2), (0.5, "B", 1)]
    utterances, table = [], {}
    for i, (gain, correct, wrong_errors) in enumerate(specs):
        utterance, entries = two_choice_utterance(i, gain, correct, wrong_errors, field)
        utterances.append(utterance)
        table.update(entries)
    return utterances, table


def brute_force_errors(utterances: list[dict], table: dict, field: str | None, w: float) -> int:
    """Errors of the argmax of score + w * gain (the first on ties), counted independently of tune.py."""
    total = 0
    for utterance in utterances:
        hyps = utterance["hypotheses"]
        gains = [table[h["text"]] if field is None else h[field] for h in hyps]
        totals = [h["score"] + w * g for h, g in zip(hyps, gains)]
        best = max(range(len(hyps)), key=lambda k: (totals[k], -k))
        total += error_counts(utterance["reference"], hyps[best]["text"], "word").errors
    return total


@pytest.mark.parametrize("field", [None, "lm_score"])
def test_tune_finds_the_brute_force_minimum(field):
    utterances, table = trade_off_dev_set(field)
    grid = [k / 100 for k in range(-300, 601)] + [0.25, 1.0, 2.0]
    brute_force = min(brute_force_errors(utterances, table, field, w) for w in grid)
    assert brute_force == 1

    score_fields = {"score": 1.0} if field is None else {"score": 1.0, field: 1.0}
    rescorer = Rescorer(TableScorer(table), Weights(score_fields=score_fields))
    weights, figures = tune_weights(rescorer, utterances, "word")

    tuned = weights.lm_weight if field is None else weights.score_fields[field]
    assert 0.25 < tuned <= 1.0, weights
    assert 0.3 < tuned < 0.9, weights  # the middle of the tied run, not an edge (see tune.py's docstring)
    assert weights.score_fields["score"] == 1.0  # only ratios matter: the first field is fixed
    assert weights.length_bonus == 0.0  # every text has the same length
    assert figures["tuned"] == brute_force / 8  # 4 references of 2 words
    assert figures["first_pass"] == 3 / 8
    assert figures["oracle"] == 0.0
    assert (figures["utterances"], figures["hypotheses"], figures["unit"], figures["metric"]) == (4, 8, "word", "WER")

    # The reported figure is what rescoring with these weights gives.
    rescorer.weights = weights
    rescored = list(rescorer.rescore_utterances(json.loads(json.dumps(utterances))))
    assert evaluate_utterances(rescored, "word").rescored.errors == brute_force


def test_tune_finds_a_length_bonus_interval():
    # LM scores all 0. v1: the longer, correct hypothesis needs a bonus > 1 per word to win;
    # v2: the longer, wrong one wins only with a bonus > 3.
    utterances = [
        {"id": "v1", "reference": "a b c", "hypotheses": [{"text": "a b", "score": 0.0}, {"text": "a b c", "score": -1.0}]},
        {"id": "v2", "reference": "d e", "hypotheses": [{"text": "d e", "score": 0.0}, {"text": "d e f", "score": -3.0}]},
    ]
    weights, figures = tune_weights(Rescorer(TableScorer({})), utterances, "auto")
    assert 1.0 < weights.length_bonus <= 3.0, weights
    assert figures["tuned"] == 0.0
    assert figures["first_pass"] == 1 / 5


def test_tune_counts_an_empty_list_as_deleting_its_reference():
    utterances, table = trade_off_dev_set(None)
    utterances.append({"id": "empty", "reference": "p q r s", "hypotheses": []})
    weights, figures = tune_weights(Rescorer(TableScorer(table)), utterances, "word")
    assert figures["oracle"] == 4 / 12
    assert figures["tuned"] == (1 + 4) / 12
    assert figures["tuned"] >= figures["oracle"]


def test_tune_with_no_hypotheses_at_all():
    utterances = [{"id": "a", "reference": "x y", "hypotheses": []}]
    weights, figures = tune_weights(Rescorer(TableScorer({})), utterances, "word")
    assert figures["tuned"] == figures["first_pass"] == figures["oracle"] == 1.0
    assert weights.score_fields == {"score": 1.0}


def test_collect_dev_set_features():
    utterances = [
        {"id": "a", "reference": "历史", "hypotheses": [{"text": "历史", "score": -1.5}, {"text": "力使总", "score": -0.5}]},
        {"id": "b", "reference": "告诉", "hypotheses": [{"text": "告", "score": -2.0}]},
    ]
    rescorer = Rescorer(TableScorer({"历史": -3.0, "力使总": -9.0, "告": -1.0}))
    dev = collect_dev_set(rescorer, utterances, "char")
    assert dev.names == ["field:score", "lm_weight", "length_bonus"]
    assert dev.features.tolist() == [[[-1.5, -3.0, 2.0], [-0.5, -9.0, 3.0]], [[-2.0, -1.0, 1.0], [0.0, 0.0, 0.0]]]
    assert dev.errors.tolist() == [[0, 3], [1, 0]]
    assert dev.valid.tolist() == [[True, True], [True, False]]
    assert dev.reference_units == 4


def test_tune_needs_references():
    utterances = [{"id": "a", "hypotheses": [{"text": "x", "score": 0.0}]}]
    with pytest.raises(UsageError, match="needs references"):
        tune_weights(Rescorer(TableScorer({})), utterances)


def test_tune_needs_a_score_field():
    utterances = [{"id": "a", "reference": "x", "hypotheses": [{"text": "x", "score": 0.0}]}]
    with pytest.raises(UsageError, match="score field"):
        tune_weights(Rescorer(TableScorer({}), Weights(score_fields={})), utterances)


# --------------------------------------------------------------------------- the tune command


def scrambled(sentence: str) -> str:
    return " ".join(sentence.split()[::-1])


@pytest.fixture
def dev_file(tmp_path):
    """English utterances whose first pass prefers a scrambled sentence the LM dislikes."""
    utterances = [
        {"id": f"d{i}", "reference": s, "hypotheses": [{"text": scrambled(s), "score": -1.0}, {"text": s, "score": -2.0}]}
        for i, s in enumerate(ENGLISH[:5])
    ]
    path = tmp_path / "dev.json"
    path.write_text(json.dumps({"utterances": utterances}))
    return path


def test_tune_command_writes_weights_that_rescore_reads(trained_model_dir, dev_file, tmp_path):
    runner = CliRunner()
    weights_path = tmp_path / "weights.json"
    result = runner.invoke(app, ["tune", str(dev_file), "-m", str(trained_model_dir), "-o", str(weights_path)])
    assert result.exit_code == 0, result.output
    saved = json.loads(weights_path.read_text())
    assert saved["dev"]["first_pass"] > 0.0
    assert saved["dev"]["tuned"] == 0.0
    assert saved["dev"]["oracle"] == 0.0
    assert saved["dev"]["file"] == str(dev_file)
    assert saved["model"] == str(trained_model_dir)
    assert "first-pass WER" in result.stderr and "oracle" in result.stderr
    weights = Weights.load(weights_path)
    assert weights.lm_weight > 0

    out = tmp_path / "out.json"
    result = runner.invoke(app, ["rescore", str(dev_file), "-m", str(trained_model_dir), "--weights", str(weights_path), "-o", str(out)])
    assert result.exit_code == 0, result.output
    for utterance in json.loads(out.read_text())["utterances"]:
        assert utterance["best"] == utterance["reference"]
        for hyp in utterance["hypotheses"]:
            expected = hyp["score"] + weights.lm_weight * hyp["lm_logprob"] + weights.length_bonus * len(hyp["text"].split())
            assert hyp["total_score"] == pytest.approx(expected, abs=1e-9)


def test_tune_command_without_references(trained_model_dir, tmp_path):
    path = tmp_path / "noref.json"
    path.write_text(json.dumps({"utterances": [{"id": "a", "hypotheses": [{"text": "a", "score": 0.0}]}]}))
    weights_path = tmp_path / "w.json"
    result = CliRunner().invoke(app, ["tune", str(path), "-m", str(trained_model_dir), "-o", str(weights_path)])
    assert result.exit_code == 1  # a problem of the input, not of the options
    assert isinstance(result.exception, SystemExit)
    assert result.stderr.strip() == f"error: {path}: no utterance has a 'reference'; tuning needs them"
    assert not weights_path.exists()


def test_forward_and_backward_weights_are_searched_jointly():
    # Each utterance: hypothesis 0 is right and the first pass prefers hypothesis 1. No weight of the
    # forward LM alone fixes u0, none of the backward LM alone fixes u1; a mix of both fixes both.
    # names: score, forward LM, length, backward LM
    features = torch.tensor(
        [
            [[0.0, -3.0, 1.0, 0.0], [0.0, -1.0, 1.0, -4.0]],
            [[0.0, 0.0, 1.0, -3.0], [0.0, -4.0, 1.0, -1.0]],
        ],
        dtype=torch.float64,
    )
    dev = DevSet(["field:score", "lm_weight", "length_bonus", "backward_weight"], features,
                 errors=torch.tensor([[0, 1], [0, 1]]), valid=torch.ones(2, 2, dtype=torch.bool), reference_units=2)
    dev.features[:, :, 0] = torch.tensor([[-0.5, 0.0], [-0.5, 0.0]])
    from pipeline.tune import search_weights

    vector, errors = search_weights(dev, ["lm_weight", "length_bonus", "backward_weight"])
    assert errors == 0
    assert vector[1] > 0 and vector[3] > 0, vector


@pytest.mark.parametrize(
    ("hypotheses", "expected"),
    [
        ([{"text": "a", "score": -1.0}], ["score"]),
        ([{"text": "a", "am_score": -1.0, "score": -2.0, "lm_score": -3.0}], ["score", "am_score", "lm_score"]),
        ([{"text": "a", "am_score": -1.0, "lm_score": -3.0}], ["am_score", "lm_score"]),
        # our own output, a field some hypotheses lack, and non-numbers are not first-pass scores
        ([{"text": "a", "score": -1.0, "total_score": -2.0, "ctc_score": -1.0, "word_score": "high"},
          {"text": "b", "score": -1.0, "total_score": -2.0, "word_score": "low"}], ["score"]),
        ([{"text": "a", "score": -1.0, "am_score": True}], ["score"]),
        ([], ["score"]),
        ([{"text": "a"}], ["score"]),
    ],
)
def test_first_pass_fields(hypotheses, expected):
    assert first_pass_fields([{"id": "u", "hypotheses": hypotheses}]) == expected


def test_tune_command_weighs_every_first_pass_score_by_default(trained_model_dir, tmp_path):
    # The recogniser's score prefers a scrambled sentence; its acoustic term alone knows better.
    utterances = [
        {"id": f"d{i}", "reference": s, "hypotheses": [
            {"text": scrambled(s), "score": -1.0, "am_score": -9.0, "lm_score": 8.0},
            {"text": s, "score": -2.0, "am_score": -1.0, "lm_score": -1.0}]}
        for i, s in enumerate(ENGLISH[:5])
    ]
    dev = tmp_path / "dev.json"
    dev.write_text(json.dumps({"utterances": utterances}))
    weights_path = tmp_path / "w.json"
    result = CliRunner().invoke(app, ["tune", str(dev), "-m", str(trained_model_dir), "-o", str(weights_path)])
    assert result.exit_code == 0, result.output
    assert '"score_fields": {"score": 1.0, "am_score": ' in result.stderr  # the summary line
    weights = Weights.load(weights_path)
    assert list(weights.score_fields) == ["score", "am_score", "lm_score"]

    out = tmp_path / "out.json"
    result = CliRunner().invoke(app, ["rescore", str(dev), "-m", str(trained_model_dir), "--weights", str(weights_path),
                                      "-o", str(out)])
    assert result.exit_code == 0, result.output
    for utterance in json.loads(out.read_text())["utterances"]:
        assert utterance["best"] == utterance["reference"]
        for hyp in utterance["hypotheses"]:
            fields = sum(weight * hyp[name] for name, weight in weights.score_fields.items())
            expected = fields + weights.lm_weight * hyp["lm_logprob"] + weights.length_bonus * len(hyp["text"].split())
            assert hyp["total_score"] == pytest.approx(expected, abs=1e-9)
