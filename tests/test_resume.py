"""What a run leaves behind and what a new run or a resume may do with it (lm.resume, lm.schedule,
lm.metrics_log): stale data, changed options, the checkpoint after a finished run, the warm-up of a
short run, the time-following schedule, a partial metrics line, and what config.json records."""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from conftest import CORPUS, TINY_MODEL, tiny_train_config, write_lines
from lm.launch import run
from lm.metrics_log import append_metrics, read_metrics
from lm.schedule import lr_at, plan_warmup
from lm.session import TrainConfig, TrainingError, TrainState
from lm.tokenizer import TokenizerConfig
from pipeline.cli import app

VOCAB_SIZE = 100


def config(**overrides) -> TrainConfig:
    return tiny_train_config(**{"epochs": 2, "batch_tokens": 128, "device": "cpu", **overrides})


def train(out: Path, corpus: Path, train_config: TrainConfig | None = None, model: dict | None = None,
          **kwargs) -> TrainState:
    return run([corpus], out, model or TINY_MODEL, TokenizerConfig(vocab_size=VOCAB_SIZE), train_config or config(),
               show_progress=False, **kwargs)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_lines(tmp_path_factory.mktemp("corpus") / "corpus.txt", CORPUS, repeat=2)


def test_a_fresh_run_refuses_the_data_of_a_run_that_died_before_its_first_checkpoint(tmp_path, corpus):
    """It used to train on the old corpus, tokenizer and direction without a word."""
    out = tmp_path / "lm"
    (out / "train").mkdir(parents=True)
    (out / "train" / "statistics.json").write_text("{}")
    other = write_lines(tmp_path / "other.txt", CORPUS[::-1])
    with pytest.raises(TrainingError, match=r"lm/train: left by an earlier run that stopped before its first "
                                            r"checkpoint .*remove that folder to start afresh, or pass --resume"):
        train(out, other)
    assert sorted(p.name for p in (out / "train").iterdir()) == ["statistics.json"]


def test_resume_refuses_options_that_change_what_is_trained(tmp_path, corpus):
    out = tmp_path / "lm"
    train(out, corpus, config(keep_checkpoint=True, epochs=1))
    with pytest.raises(TrainingError, match=r"--resume with other options than the run started with "
                                            r"\(lr: 0.01 then, 0.02 now; reverse: False then, True now\)"):
        train(out, corpus, config(keep_checkpoint=True, epochs=2, lr=0.02, reverse=True), resume=True)
    other = write_lines(tmp_path / "other.txt", CORPUS[::-1])
    with pytest.raises(TrainingError, match=r"corpus: \[.*corpus.txt'\] then, \[.*other.txt'\] now"):
        train(out, other, config(keep_checkpoint=True, epochs=2), resume=True)
    state = train(out, corpus, config(keep_checkpoint=True, epochs=2, max_minutes=30.0), resume=True)
    assert state.finished and state.epoch == 1  # other limits are accepted (the run had finished: nothing to do)


def test_a_run_from_before_weight_averaging_resumes_without_it(tmp_path, corpus):
    """Its run.json has no average_power: it trained without an average, and resumes only that way."""
    out = tmp_path / "lm"
    train(out, corpus, config(keep_checkpoint=True, epochs=1))
    run_file = out / "train" / "run.json"
    run_file.write_text(json.dumps({k: v for k, v in json.loads(run_file.read_text()).items() if k != "average_power"}))
    with pytest.raises(TrainingError, match=r"average_power: 0.0 then, 7.0 now"):
        train(out, corpus, config(keep_checkpoint=True, epochs=2, average_power=7.0), resume=True)
    state = train(out, corpus, config(keep_checkpoint=True, epochs=2), resume=True)
    assert state.finished and state.epoch == 1  # accepted (the run had finished: nothing to do)


def test_a_run_from_before_layer_dropout_resumes_with_the_options_it_was_given(tmp_path, corpus):
    """Its run.json's model settings have no layer_dropout: not giving one now is giving the same options."""
    out = tmp_path / "lm"
    train(out, corpus, config(keep_checkpoint=True, epochs=1))
    run_file = out / "train" / "run.json"
    recorded = json.loads(run_file.read_text())
    del recorded["model"]["layer_dropout"]
    model = {k: v for k, v in TINY_MODEL.items() if k != "layer_dropout"}
    run_file.write_text(json.dumps(recorded))
    with pytest.raises(TrainingError, match=r"model: .* then, .*'layer_dropout': 0.1.* now"):
        train(out, corpus, config(keep_checkpoint=True, epochs=2), model={**model, "layer_dropout": 0.1}, resume=True)
    state = train(out, corpus, config(keep_checkpoint=True, epochs=2), model=model, resume=True)
    assert state.finished and state.epoch == 1  # accepted (the run had finished: nothing to do)


def test_a_finished_run_removes_its_checkpoint_and_a_resume_changes_nothing(tmp_path, corpus, caplog):
    out = tmp_path / "lm"
    with caplog.at_level(logging.INFO, logger="lm.resume"):
        state = train(out, corpus)
    assert state.finished
    assert not (out / "train" / "last.pt").exists()
    assert any("removed the resumable checkpoint" in r.getMessage() for r in caplog.records)
    files = {p: p.read_bytes() for p in [out / "model.pt", out / "config.json", out / "metrics.jsonl"]}
    again = train(out, corpus, resume=True)
    assert (again.step, again.finished) == (state.step, True)
    assert {p: p.read_bytes() for p in files} == files
    with pytest.raises(TrainingError, match="holds an earlier training run"):
        train(out, corpus)


def test_keep_checkpoint_keeps_it(tmp_path, corpus):
    train(tmp_path / "lm", corpus, config(keep_checkpoint=True))
    assert (tmp_path / "lm" / "train" / "last.pt").is_file()


def test_a_warm_up_longer_than_the_run_is_shortened_and_reported_once(tmp_path, corpus, caplog):
    with caplog.at_level(logging.WARNING, logger="lm.schedule"):
        state = train(tmp_path / "lm", corpus, config(warmup_steps=100, keep_checkpoint=True))
    assert state.warmup_steps == max(1, state.total_steps // 10) < 100
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "--warmup-steps 100 is longer" in warnings[0]
    rows = read_metrics(tmp_path / "lm")
    peak = config().lr
    assert rows[0]["lr"] > 0.5 * peak  # the rate reached its peak and decays from there
    assert json.loads((tmp_path / "lm" / "config.json").read_text())["training"]["warmup_steps_used"] == state.warmup_steps


def test_plan_warmup_keeps_a_warm_up_that_fits():
    assert plan_warmup(100, 5000) == 100
    assert plan_warmup(100, 61) == 6
    assert plan_warmup(5, 3) == 1


def schedule_session(train_config: TrainConfig, step: int, elapsed_s: float):
    state = TrainState(step=step, total_steps=1000, warmup_steps=10)
    return SimpleNamespace(config=train_config, state=state, started_at=time.monotonic() - elapsed_s)


def test_with_the_default_time_budget_the_learning_rate_follows_the_clock():
    """The default --max-minutes makes the schedule (and so the weights) depend on the machine's speed."""
    default = TrainConfig()
    assert default.max_minutes  # the default path has a budget
    early, late = (lr_at(schedule_session(default, step=100, elapsed_s=s)) for s in (60.0, 45 * 60.0))
    assert early > late  # the same step, later on the clock: a lower rate
    half = lr_at(schedule_session(replace(default, max_minutes=10.0), step=100, elapsed_s=300.0))
    expected = default.lr * (default.min_lr_ratio + (1 - default.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert half == pytest.approx(expected)


def test_without_a_time_budget_the_learning_rate_follows_the_steps_only():
    steps_only = replace(TrainConfig(), max_minutes=None)
    rates = {lr_at(schedule_session(steps_only, step=500, elapsed_s=s)) for s in (1.0, 3600.0)}
    assert len(rates) == 1


def test_a_partial_metrics_line_is_skipped_by_readers_and_replaced_by_the_next_row(tmp_path):
    append_metrics(tmp_path, {"epoch": 1})
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 2, "val')  # killed mid-write
    assert read_metrics(tmp_path) == [{"epoch": 1}]
    append_metrics(tmp_path, {"epoch": 2})
    assert (tmp_path / "metrics.jsonl").read_text() == '{"epoch": 1}\n{"epoch": 2}\n'


def test_config_records_version_command_line_time_and_absolute_corpus_paths(tmp_path, corpus, monkeypatch):
    monkeypatch.chdir(corpus.parent)
    out = tmp_path / "lm"
    arguments = [
        "train", corpus.name, "-o", str(out), "--vocab-size", str(VOCAB_SIZE), "--embedding-dim", "16",
        "--hidden-dim", "16", "--num-layers", "1", "--epochs", "1", "--batch-tokens", "128", "--threads", "1",
        "--no-progress", "--direction", "forward", "--max-minutes", "0", "--ngram-order", "0", "--valid-fraction", "0.2",
    ]
    monkeypatch.setattr(sys, "argv", ["asr-rescore", *arguments])  # what the console script sees
    result = CliRunner().invoke(app, arguments)
    assert result.exit_code == 0, result.output
    recorded = json.loads((out / "config.json").read_text())
    assert recorded["package_version"] and recorded["created"].endswith("+00:00")
    assert recorded["command_line"] == ["asr-rescore", *arguments]
    assert recorded["corpus_files"] == recorded["corpus"]["files"] == [str(corpus.resolve())]


def test_metrics_record_the_training_loss_every_50_steps(tmp_path, corpus):
    out = tmp_path / "lm"
    state = train(out, corpus, config(epochs=30, batch_tokens=64))
    rows = read_metrics(out, "train")
    assert state.step >= 100
    assert [row["step"] for row in rows] == list(range(50, state.step + 1, 50))
    assert all(math.isfinite(row["train_loss"]) and row["lr"] > 0 for row in rows)
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]  # it learns
    assert len(read_metrics(out, "valid")) == state.epoch
