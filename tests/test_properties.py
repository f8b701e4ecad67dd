"""Property tests: arbitrary texts, n-best shapes and scores never break reading, scoring or ranking."""

from __future__ import annotations

import copy
import json
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lm.scorer import SentenceScorer
from pipeline.nbest import read_nbest
from pipeline.nbest_writer import write_nbest
from pipeline.rescore import Rescorer, Weights

SETTINGS = settings(max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# Any Unicode but lone surrogates (not text: UTF-8 cannot hold them), plus the awkward cases on purpose.
characters = st.characters(blacklist_categories=("Cs",))
special_texts = st.sampled_from(
    ["", " ", "  \t ", "\n", "\x00", "\u200b", "😀", "龘靐", "历史总是不断重演", "in the beginning", "a\r\nb", "\ufeff"]
)
texts = st.one_of(special_texts, st.text(characters, max_size=24), st.text(st.sampled_from("ab 历史😀\t"), max_size=12))
scores = st.floats(allow_nan=False, allow_infinity=False, min_value=-1e12, max_value=1e12)
hypotheses = st.lists(st.fixed_dictionaries({"text": texts, "score": scores}), max_size=6)
nbest_lists = st.lists(hypotheses, min_size=1, max_size=4)


@pytest.fixture(scope="module")
def scorer(trained_lm) -> SentenceScorer:
    return SentenceScorer(trained_lm, threads=1)


def as_utterances(lists: list[list[dict]]) -> list[dict]:
    return [{"id": f"utt-{i}", "hypotheses": copy.deepcopy(hyps)} for i, hyps in enumerate(lists)]


def check_rescored(utterance: dict, original: list[dict]) -> None:
    hyps = utterance["hypotheses"]
    assert [(h["text"], h["score"]) for h in hyps] == [(h["text"], h["score"]) for h in original]
    assert sorted(h["rank"] for h in hyps) == list(range(1, len(hyps) + 1))
    ranked = sorted(hyps, key=lambda h: h["rank"])
    assert utterance["best"] == (ranked[0]["text"] if hyps else "")
    for better, worse in zip(ranked, ranked[1:]):
        assert better["total_score"] >= worse["total_score"]
    for hyp in hyps:
        assert math.isfinite(hyp["lm_logprob"]) and hyp["lm_logprob"] < 0
        assert math.isfinite(hyp["total_score"])


@SETTINGS
@given(lists=nbest_lists, layout=st.sampled_from(["json", "jsonl"]))
def test_write_read_rescore_write_read(tmp_path_factory, scorer, lists, layout):
    folder = tmp_path_factory.mktemp("prop")
    utterances = as_utterances(lists)
    source = folder / f"in.{layout}"
    write_nbest(source, utterances, layout)
    assert read_nbest(source) == utterances

    rescored = list(Rescorer(scorer, Weights(lm_weight=0.5, length_bonus=0.25)).rescore_utterances(read_nbest(source)))
    assert [u["id"] for u in rescored] == [u["id"] for u in utterances]
    for utterance, original in zip(rescored, lists):
        check_rescored(utterance, original)

    out = folder / f"out.{layout}"
    write_nbest(out, rescored, layout)
    assert read_nbest(out) == json.loads(json.dumps(rescored))


@SETTINGS
@given(hyps=hypotheses)
def test_ranking_without_the_lm_is_a_stable_sort_of_scores(scorer, hyps):
    result = Rescorer(scorer, Weights(lm_weight=0.0)).rescore([h["text"] for h in hyps], [h["score"] for h in hyps])
    order = sorted(range(len(hyps)), key=lambda i: -hyps[i]["score"])  # sorted() is stable
    assert [result.ranks[i] for i in order] == list(range(1, len(hyps) + 1))
    assert result.best == (hyps[order[0]]["text"] if hyps else "")


@SETTINGS
@given(batch=st.lists(texts, max_size=8))
def test_scores_are_finite_and_do_not_depend_on_the_batch(scorer, batch):
    together = scorer.score(batch + batch)
    assert len(together) == 2 * len(batch)
    assert together[: len(batch)] == together[len(batch) :]  # the same text, the same number
    for text, value in zip(batch, together):
        assert math.isfinite(value) and value < 0
        assert value == pytest.approx(scorer.score([text])[0], abs=1e-4)
