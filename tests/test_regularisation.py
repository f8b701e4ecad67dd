"""Regularisation chosen by the corpus: stronger with few training tokens per network weight."""

import json

import pytest

from conftest import tiny_train_config
from lm import regularisation
from lm.launch import run
from lm.regularisation import LARGE_CORPUS, SMALL_CORPUS, count_weights, resolve_regularisation
from lm.tokenizer import TokenizerConfig

ARCHITECTURE = dict(embedding_dim=16, hidden_dim=24, num_layers=2, cell="lstm", tie_weights=True)


def test_weights_are_counted_once_where_the_embedding_and_output_layer_share_them():
    vocab, embedding, hidden = 50, 16, 24
    lstm = 4 * hidden * (embedding + hidden + 2) + 4 * hidden * (hidden + hidden + 2)
    tied = vocab * embedding + lstm + hidden * embedding + embedding + vocab  # projection 24 -> 16, output bias
    assert count_weights(ARCHITECTURE, vocab) == tied
    untied = vocab * embedding + lstm + vocab * hidden + vocab
    assert count_weights({**ARCHITECTURE, "tie_weights": False}, vocab) == untied


def threshold_tokens(vocab: int = 50) -> float:
    return regularisation.SMALL_CORPUS_TOKENS_PER_WEIGHT * count_weights(ARCHITECTURE, vocab)


def test_a_corpus_under_the_threshold_gets_the_small_corpus_settings_and_one_at_it_the_usual_ones():
    small, note = resolve_regularisation(ARCHITECTURE, int(threshold_tokens()) - 1, 50)
    assert {name: small[name] for name in SMALL_CORPUS} == SMALL_CORPUS
    assert "a small corpus" in note and "--weight-dropout 0.3" in note
    large, note = resolve_regularisation(ARCHITECTURE, int(threshold_tokens()) + 1, 50)
    assert {name: large[name] for name in LARGE_CORPUS} == LARGE_CORPUS
    assert "at least 0.06" in note and "small" not in note


def test_a_given_setting_is_kept_and_only_the_unset_ones_follow_the_corpus():
    settings, note = resolve_regularisation({**ARCHITECTURE, "dropout": 0.1, "weight_dropout": None}, 10, 50)
    assert (settings["dropout"], settings["weight_dropout"], settings["embedding_dropout"]) == (0.1, 0.3, 0.1)
    assert "--dropout" not in note
    given = {**ARCHITECTURE, "dropout": 0.1, "weight_dropout": 0.0, "embedding_dropout": 0.0}
    assert resolve_regularisation(given, 10, 50) == (given, None)


@pytest.mark.parametrize("small", [True, False])
def test_training_records_the_settings_the_corpus_chose(tmp_path, corpus_file, monkeypatch, caplog, small):
    # the tiny corpus has about one token per weight of this network: the threshold decides which it is
    monkeypatch.setattr(regularisation, "SMALL_CORPUS_TOKENS_PER_WEIGHT", 100.0 if small else 0.01)
    architecture = dict(embedding_dim=16, hidden_dim=16, num_layers=1)
    with caplog.at_level("INFO"):
        run([corpus_file], tmp_path / "lm", architecture, TokenizerConfig(vocab_size=120), tiny_train_config(epochs=1),
            show_progress=False)
    recorded = json.loads((tmp_path / "lm" / "config.json").read_text())["model"]
    expected = SMALL_CORPUS if small else LARGE_CORPUS
    assert {name: recorded[name] for name in expected} == expected
    assert "per network weight" in caplog.text
