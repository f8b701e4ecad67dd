"""Shared fixtures: tiny corpora written in the test, and tiny models trained on them in seconds."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from lm.checkpoint import LanguageModel, load_model_dir, save_model_dir
from lm.model import ModelConfig, RnnLanguageModel
from lm.tokenizer import Tokenizer, TokenizerConfig, train_tokenizer
from lm.train import TrainConfig, run

torch.set_num_threads(1)

ENGLISH = [
    "in the beginning god created the heaven and the earth",
    "and the earth was without form and void",
    "and god said let there be light and there was light",
    "and god saw the light that it was good",
    "and god divided the light from the darkness",
    "and god called the light day and the darkness he called night",
    "history repeats itself again and again",
    "the history of the world is long",
]
CHINESE = [
    "历史总是不断重演",
    "他的工作很有意义",
    "他在研究生命的起源",
    "中国人民解放军",
    "新华社北京一月一日电",
    "经济发展速度很快",
    "我们的生活越来越好",
    "历史告诉我们",
]
CORPUS = ENGLISH + CHINESE


def write_lines(path: Path, lines: list[str], repeat: int = 1) -> Path:
    path.write_text("\n".join(lines * repeat) + "\n", encoding="utf-8")
    return path


def tiny_train_config(**overrides) -> TrainConfig:
    """Settings that train on the tiny corpus in a few seconds on one thread (it learns, not memorises)."""
    settings = dict(epochs=12, max_minutes=None, batch_tokens=512, lr=1e-2, warmup_steps=5, threads=1,
                    precision="fp32", valid_fraction=0.1, patience=100, checkpoint_minutes=0.0)
    settings.update(overrides)
    return TrainConfig(**settings)


TINY_MODEL = dict(embedding_dim=32, hidden_dim=32, num_layers=1, dropout=0.0)


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory) -> Path:
    return write_lines(tmp_path_factory.mktemp("corpus") / "corpus.txt", CORPUS, repeat=20)


@pytest.fixture(scope="session")
def trained_model_dir(tmp_path_factory, corpus_file) -> Path:
    """A tiny bilingual LSTM trained on the tiny corpus (it prefers corpus sentences to garbled ones)."""
    out = tmp_path_factory.mktemp("model") / "lm"
    run([corpus_file], out, TINY_MODEL, TokenizerConfig(vocab_size=120), tiny_train_config(), show_progress=False)
    return out


@pytest.fixture(scope="session")
def trained_lm(trained_model_dir) -> LanguageModel:
    return load_model_dir(trained_model_dir)


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory) -> Tokenizer:
    path = tmp_path_factory.mktemp("tok") / "tokenizer.model"
    return train_tokenizer(CORPUS * 5, path, TokenizerConfig(vocab_size=120))


def make_random_model_dir(path: Path, tokenizer: Tokenizer, cell: str = "lstm", seed: int = 0, **sizes) -> Path:
    """A model directory with random weights (for exactness tests that need no training)."""
    torch.manual_seed(seed)
    settings = dict(embedding_dim=24, hidden_dim=32, num_layers=2, dropout=0.0, cell=cell)
    settings.update(sizes)
    model = RnnLanguageModel(ModelConfig(vocab_size=tokenizer.vocab_size, **settings))
    save_model_dir(path, model, tokenizer, {"seed": seed})
    return path


@pytest.fixture(params=["lstm", "gru", "rnn"])
def random_lm(request, tmp_path, tokenizer) -> LanguageModel:
    return load_model_dir(make_random_model_dir(tmp_path / request.param, tokenizer, cell=request.param))


@pytest.fixture
def restore_logging(monkeypatch):
    """The CLI reconfigures the root logger onto CliRunner's stream, and --debug sets an environment
    variable for the process; put both back after each test."""
    monkeypatch.setenv("ASR_RESCORE_DEBUG", "0")
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
