"""Tests for pipeline.rescore: the score combination, ranking, and the Weights file."""

from __future__ import annotations

import json
import logging
import math
import shutil

import pytest
import torch

from conftest import CHINESE, ENGLISH
from lm.checkpoint import load_model_dir
from lm.scorer import SentenceScorer
from pipeline.commands import apply_options
from pipeline.errors import UsageError
from pipeline.fields import ScoreFieldError
from pipeline.errors import WeightsFileError
from pipeline.rescore import Rescorer, Weights, rank_order, text_length


class TableScorer:
    """A stand-in for SentenceScorer: hand-set LM scores, and a record of what it was asked."""

    def __init__(self, table: dict[str, float], default: float = 0.0):
        self.table = table
        self.default = default
        self.calls: list[list[str]] = []

    def score(self, texts):
        self.calls.append(list(texts))
        return [self.table.get(text, self.default) for text in texts]


@pytest.fixture(scope="module")
def scorer(trained_lm) -> SentenceScorer:
    return SentenceScorer(trained_lm, threads=1)


def scrambled(sentence: str) -> str:
    """The same words (or characters) in reverse order: same length, much less likely."""
    return " ".join(sentence.split()[::-1]) if " " in sentence else sentence[::-1]


# --------------------------------------------------------------------------- choosing the best


@pytest.mark.parametrize("sentence", [ENGLISH[3], CHINESE[0]])
def test_large_lm_weight_picks_the_lm_preferred_hypothesis(scorer, sentence):
    texts = [scrambled(sentence), sentence]  # the first pass prefers the scrambled one
    lm = scorer.score(texts)
    assert lm[1] > lm[0] + 1.0, lm  # the tiny model learnt its corpus
    result = Rescorer(scorer, Weights(lm_weight=100.0)).rescore(texts, [-1.0, -2.0])
    assert result.best == sentence
    assert result.best_index == 1
    assert result.ranks == [2, 1]


@pytest.mark.parametrize("sentence", [ENGLISH[3], CHINESE[0]])
def test_zero_lm_weight_keeps_the_first_pass_choice(scorer, sentence):
    texts = [scrambled(sentence), sentence]
    result = Rescorer(scorer, Weights(lm_weight=0.0)).rescore(texts, [-1.0, -2.0])
    assert result.best == texts[0]
    assert result.ranks == [1, 2]
    assert result.total_scores == [-1.0, -2.0]


def test_total_score_is_the_weighted_sum():
    # Every number is a short binary fraction, so the sums are exact in any order.
    lm = TableScorer({"in the beginning": -4.0, "in a beginning": -6.5})
    rescorer = Rescorer(lm, Weights(lm_weight=0.5, length_bonus=0.25))
    result = rescorer.rescore(["in the beginning", "in a beginning"], [-1.5, -0.75])
    assert result.lm_logprobs == [-4.0, -6.5]
    assert result.total_scores == [-1.5 + 0.5 * -4.0 + 0.25 * 3, -0.75 + 0.5 * -6.5 + 0.25 * 3]
    assert result.ranks == [1, 2]


def test_scores_default_to_zero_in_the_plain_api():
    result = Rescorer(TableScorer({"a": -2.0, "b": -1.0}), Weights()).rescore(["a", "b"])
    assert result.total_scores == [-2.0, -1.0]
    assert result.best == "b"


@pytest.mark.parametrize(
    ("text", "unit", "length"),
    [
        ("in the beginning", "auto", 3),  # words
        ("历史总是不断重演", "auto", 8),  # characters for Chinese
        ("in the beginning", "char", 14),  # spaces are not characters
        ("历史 总是", "word", 2),
        ("历史 总是", "auto", 4),
        ("", "auto", 0),
    ],
)
def test_length_bonus_counts_words_or_characters(text, unit, length):
    rescorer = Rescorer(TableScorer({}), Weights(lm_weight=0.0, length_bonus=1.0), unit=unit)
    assert rescorer.rescore([text], [0.0]).total_scores == [float(length)]


def test_text_length_helper():
    assert text_length("a  b\tc", "word") == 3
    assert text_length("新 华社", "char") == 3


def test_auto_unit_is_chosen_per_utterance():
    rescorer = Rescorer(TableScorer({}), Weights(lm_weight=0.0, length_bonus=1.0), unit="auto")
    english, chinese = rescorer.rescore_batch([[{"text": "a b", "score": 0.0}], [{"text": "历史", "score": 0.0}]])
    assert english.total_scores == [2.0]
    assert chinese.total_scores == [2.0]


def test_score_fields_with_their_own_weights():
    weights = Weights(lm_weight=0.25, score_fields={"am_score": 1.0, "lm_score": 0.5})
    rescorer = Rescorer(TableScorer({"a": -8.0, "b": -1.0}), weights)
    hyps = [
        {"text": "a", "score": 100.0, "am_score": -10.0, "lm_score": -4.0},
        {"text": "b", "score": -100.0, "am_score": -12.0, "lm_score": -3.0},
    ]
    [result] = rescorer.rescore_batch([hyps])
    # "score" is not a selected field: it must not enter the total.
    assert result.total_scores == [-10.0 + 0.5 * -4.0 + 0.25 * -8.0, -12.0 + 0.5 * -3.0 + 0.25 * -1.0]
    assert result.best == "b"


def test_a_field_on_some_hypotheses_only_is_an_error_naming_both_places():
    rescorer = Rescorer(TableScorer({}), Weights(lm_weight=0.0, score_fields={"score": 1.0, "am_score": 2.0}))
    hyps = [{"text": "a", "score": -1.0}, {"text": "b", "score": -2.0, "am_score": 0.25}, {"text": "c", "score": -3.0}]
    with pytest.raises(ScoreFieldError, match=r"#1', hypothesis 2: has 'am_score' but utterance '#1', hypothesis 1 has none"):
        rescorer.rescore_batch([hyps])


def test_a_field_missing_from_every_hypothesis_leaves_its_term_out_with_one_note(caplog):
    rescorer = Rescorer(TableScorer({"a": -1.0, "b": -2.0}), Weights(score_fields={"score": 1.0}))
    with caplog.at_level(logging.WARNING, logger="pipeline.fields"):
        [first] = rescorer.rescore_batch([[{"text": "b"}, {"text": "a"}]])
        rescorer.rescore_batch([[{"text": "a"}]])
    assert first.best == "a" and first.total_scores == [-2.0, -1.0]
    notes = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(notes) == 1 and "no 'score'" in notes[0], notes
    with pytest.raises(ScoreFieldError, match="has 'score' but"):
        rescorer.rescore_batch([[{"text": "a", "score": -1.0}]])


def test_a_non_numeric_field_is_an_error():
    rescorer = Rescorer(TableScorer({}), Weights(lm_weight=0.0, score_fields={"am_score": 1.0}))
    with pytest.raises(ScoreFieldError, match="'am_score' must be a number, got True"):
        rescorer.rescore_batch([[{"text": "a", "am_score": True}, {"text": "b", "am_score": 3}]])


# --------------------------------------------------------------------------- ranking


@pytest.mark.parametrize(
    ("totals", "ranks"),
    [
        ([0.0, 0.0, 0.0], [1, 2, 3]),
        ([0.0, 1.0, 1.0], [3, 1, 2]),
        ([-1.0, 2.0, -1.0, 2.0], [3, 1, 4, 2]),
        ([], []),
    ],
)
def test_rank_order_is_stable(totals, ranks):
    assert rank_order(totals) == ranks


def test_exact_ties_keep_the_first_pass_order():
    rescorer = Rescorer(TableScorer({"x": -3.0, "y": -3.0, "z": -3.0}))
    result = rescorer.rescore(["z", "y", "x"], [-1.0, -1.0, -1.0])
    assert result.ranks == [1, 2, 3]
    assert result.best == "z"


def test_empty_list_gives_empty_best():
    lm = TableScorer({})
    result = Rescorer(lm).rescore([], [])
    assert (result.best, result.best_index, result.ranks, result.total_scores) == ("", -1, [], [])


def test_empty_list_in_an_utterance_stream(scorer):
    utterances = [{"id": "a", "hypotheses": []}, {"id": "b", "hypotheses": [{"text": "历史", "score": 0.0}]}]
    out = list(Rescorer(scorer).rescore_utterances(utterances))
    assert out[0] == {"id": "a", "hypotheses": [], "best": ""}
    assert out[1]["best"] == "历史"
    assert out[1]["hypotheses"][0]["rank"] == 1


def test_duplicate_texts_are_scored_once(scorer, monkeypatch):
    sequences_scored = []
    real = scorer.score_ids

    def spy(sequences, progress=None):
        sequences_scored.extend(sequences)
        return real(sequences, progress)

    monkeypatch.setattr(scorer, "score_ids", spy)
    rescorer = Rescorer(scorer)
    first, second = rescorer.rescore_batch(
        [
            [{"text": ENGLISH[0], "score": 0.0}, {"text": ENGLISH[1], "score": 0.0}, {"text": ENGLISH[0], "score": -1.0}],
            [{"text": ENGLISH[1], "score": 0.0}, {"text": CHINESE[0], "score": 0.0}],
        ]
    )
    assert len(sequences_scored) == 3  # three distinct texts across both lists
    assert first.lm_logprobs[0] == first.lm_logprobs[2]
    assert first.lm_logprobs[1] == second.lm_logprobs[0]
    assert first.ranks[0] < first.ranks[2]  # same LM score, higher first-pass score


def test_empty_text_scores_end_of_sentence_after_start(scorer, trained_lm):
    [logprob] = scorer.score([""])
    model, tok = trained_lm.model.eval(), trained_lm.tokenizer
    with torch.inference_mode():
        hidden, _ = model.hidden_states(torch.tensor([[tok.bos_id]]))
        network = model.token_logprobs(hidden[0], torch.tensor([tok.eos_id]))
        history = torch.tensor([[-1] * (trained_lm.ngram.history_width - 1) + [tok.bos_id]])
        expected = float(trained_lm.mix(network, history, torch.tensor([tok.eos_id]))[0])
    assert math.isfinite(logprob)
    assert logprob == pytest.approx(expected, abs=1e-5)
    assert logprob < 0


def test_every_hypothesis_kept_once_with_a_permutation_of_ranks(scorer):
    texts = [scrambled(ENGLISH[2]), ENGLISH[2], "", ENGLISH[2], "light", "😀"]
    hyps = [{"text": t, "score": -float(i)} for i, t in enumerate(texts)]
    [utterance] = Rescorer(scorer, Weights(lm_weight=0.5)).rescore_utterances([{"id": "u", "hypotheses": hyps}])
    assert [h["text"] for h in utterance["hypotheses"]] == texts  # input order kept
    assert sorted(h["rank"] for h in utterance["hypotheses"]) == list(range(1, len(texts) + 1))
    [top] = [h for h in utterance["hypotheses"] if h["rank"] == 1]
    assert utterance["best"] == top["text"]
    assert top["total_score"] == max(h["total_score"] for h in utterance["hypotheses"])


def test_unknown_fields_and_input_lm_score_are_kept(scorer):
    utterance = {
        "id": "u1",
        "condition": "noisy",
        "reference": ENGLISH[3],
        "hypotheses": [
            {"text": ENGLISH[3], "score": -3.0, "lm_score": -12.25, "words": [{"w": "and", "t": 0.1}]},
            {"text": scrambled(ENGLISH[3]), "score": -2.0, "lm_score": -11.5, "am_score": -7.0},
        ],
    }
    [out] = Rescorer(scorer).rescore_utterances([json.loads(json.dumps(utterance))])
    assert out["condition"] == "noisy"
    assert out["reference"] == ENGLISH[3]
    first, second = out["hypotheses"]
    assert first["lm_score"] == -12.25 and second["lm_score"] == -11.5
    assert first["words"] == [{"w": "and", "t": 0.1}] and second["am_score"] == -7.0
    assert first["lm_logprob"] != first["lm_score"]
    assert set(first) == {"text", "score", "lm_score", "words", "lm_logprob", "total_score", "rank", "posterior"}


def test_posteriors_are_the_softmax_of_the_totals_at_the_temperature():
    hyps = [{"text": "a", "score": 0.0}, {"text": "b", "score": -1.0}, {"text": "c", "score": -3.0}]
    for temperature in (0.5, 1.0, 4.0):
        weights = Weights(lm_weight=0.0, posterior_temperature=temperature)
        result = Rescorer(TableScorer({}), weights).rescore_batch([hyps])[0]
        expected = [math.exp(t / temperature) for t in result.total_scores]
        assert result.posteriors == pytest.approx([e / sum(expected) for e in expected])
    far = Rescorer(TableScorer({}), Weights(lm_weight=0.0)).rescore(["x", "y"], [-5000.0, -5001.0])
    assert far.posteriors == pytest.approx([1 / (1 + math.exp(-1)), 1 / (1 + math.exp(1))])  # no underflow


class Advances:
    def __init__(self):
        self.steps = []

    def advance(self, n):
        self.steps.append(n)


def test_chunking_gives_the_same_result_as_one_chunk(scorer):
    def utterances():
        return [
            {"id": f"u{i}", "hypotheses": [{"text": s, "score": -1.0}, {"text": scrambled(s), "score": 0.0}]}
            for i, s in enumerate(ENGLISH[:3] + CHINESE[:3])
        ]

    whole = Rescorer(scorer, chunk_hypotheses=10**6)
    chunked = Rescorer(scorer, chunk_hypotheses=3)
    calls = []
    chunked.scorer = TableScorerProxy(scorer, calls)
    progress = Advances()
    one = list(whole.rescore_utterances(utterances()))
    many = list(chunked.rescore_utterances(utterances(), progress=progress))
    assert len(calls) == 3  # 2 utterances (4 hypotheses) per chunk
    assert progress.steps == [2, 2, 2]
    assert [u["id"] for u in many] == [u["id"] for u in one]
    for a, b in zip(one, many):
        assert a["best"] == b["best"]
        assert [h["rank"] for h in a["hypotheses"]] == [h["rank"] for h in b["hypotheses"]]
        # Different pools can round float32 differently; the values agree far below any ranking margin.
        assert [h["lm_logprob"] for h in a["hypotheses"]] == pytest.approx([h["lm_logprob"] for h in b["hypotheses"]], abs=1e-4)


class TableScorerProxy:
    """Forward score() to a real scorer, recording each call."""

    def __init__(self, scorer, calls):
        self.scorer, self.calls = scorer, calls

    def score(self, texts):
        self.calls.append(list(texts))
        return self.scorer.score(texts)


def test_backward_scorer_adds_its_field_and_weight():
    forward = TableScorer({"a b": -4.0, "b a": -5.0})
    backward = TableScorer({"a b": -6.0, "b a": -2.0})
    rescorer = Rescorer(forward, Weights(lm_weight=0.5, backward_weight=0.25), backward_scorer=backward)
    hyps = [{"text": "a b", "score": 0.0}, {"text": "b a", "score": 0.0}]
    [result] = rescorer.rescore_batch([hyps])
    assert result.backward_logprobs == [-6.0, -2.0]
    assert result.total_scores == [0.5 * -4.0 + 0.25 * -6.0, 0.5 * -5.0 + 0.25 * -2.0]
    assert result.best == "b a"  # the backward model decides it
    [utterance] = rescorer.rescore_utterances([{"id": "u", "hypotheses": [dict(h) for h in hyps]}])
    assert [h["lm_logprob"] for h in utterance["hypotheses"]] == [-4.0, -5.0]
    assert [h["lm_logprob_backward"] for h in utterance["hypotheses"]] == [-6.0, -2.0]


def test_no_backward_field_without_a_backward_scorer(scorer):
    [utterance] = Rescorer(scorer).rescore_utterances([{"id": "u", "hypotheses": [{"text": "a", "score": 0.0}]}])
    assert "lm_logprob_backward" not in utterance["hypotheses"][0]


def test_backward_model_reads_tokens_right_to_left(scorer, trained_model_dir, tmp_path):
    backward_dir = tmp_path / "backward"
    shutil.copytree(trained_model_dir, backward_dir)
    config = json.loads((backward_dir / "config.json").read_text())
    (backward_dir / "config.json").write_text(json.dumps({**config, "direction": "backward"}))
    backward = SentenceScorer(load_model_dir(backward_dir), threads=1)
    assert backward.lm.direction == "backward"
    rescorer = Rescorer(scorer, Weights(lm_weight=1.0, backward_weight=1.0), backward_scorer=backward)
    [result] = rescorer.rescore_batch([[{"text": ENGLISH[0], "score": 0.0}]])
    # The same network fed the reversed token sequence: a different, finite score.
    assert math.isfinite(result.backward_logprobs[0])
    assert result.backward_logprobs[0] != pytest.approx(result.lm_logprobs[0], abs=1e-3)
    assert result.total_scores[0] == pytest.approx(result.lm_logprobs[0] + result.backward_logprobs[0], abs=1e-9)


# --------------------------------------------------------------------------- the weights file


def test_weights_round_trip(tmp_path):
    weights = Weights(lm_weight=0.37, length_bonus=-1.25, score_fields={"am_score": 1.0, "lm_score": 0.3}, backward_weight=0.1)
    path = tmp_path / "w.json"
    weights.save(path, {"dev": {"tuned": 0.1}})
    assert Weights.load(path) == weights
    saved = json.loads(path.read_text())
    assert saved["dev"] == {"tuned": 0.1}


def test_weights_load_a_bare_object(tmp_path):
    path = tmp_path / "w.json"
    path.write_text(json.dumps({"lm_weight": 0.5}))
    assert Weights.load(path) == Weights(lm_weight=0.5)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such weights file"),
        ("{", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        ('{"weights": {"lm_weight": 1, "bogus": 2}}', "expected a 'weights' object"),
        ('{"weights": [1, 2]}', "expected a 'weights' object"),
        ("[1, 2]", "expected a 'weights' object"),
        ('{"weights": {"score_fields": [1]}}', "expected a 'weights' object"),
        ('{"weights": {"lm_weight": "0.5"}}', "finite number"),
        ('{"weights": {"lm_weight": null}}', "finite number"),
        ('{"weights": {"length_bonus": true}}', "finite number"),
        ('{"weights": {"lm_weight": NaN}}', "finite number"),
        ('{"weights": {"score_fields": {"score": Infinity}}}', "finite number"),
        ('{"weights": {"score_fields": {"score": "1"}}}', "finite number"),
        ('{"weights": {"network": {"candidates": -1}}}', "candidates a whole number, 0 or more"),
        ('{"weights": {"network": {"candidates": 1.5}}}', "candidates a whole number, 0 or more"),
    ],
)
def test_bad_weights_file(tmp_path, content, message):
    path = tmp_path / "w.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(WeightsFileError, match=message) as error:
        Weights.load(path)
    assert str(path) in str(error.value)


def test_options_override_the_weights_file(tmp_path):
    path = tmp_path / "w.json"
    Weights(lm_weight=0.5, length_bonus=0.25, score_fields={"am_score": 0.75}, backward_weight=0.125).save(path)
    assert Weights.load(path) == Weights(0.5, 0.25, {"am_score": 0.75}, 0.125)
    combined = apply_options(Weights.load(path), 2.0, None, "am_score, lm_score", 0.0)
    assert combined == Weights(lm_weight=2.0, length_bonus=0.25, score_fields={"am_score": 0.75, "lm_score": 1.0})


def test_an_explicit_length_bonus_replaces_the_length_neutral_term():
    weights = apply_options(Weights(length_neutral=True), None, 0.5, None, None)
    assert (weights.length_bonus, weights.length_neutral) == (0.5, False)


def test_the_length_neutral_term_adds_the_lists_mean_lm_cost_per_unit():
    rescorer = Rescorer(TableScorer({"a b": -6.0, "a b c d": -10.0}), Weights(score_fields={}, length_neutral=True))
    result = rescorer.rescore(["a b", "a b c d"])
    bonus = 16.0 / 6  # the list's LM cost per word
    assert result.total_scores == pytest.approx([-6.0 + 2 * bonus, -10.0 + 4 * bonus])
    assert result.best == "a b c d"  # cheaper per word; summed log-probabilities alone prefer the shorter
    assert Rescorer(TableScorer({"a b": -6.0, "a b c d": -10.0}), Weights(score_fields={})).rescore(
        ["a b", "a b c d"]).best == "a b"


@pytest.mark.parametrize("short", ["", "a"])
def test_untuned_an_empty_or_one_word_hypothesis_far_below_the_first_pass_best_does_not_win(scorer, short):
    """Summed log-probabilities favour a short text by its whole cost; the untuned default must not."""
    for sentence in ENGLISH[:4] + CHINESE[:4]:
        first_pass_best = scrambled(sentence)  # a sentence the LM finds unlikely
        texts, scores = [first_pass_best, short], [-50.0, -80.0]
        plain = Rescorer(scorer, Weights()).rescore(texts, scores)
        assert plain.best == short, (sentence, plain.total_scores)  # the bug the default must avoid
        assert Rescorer(scorer).rescore(texts, scores).best == first_pass_best


@pytest.mark.parametrize("option", ["lm_weight", "length_bonus", "backward_weight"])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_weights_are_refused_up_front(option, value):
    values = {"lm_weight": None, "length_bonus": None, "backward_weight": None, option: value}
    with pytest.raises(UsageError, match=f"--{option.replace('_', '-')} must be a finite number"):
        apply_options(Weights(), values["lm_weight"], values["length_bonus"], None, values["backward_weight"])
