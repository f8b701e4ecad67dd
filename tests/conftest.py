"""Shared fixtures: tiny corpora written in the test, and tiny models trained on them in seconds."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from lm.checkpoint import LanguageModel, load_model_dir, save_model_dir
from lm.model import ModelConfig, RnnLanguageModel
from lm.ngram import NgramModel
from lm.tokenizer import Tokenizer, TokenizerConfig, train_tokenizer
from lm.launch import run
from lm.session import TrainConfig

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
    """Settings that train on the tiny corpus in a few seconds on one thread (it learns, not memorises).

    No n-gram: these runs test the network; ``trained_model_dir`` and test_ngram.py add one.
    """
    settings = dict(epochs=12, max_minutes=None, batch_tokens=512, lr=1e-2, warmup_steps=5, threads=1,
                    precision="fp32", valid_fraction=0.1, patience=100, checkpoint_minutes=0.0, ngram_order=0)
    settings.update(overrides)
    return TrainConfig(**settings)


TINY_MODEL = dict(embedding_dim=32, hidden_dim=32, num_layers=1, dropout=0.0, weight_dropout=0.0, embedding_dropout=0.0,
                  layer_dropout=0.0)


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory) -> Path:
    return write_lines(tmp_path_factory.mktemp("corpus") / "corpus.txt", CORPUS, repeat=20)


@pytest.fixture(scope="session")
def trained_model_dir(tmp_path_factory, corpus_file) -> Path:
    """A tiny bilingual LSTM mixed with a trigram, trained on the tiny corpus (it prefers corpus sentences to
    garbled ones). Everything that scores with it goes through the n-gram mixture."""
    out = tmp_path_factory.mktemp("model") / "lm"
    config = tiny_train_config(ngram_order=3)
    run([corpus_file], out, TINY_MODEL, TokenizerConfig(vocab_size=120), config, show_progress=False)
    return out


@pytest.fixture(scope="session")
def trained_lm(trained_model_dir) -> LanguageModel:
    return load_model_dir(trained_model_dir)


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory) -> Tokenizer:
    path = tmp_path_factory.mktemp("tok") / "tokenizer.model"
    return train_tokenizer(CORPUS * 5, path, TokenizerConfig(vocab_size=120))


def count_ngram(tokenizer: Tokenizer, texts: list[str], order: int, min_count: int = 1) -> NgramModel:
    """A Kneser-Ney n-gram over ``texts`` tokenised by ``tokenizer``."""
    ids = tokenizer.encode(texts)
    flat = torch.tensor([token for sequence in ids for token in sequence], dtype=torch.int64)
    offsets = torch.tensor([0] + [len(sequence) for sequence in ids]).cumsum(0)
    return NgramModel.build(flat, offsets, order, tokenizer.vocab_size, tokenizer.bos_id, tokenizer.eos_id, min_count)


def make_random_model_dir(
    path: Path, tokenizer: Tokenizer, cell: str = "lstm", seed: int = 0, ngram_order: int = 0, **sizes
) -> Path:
    """A model directory with random weights (for exactness tests that need no training).

    With ``ngram_order``, a Kneser-Ney n-gram counted on CORPUS is mixed in with weight 0.6.
    """
    torch.manual_seed(seed)
    settings = dict(embedding_dim=24, hidden_dim=32, num_layers=2, dropout=0.0, cell=cell)
    settings.update(sizes)
    model = RnnLanguageModel(ModelConfig(vocab_size=tokenizer.vocab_size, **settings))
    record: dict = {"seed": seed}
    ngram = None
    if ngram_order:
        ngram = count_ngram(tokenizer, CORPUS, ngram_order)
        record["ngram"] = {"order": ngram_order, "rnn_weight": 0.6}
    save_model_dir(path, model, tokenizer, record, ngram=ngram)
    return path


@pytest.fixture(params=["lstm", "gru", "rnn", "lstm+ngram"])
def random_lm(request, tmp_path, tokenizer) -> LanguageModel:
    """Random-weight models of each cell, and an LSTM mixed with a trigram."""
    cell, _, ngram = request.param.partition("+")
    path = make_random_model_dir(tmp_path / request.param, tokenizer, cell=cell, ngram_order=3 if ngram else 0)
    return load_model_dir(path)


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
