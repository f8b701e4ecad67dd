"""Model directories: round trip, missing and corrupt files, vocabulary mismatch, pickles carrying code."""

from __future__ import annotations

import builtins
import json
import os
import pickle
from pathlib import Path

import pytest
import torch

from conftest import CORPUS, make_random_model_dir
from lm.checkpoint import (
    CONFIG_FILE,
    TOKENIZER_FILE,
    WEIGHTS_FILE,
    LanguageModel,
    ModelDirError,
    load_model_dir,
    load_weights,
    save_model_dir,
)
from lm.atomic import atomic_write_bytes
from lm.model import ModelConfig, RnnLanguageModel
from lm.scorer import score_one_at_a_time
from lm.tokenizer import TokenizerConfig, train_tokenizer


@pytest.fixture
def model_dir(tmp_path, tokenizer) -> Path:
    return make_random_model_dir(tmp_path / "lm", tokenizer)


@pytest.mark.parametrize("sizes", [{}, dict(embedding_dim=16, hidden_dim=16), dict(tie_weights=False)])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_save_load_round_trip_gives_identical_scores(tmp_path, tokenizer, cell, sizes):
    torch.manual_seed(3)
    settings = dict(embedding_dim=16, hidden_dim=24, num_layers=2, dropout=0.0, cell=cell)
    config = ModelConfig(vocab_size=tokenizer.vocab_size, **{**settings, **sizes})
    model = RnnLanguageModel(config).eval()
    save_model_dir(tmp_path / "lm", model, tokenizer, {"seed": 3, "direction": "forward"})
    loaded = load_model_dir(tmp_path / "lm")
    assert loaded.model.config == config
    assert loaded.config["seed"] == 3 and loaded.direction == "forward"
    assert loaded.tokenizer.describe() == tokenizer.describe()
    assert not loaded.model.training
    if config.tie_weights:
        assert loaded.model.output_linear.weight is loaded.model.input_embedding.weight
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], value), key
    ids = tokenizer.encode(CORPUS)
    original = score_one_at_a_time(LanguageModel(model, tokenizer, tmp_path), ids)
    assert score_one_at_a_time(loaded, ids) == original


def test_tied_weights_are_stored_once(model_dir):
    state = load_weights(model_dir / WEIGHTS_FILE)
    assert "output_linear.weight" not in state
    assert "input_embedding.weight" in state


def test_config_records_model_and_tokenizer(model_dir, tokenizer):
    config = json.loads((model_dir / CONFIG_FILE).read_text())
    assert config["format_version"] == 2
    assert config["model"]["vocab_size"] == tokenizer.vocab_size
    ids = {"vocab_size": tokenizer.vocab_size, "pad_id": 0, "unk_id": 1, "bos_id": 2, "eos_id": 3}
    assert config["tokenizer_ids"] == ids


def test_bf16_weights_load_as_float32_with_close_scores(tmp_path, tokenizer):
    torch.manual_seed(0)
    model = RnnLanguageModel(ModelConfig(vocab_size=tokenizer.vocab_size, embedding_dim=16, hidden_dim=16,
                                         num_layers=1, dropout=0.0)).eval()
    save_model_dir(tmp_path / "lm", model, tokenizer, {}, weights_dtype=torch.bfloat16)
    assert all(v.dtype == torch.bfloat16 for v in load_weights(tmp_path / "lm" / WEIGHTS_FILE).values())
    loaded = load_model_dir(tmp_path / "lm")
    assert all(p.dtype == torch.float32 for p in loaded.model.parameters())
    ids = tokenizer.encode(CORPUS)
    assert score_one_at_a_time(loaded, ids) == pytest.approx(
        score_one_at_a_time(LanguageModel(model, tokenizer, tmp_path), ids), abs=0.05)


@pytest.mark.parametrize("name, message", [
    (CONFIG_FILE, "config.json: missing"),
    (TOKENIZER_FILE, "tokenizer.model: no such tokenizer file"),
    (WEIGHTS_FILE, "model.pt: missing weights file"),
])
def test_missing_file_names_it(model_dir, name, message):
    (model_dir / name).unlink()
    with pytest.raises(ModelDirError, match=message):
        load_model_dir(model_dir)


def test_missing_directory(tmp_path):
    with pytest.raises(ModelDirError, match="no_model: not a model directory"):
        load_model_dir(tmp_path / "no_model")


def test_truncated_weights_are_refused(model_dir):
    path = model_dir / WEIGHTS_FILE
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelDirError, match=r"model.pt: cannot load weights \(corrupt"):
        load_model_dir(model_dir)


def test_corrupt_config_is_refused(model_dir):
    (model_dir / CONFIG_FILE).write_text('{"format_version": 1, "model": ')
    with pytest.raises(ModelDirError, match="config.json: not valid JSON"):
        load_model_dir(model_dir)


def test_unknown_format_version_is_refused(model_dir):
    config = json.loads((model_dir / CONFIG_FILE).read_text())
    config["format_version"] = 99
    (model_dir / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(ModelDirError, match="config.json: expected format_version 1 or 2, got 99"):
        load_model_dir(model_dir)


def test_bad_model_settings_are_refused(model_dir):
    config = json.loads((model_dir / CONFIG_FILE).read_text())
    config["model"]["cell"] = "transformer"
    (model_dir / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(ModelDirError, match="config.json: bad 'model' settings"):
        load_model_dir(model_dir)


def test_weights_not_matching_config_are_refused(model_dir):
    config = json.loads((model_dir / CONFIG_FILE).read_text())
    config["model"]["hidden_dim"] = 16
    (model_dir / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(ModelDirError, match="model.pt: weights do not match config.json"):
        load_model_dir(model_dir)


def test_tokenizer_with_another_vocabulary_is_refused(model_dir, tmp_path, tokenizer):
    other = train_tokenizer(CORPUS * 5, tmp_path / "other.model", TokenizerConfig(vocab_size=100))
    assert other.vocab_size != tokenizer.vocab_size
    (model_dir / TOKENIZER_FILE).write_bytes(other.path.read_bytes())
    with pytest.raises(ModelDirError, match="tokenizer.model: tokenizer .* does not match config.json"):
        load_model_dir(model_dir)


def test_recorded_special_ids_must_match(model_dir):
    config = json.loads((model_dir / CONFIG_FILE).read_text())
    config["tokenizer_ids"]["eos_id"] = 7
    (model_dir / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(ModelDirError, match="does not match"):
        load_model_dir(model_dir)


def test_weights_that_are_not_a_state_dict_are_refused(model_dir):
    torch.save([torch.zeros(3)], model_dir / WEIGHTS_FILE)
    with pytest.raises(ModelDirError, match="model.pt: expected a state dict of tensors"):
        load_model_dir(model_dir)


class RunsShell:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


class RunsPython:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (builtins.exec, (f"open({str(self.marker)!r}, 'w').close()",))


def save_zip(payload, path: Path) -> None:
    torch.save(payload, path)


def save_legacy(payload, path: Path) -> None:
    torch.save(payload, path, _use_new_zipfile_serialization=False)


def save_raw_pickle(payload, path: Path) -> None:
    with open(path, "wb") as f:
        pickle.dump(payload, f)


def load_unsafely(path: Path, writer) -> None:
    if writer is save_raw_pickle:
        with open(path, "rb") as f:
            pickle.load(f)
    else:
        torch.load(path, weights_only=False)


@pytest.mark.parametrize("carrier", [RunsShell, RunsPython])
@pytest.mark.parametrize("writer", [save_zip, save_legacy, save_raw_pickle])
def test_pickle_carrying_code_is_refused_before_it_runs(model_dir, tmp_path, carrier, writer):
    marker = tmp_path / "MARKER"
    weights = model_dir / WEIGHTS_FILE
    state = load_weights(weights)
    state["input_embedding.weight"] = carrier(marker)
    writer(state, weights)
    with pytest.raises(ModelDirError, match=r"model.pt: cannot load weights \(refused: the file holds pickled objects"):
        load_model_dir(model_dir)
    assert not marker.exists()
    # The payload is live: an unsafe load runs it. This shows the check above could have failed.
    load_unsafely(weights, writer)
    assert marker.exists()


def test_atomic_write_interrupted_mid_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "last.pt"
    path.write_bytes(b"old contents")

    def write_then_die(f):
        f.write(b"new cont")
        raise KeyboardInterrupt  # as if killed half way through

    with pytest.raises(KeyboardInterrupt):
        atomic_write_bytes(path, write_then_die)
    assert path.read_bytes() == b"old contents"
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left behind
    atomic_write_bytes(path, lambda f: f.write(b"new contents"))
    assert path.read_bytes() == b"new contents"
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_interrupted_weights_write_keeps_a_loadable_model_dir(model_dir, tokenizer, monkeypatch):
    before = load_weights(model_dir / WEIGHTS_FILE)
    model = RnnLanguageModel(ModelConfig(vocab_size=tokenizer.vocab_size, embedding_dim=24, hidden_dim=32,
                                         num_layers=2, dropout=0.0))

    def failing_save(obj, f):
        f.write(b"PK\x03\x04 partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        save_model_dir(model_dir, model, tokenizer, {})
    monkeypatch.undo()
    loaded = load_model_dir(model_dir)
    for key, value in before.items():
        assert torch.equal(loaded.model.state_dict()[key], value)
