"""Minimum-Bayes-risk choice: the fewest expected errors under the n-best posterior."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.mbr import edit_distances, mbr_index, pairwise_distances
from pipeline.metrics import edit_counts
from pipeline.rescore import Rescorer, Weights
from test_cli import write_json
from test_rescore import TableScorer

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("restore_logging")


def test_vectorised_edit_distances_equal_the_dynamic_programme():
    rng = random.Random(0)
    for _ in range(200):
        hyp = [rng.randint(0, 4) for _ in range(rng.randint(0, 8))]
        others = [[rng.randint(0, 4) for _ in range(rng.randint(0, 8))] for _ in range(6)]
        padded = np.full((6, max(1, max(map(len, others)))), -1)
        for row, seq in enumerate(others):
            padded[row, :len(seq)] = seq
        distances = edit_distances(hyp, padded, np.array([len(seq) for seq in others]))
        assert list(distances) == [edit_counts(seq, hyp).errors for seq in others]


def test_mbr_picks_the_known_minimiser_of_expected_errors():
    """The most probable hypothesis is an outlier; three close variants share the rest of the mass."""
    units = [list("wxyz"), list("abcd"), list("abce"), list("abcf")]
    totals = [0.0, -0.3, -0.3, -0.3]
    posterior = np.exp(totals) / np.exp(totals).sum()
    risks = pairwise_distances(units) @ posterior  # wxyz: 4 x 0.78 = 3.1; abcd: 4 x 0.35 + 2 x 0.22 = 1.8
    assert int(np.argmin(risks)) == 1 and np.argmax(totals) == 0  # MBR and the highest total disagree
    assert mbr_index(units, totals, temperature=1.0) == 1  # the first of the three tied variants
    assert mbr_index(units, totals, temperature=1e-3) == 0  # a cold posterior: the highest total
    assert mbr_index([], [], 1.0) == -1


def test_rescorer_with_mbr_changes_best_but_not_the_ranking():
    texts = ["w x y z", "a b c d", "a b c e", "a b c f"]
    scores = [0.0, -0.3, -0.3, -0.3]
    plain = Rescorer(TableScorer({}), Weights(lm_weight=0.0)).rescore(texts, scores)
    mbr = Rescorer(TableScorer({}), Weights(lm_weight=0.0, decision="mbr")).rescore(texts, scores)
    assert plain.best == "w x y z" and mbr.best == "a b c d"
    assert mbr.ranks == plain.ranks and mbr.total_scores == plain.total_scores


def test_tune_with_mbr_records_the_decision_and_rescore_applies_it(trained_model_dir, tmp_path):
    source = write_json(tmp_path / "dev.json")
    weights = tmp_path / "w.json"
    result = runner.invoke(app, ["tune", str(source), "-m", str(trained_model_dir), "-o", str(weights), "--decision", "mbr"])
    assert result.exit_code == 0, result.output
    tuned = json.loads(weights.read_text())
    assert tuned["weights"]["decision"] == "mbr" and tuned["weights"]["mbr_temperature"] > 0
    assert tuned["dev"]["tuned"] <= tuned["dev"]["tuned_highest_total"]
    applied = runner.invoke(app, ["rescore", str(source), "-m", str(trained_model_dir), "--weights", str(weights)])
    assert applied.exit_code == 0, applied.output
    forced = runner.invoke(app, ["rescore", str(source), "-m", str(trained_model_dir), "--weights", str(weights),
                                 "--decision", "map"])
    assert forced.exit_code == 0, forced.output
    for utterance in json.loads(forced.stdout)["utterances"]:
        assert utterance["best"] == next(h["text"] for h in utterance["hypotheses"] if h["rank"] == 1)


def test_a_bad_decision_is_a_usage_error(trained_model_dir, tmp_path):
    result = runner.invoke(app, ["rescore", str(write_json(tmp_path / "in.json")), "-m", str(trained_model_dir),
                                 "--decision", "vote"])
    assert result.exit_code == 2 and "--decision must be one of map, mbr, got 'vote'" in result.stderr
