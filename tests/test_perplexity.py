"""``asr-rescore perplexity``: the mixture and each of its parts, per token, character and word."""

from __future__ import annotations

import json
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
    assert set(report["ngram"]) == set(report["network"]) == {k for k in report if k not in ("network", "ngram")}
    assert report["ngram"]["logprob"] != report["network"]["logprob"] != report["logprob"]
    assert report["ppl_word"] > 1.0


def test_ppl_word_is_null_for_text_without_spaces(trained_model_dir, tmp_path):
    text = write_lines(tmp_path / "zh.txt", CHINESE[:4])
    result = runner.invoke(app, ["perplexity", str(trained_model_dir), str(text), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["ppl_word"] is None and report["network"]["ppl_word"] is None
    assert report["ppl_char"] > 1.0
