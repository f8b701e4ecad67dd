"""Regularisation chosen by the corpus: stronger with few training tokens per network weight."""

import json
import types
import typing

import pytest
import torch

from conftest import tiny_train_config
from lm import budget, regularisation, train
from lm.budget import BUDGET_FILE, TIMED_STEPS, epochs_in_budget, planned_epochs, time_steps
from lm.distributed import World
from lm.launch import run
from lm.model import DROPOUTS
from lm.regularisation import (
    LARGE_CORPUS, MAX_EPOCHS_FOR_LARGE_CORPUS_SETTINGS, MIN_EPOCHS_FOR_SMALL_CORPUS, SMALL_CORPUS, architecture,
    count_weights, resolve_regularisation, strength_for_epochs,
)
from lm.session import TrainConfig
from lm.tokenizer import TokenizerConfig
from pipeline import cli

ARCHITECTURE = dict(embedding_dim=16, hidden_dim=24, num_layers=2, cell="lstm", tie_weights=True)


def test_weights_are_counted_once_where_the_embedding_and_output_layer_share_them():
    vocab, embedding, hidden = 50, 16, 24
    lstm = 4 * hidden * (embedding + hidden + 2) + 4 * hidden * (hidden + hidden + 2)
    tied = vocab * embedding + lstm + hidden * embedding + embedding + vocab  # projection 24 -> 16, output bias
    assert count_weights(architecture(ARCHITECTURE, vocab)) == tied
    untied = vocab * embedding + lstm + vocab * hidden + vocab
    assert count_weights(architecture({**ARCHITECTURE, "tie_weights": False}, vocab)) == untied


def threshold_tokens(vocab: int = 50) -> float:
    return regularisation.SMALL_CORPUS_TOKENS_PER_WEIGHT * count_weights(architecture(ARCHITECTURE, vocab))


def test_a_corpus_under_the_threshold_gets_the_small_corpus_settings_and_one_at_it_the_usual_ones():
    small, note = resolve_regularisation(ARCHITECTURE, int(threshold_tokens()) - 1, 50)
    assert {name: small[name] for name in SMALL_CORPUS} == SMALL_CORPUS
    assert "a small corpus" in note and "--weight-dropout 0.3" in note
    large, note = resolve_regularisation(ARCHITECTURE, int(threshold_tokens()) + 1, 50)
    assert {name: large[name] for name in LARGE_CORPUS} == LARGE_CORPUS
    assert "at least 0.12" in note and "small" not in note


def test_a_given_setting_is_kept_and_only_the_unset_ones_follow_the_corpus():
    settings, note = resolve_regularisation({**ARCHITECTURE, "dropout": 0.1, "weight_dropout": None}, 10, 50)
    assert (settings["dropout"], settings["weight_dropout"], settings["embedding_dropout"]) == (0.1, 0.3, 0.1)
    assert settings["layer_dropout"] == 0.25 and "--dropout " not in note and "--layer-dropout 0.25" in note
    given = {**ARCHITECTURE, "dropout": 0.1, "weight_dropout": 0.0, "embedding_dropout": 0.0, "layer_dropout": 0.1}
    assert resolve_regularisation(given, 10, 50) == (given, None)


def test_a_one_layer_network_is_not_told_of_dropout_between_layers_it_does_not_have():
    settings, note = resolve_regularisation({**ARCHITECTURE, "num_layers": 1}, 10, 50)
    assert "--layer-dropout" not in note and "--dropout 0.5" in note
    stacked_settings, stacked_note = resolve_regularisation(ARCHITECTURE, 10, 50)
    assert "--layer-dropout 0.25" in stacked_note
    assert settings["layer_dropout"] == stacked_settings["layer_dropout"]  # recorded all the same


@pytest.mark.parametrize("small", [True, False])
def test_training_records_the_settings_the_corpus_chose(tmp_path, corpus_file, monkeypatch, caplog, small):
    # the tiny corpus has about one token per weight of this network: the threshold decides which it is
    monkeypatch.setattr(regularisation, "SMALL_CORPUS_TOKENS_PER_WEIGHT", 100.0 if small else 0.01)
    monkeypatch.setattr(regularisation, "MIN_EPOCHS_FOR_SMALL_CORPUS", 1)  # its one epoch is enough
    architecture = dict(embedding_dim=16, hidden_dim=16, num_layers=1)
    with caplog.at_level("INFO"):
        run([corpus_file], tmp_path / "lm", architecture, TokenizerConfig(vocab_size=120), tiny_train_config(epochs=1),
            show_progress=False)
    recorded = json.loads((tmp_path / "lm" / "config.json").read_text())["model"]
    expected = SMALL_CORPUS if small else LARGE_CORPUS
    assert {name: recorded[name] for name in expected} == expected
    assert "per network weight" in caplog.text


def test_a_small_corpus_gets_the_strong_settings_only_when_the_budget_allows_the_epochs_they_need():
    asked = []

    def epochs(settings):
        asked.append({name: settings[name] for name in SMALL_CORPUS})
        return available

    available = MIN_EPOCHS_FOR_SMALL_CORPUS
    settings, _ = resolve_regularisation(ARCHITECTURE, 10, 50, epochs)
    assert {name: settings[name] for name in SMALL_CORPUS} == SMALL_CORPUS
    assert asked == [SMALL_CORPUS]  # the budget is timed with the settings it would train with
    available = MAX_EPOCHS_FOR_LARGE_CORPUS_SETTINGS
    settings, note = resolve_regularisation(ARCHITECTURE, 10, 50, epochs)
    assert {name: settings[name] for name in LARGE_CORPUS} == LARGE_CORPUS
    assert f"about {available:.1f} epochs" in note and "--dropout 0.4" in note and "large-corpus settings" in note


def test_a_budget_between_the_two_gets_settings_in_proportion():
    halfway = (MAX_EPOCHS_FOR_LARGE_CORPUS_SETTINGS + MIN_EPOCHS_FOR_SMALL_CORPUS) / 2
    settings, note = resolve_regularisation(ARCHITECTURE, 10, 50, lambda settings: halfway)
    expected = {name: round((LARGE_CORPUS[name] + SMALL_CORPUS[name]) / 2, 2) for name in SMALL_CORPUS}
    assert {name: settings[name] for name in SMALL_CORPUS} == expected
    assert "50% of the way" in note and f"--weight-dropout {expected['weight_dropout']:g}" in note
    # more epochs, stronger settings; never beyond either end
    low, high = MAX_EPOCHS_FOR_LARGE_CORPUS_SETTINGS, MIN_EPOCHS_FOR_SMALL_CORPUS
    inside = [low + (high - low) * k / 4 for k in (0.1, 1, 2, 3, 3.9)]
    values = [strength_for_epochs(e) for e in (0, low - 1, low, *inside, high, 2 * high)]
    assert values[:3] == [0.0, 0.0, 0.0] and values[-2:] == [1.0, 1.0]
    assert 0.0 < values[3] < values[4] < values[5] < values[6] < values[7] < 1.0
    assert values[5] == pytest.approx(0.5)


def test_the_budget_is_not_timed_where_the_corpus_or_the_caller_decides():
    def never(settings):
        raise AssertionError("timed the budget")

    resolve_regularisation(ARCHITECTURE, int(threshold_tokens()) + 1, 50, never)  # a large corpus
    given = {**ARCHITECTURE, "dropout": 0.5, "weight_dropout": 0.3, "embedding_dropout": 0.1, "layer_dropout": 0.25}
    assert resolve_regularisation(given, 10, 50, never) == (given, None)


def test_the_epochs_in_a_budget_are_the_budget_over_an_epochs_time_and_at_most_the_epochs_asked():
    assert epochs_in_budget(0.5, 200, 50.0, 30) == pytest.approx(30.0)  # 100 s an epoch: 30 of 30 fit
    assert epochs_in_budget(3.0, 200, 50.0, 30) == pytest.approx(5.0)  # 600 s an epoch
    assert epochs_in_budget(3.0, 200, None, 30) == 30.0  # no budget: the epochs asked


def test_the_budget_is_measured_once_and_a_resumed_run_reads_it(tmp_path):
    config = TrainConfig(max_minutes=10.0, epochs=30)
    measured = []

    def measure():
        measured.append(1)
        return 3.0

    assert planned_epochs(tmp_path, measure, 100, config, is_main=True) == pytest.approx(2.0)
    assert planned_epochs(tmp_path, measure, 100, config, is_main=True) == pytest.approx(2.0)
    assert len(measured) == 1
    assert json.loads((tmp_path / BUDGET_FILE).read_text())["seconds_per_step"] == 3.0
    longer = TrainConfig(max_minutes=40.0, epochs=30)  # another budget: measured again, not read
    assert planned_epochs(tmp_path, measure, 100, longer, is_main=True) == pytest.approx(8.0)
    (tmp_path / BUDGET_FILE).write_text("{not json")
    assert planned_epochs(tmp_path, measure, 100, longer, is_main=True) == pytest.approx(8.0)
    assert len(measured) == 3
    assert planned_epochs(tmp_path, lambda: 1 / 0, 100, TrainConfig(max_minutes=None, epochs=7), True) == 7.0


def test_the_probe_times_steps_whose_batch_shapes_are_already_set_up(monkeypatch):
    # a step pays 1 s the first time it meets a shape (kernel set-up) and 0.25 s after: training meets each
    # shape once and then every epoch, so the probe must report 0.25, not a mean of first meetings
    clock, seen = [0.0], set()

    def step(batch):
        shape = tuple(batch.shape)
        clock[0] += 0.25 if shape in seen else 1.0
        seen.add(shape)

    monkeypatch.setattr(budget, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))
    batches = [torch.zeros(n + 1, 8) for n in range(TIMED_STEPS + 3)]  # every batch a new shape
    assert time_steps(step, batches, World()) == pytest.approx(0.25)
    assert len(seen) == TIMED_STEPS + 1  # the batches after those timed are never run


@pytest.mark.parametrize("slow", [True, False])
def test_training_on_a_small_corpus_times_its_steps_and_drops_the_strong_settings_on_a_slow_machine(
    tmp_path, corpus_file, monkeypatch, caplog, slow
):
    monkeypatch.setattr(regularisation, "SMALL_CORPUS_TOKENS_PER_WEIGHT", 100.0)  # the tiny corpus is small
    monkeypatch.setattr(regularisation, "MIN_EPOCHS_FOR_SMALL_CORPUS", 1)  # and its one epoch is enough
    if slow:  # a step of an hour: not one epoch fits in the budget
        monkeypatch.setattr(train, "time_steps", lambda step, batches, world: 3600.0)
    architecture = dict(embedding_dim=16, hidden_dim=16, num_layers=1)
    with caplog.at_level("INFO"):
        run([corpus_file], tmp_path / "lm", architecture, TokenizerConfig(vocab_size=120),
            tiny_train_config(epochs=1, max_minutes=5.0), show_progress=False)
    recorded = json.loads((tmp_path / "lm" / "config.json").read_text())["model"]
    expected = LARGE_CORPUS if slow else SMALL_CORPUS
    assert {name: recorded[name] for name in expected} == expected
    budget = json.loads((tmp_path / "lm" / "train" / BUDGET_FILE).read_text())
    assert budget["seconds_per_step"] == 3600.0 if slow else 0 < budget["seconds_per_step"] < 60
    assert ("the budget allows about" in caplog.text) == slow


def test_the_train_commands_help_states_the_defaults_this_module_chooses():
    """The CLI names the defaults in its help without importing torch; this keeps the two the same."""
    hints = typing.get_type_hints(cli.train, include_extras=True)
    for name in DROPOUTS:
        help_text = next(m.help for m in hints[name].__metadata__ if hasattr(m, "help"))
        assert f"default: {LARGE_CORPUS[name]:g}, or {SMALL_CORPUS[name]:g} for a small corpus" in help_text, name
        if name in ("dropout", "layer_dropout"):
            assert f"with {MIN_EPOCHS_FOR_SMALL_CORPUS} epochs in the budget" in help_text, name
