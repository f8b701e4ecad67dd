"""``asr-rescore perplexity``: the model (both directions where it has two), each direction and each part,
per token, character and word."""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import replace

import pytest
from typer.testing import CliRunner

from conftest import CHINESE, ENGLISH, write_lines
from lm.checkpoint import load_model_dir
from lm.scorer import SentenceScorer
from pipeline.cli import app

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("restore_logging")


def test_perplexity_json_reports_the_mixture_and_each_part(trained_model_dir, tmp_path):
    text = write_lines(tmp_path / "text.txt", ENGLISH[:4] + CHINESE[:4])
    result = runner.invoke(app, ["perplexity", str(trained_model_dir), str(text), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    lm = load_model_dir(trained_model_dir)
    assert lm.ngram is not None
    network_alone = SentenceScorer(replace(lm, ngram=None)).score(ENGLISH[:4] + CHINESE[:4])
    assert report["network"]["logprob"] == pytest.approx(sum(network_alone), abs=1e-6)
    assert report["direction"] == "forward"  # this model has no backward direction
    assert set(report["ngram"]) == set(report["network"]) == {k for k in report if k not in ("network", "ngram", "direction")}
    assert report["ngram"]["logprob"] != report["network"]["logprob"] != report["logprob"]
    assert report["ppl_word"] > 1.0


def test_ppl_word_is_null_for_text_without_spaces(trained_model_dir, tmp_path):
    text = write_lines(tmp_path / "zh.txt", CHINESE[:4])
    result = runner.invoke(app, ["perplexity", str(trained_model_dir), str(text), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["ppl_word"] is None and report["network"]["ppl_word"] is None
    assert report["ppl_char"] > 1.0


@pytest.fixture
def two_direction_model_dir(trained_model_dir, tmp_path):
    """The tiny model with a backward direction: a copy of its weights that reads sentences right to left."""
    model_dir = tmp_path / "lm"
    shutil.copytree(trained_model_dir, model_dir)
    backward_dir = model_dir / "backward"
    shutil.copytree(trained_model_dir, backward_dir)
    config = json.loads((backward_dir / "config.json").read_text())
    (backward_dir / "config.json").write_text(json.dumps({**config, "direction": "backward"}))
    return model_dir


def perplexity_json(*args: str) -> dict:
    result = runner.invoke(app, ["perplexity", *args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_a_model_with_two_directions_is_measured_as_their_sentence_mixture(two_direction_model_dir, tmp_path):
    texts = ENGLISH[:4] + CHINESE[:4]
    text = str(write_lines(tmp_path / "text.txt", texts))
    model = str(two_direction_model_dir)
    report = perplexity_json(model, text)
    forward, backward = perplexity_json(model, text, "--direction", "forward"), perplexity_json(model, text, "--direction", "backward")
    assert report["direction"] == "both"
    assert report["forward"]["logprob"] == pytest.approx(forward["logprob"], abs=1e-6)
    assert report["backward"]["logprob"] == pytest.approx(backward["logprob"], abs=1e-6)
    assert forward["logprob"] != pytest.approx(backward["logprob"], abs=1e-3)  # the backward model reads right to left
    lm = load_model_dir(two_direction_model_dir)
    backward_lm = load_model_dir(two_direction_model_dir / "backward")
    per_sentence = zip(SentenceScorer(lm).score(texts), SentenceScorer(backward_lm).score(texts))
    mixed = sum(math.log(0.5 * math.exp(f) + 0.5 * math.exp(b)) for f, b in per_sentence)
    assert report["logprob"] == pytest.approx(mixed, abs=1e-6)
    assert report["tokens"] == forward["tokens"] and report["ppl_char"] == pytest.approx(math.exp(-mixed / report["characters"]))
    assert report["network"] == forward["network"] and report["ngram"] == forward["ngram"]  # the forward model's parts


def test_both_directions_of_a_forward_only_model_is_one_line(trained_model_dir, tmp_path):
    text = str(write_lines(tmp_path / "text.txt", ENGLISH[:2]))
    result = runner.invoke(app, ["perplexity", str(trained_model_dir), text, "--direction", "both"])
    assert result.exit_code == 1 and result.stderr.count("\n") == 1
    assert "no backward model" in result.stderr and "--direction both needs one" in result.stderr
    result = runner.invoke(app, ["perplexity", str(trained_model_dir), text, "--direction", "sideways"])
    assert result.exit_code == 2 and "--direction must be auto, forward, backward or both" in result.stderr
