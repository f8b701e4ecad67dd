"""Sampling sentences from an LM: reproducibility, greedy decoding, top-k, special tokens, prefixes."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from conftest import count_ngram
from lm.checkpoint import LanguageModel, load_model_dir
from lm.model import ModelConfig, RnnLanguageModel
from lm.sample import SamplingConfig, sample_sentences, sample_token_ids
from lm.tokenizer import TokenizerConfig
from lm.launch import run
from lm.session import TrainConfig

SENTENCES = [
    "the cat sat on the mat",
    "a dog ran in the park",
    "birds sing at dawn",
    "we like green tea",
    "rain falls on the roof",
]


def train_tiny(tmp_path_factory, reverse: bool) -> LanguageModel:
    """A word-level LM that memorises SENTENCES in a few seconds on one CPU thread."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("backward" if reverse else "forward")
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(SENTENCES * 40) + "\n", encoding="utf-8")
    config = TrainConfig(
        epochs=40, max_minutes=None, threads=1, lr=3e-2, warmup_steps=10, valid_fraction=0.2,
        batch_tokens=64, patience=100, device="cpu", precision="fp32", reverse=reverse,
    )
    model_settings = dict(embedding_dim=32, hidden_dim=32, num_layers=1, dropout=0.0)
    run([corpus], root / "model", model_settings, TokenizerConfig(vocab_size=40, model_type="word"), config,
        show_progress=False)
    return load_model_dir(root / "model")


@pytest.fixture(scope="session")
def memorised_lm(tmp_path_factory) -> LanguageModel:
    return train_tiny(tmp_path_factory, reverse=False)


@pytest.fixture(scope="session")
def backward_memorised_lm(tmp_path_factory) -> LanguageModel:
    return train_tiny(tmp_path_factory, reverse=True)


@pytest.fixture
def spread_lm(memorised_lm) -> LanguageModel:
    """An untrained model with large random weights (spread-out logits) and the trained tokenizer."""
    config = ModelConfig(vocab_size=memorised_lm.tokenizer.vocab_size, embedding_dim=16, hidden_dim=16,
                         num_layers=1, dropout=0.0)
    model = RnnLanguageModel(config)
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator))
    return LanguageModel(model=model.eval(), tokenizer=memorised_lm.tokenizer, path=Path("random"))


@pytest.fixture
def spread_mixed_lm(spread_lm) -> LanguageModel:
    """spread_lm mixed with a trigram counted on SENTENCES, the n-gram taking 70% of the probability."""
    ngram = count_ngram(spread_lm.tokenizer, SENTENCES, 3)
    return dataclasses.replace(spread_lm, ngram=ngram, config={"ngram": {"order": 3, "rnn_weight": 0.3}})


def masked_logits(lm: LanguageModel, ids: list[int]) -> torch.Tensor:
    """Logits (L + 1, V) after each prefix of ``<s> ids``, from one full pass with no carried state.

    With an n-gram, the mixture's log-probabilities, the n-gram's looked up one history at a time.
    """
    tokenizer = lm.tokenizer
    x = torch.tensor([[tokenizer.bos_id, *ids]])
    with torch.inference_mode():
        output, _ = lm.model.hidden_states(x)
        logits = lm.model.output_linear(output[0]).float()
        if lm.ngram is not None:
            padded = [-1] * lm.ngram.history_width + x[0].tolist()
            histories = [padded[t + 1 : t + 1 + lm.ngram.history_width] for t in range(x.shape[1])]
            network = torch.log_softmax(logits, dim=-1)
            logits = torch.stack([lm.mix_next(network[t], h) for t, h in enumerate(histories)]).float()
        logits[:, [tokenizer.pad_id, tokenizer.unk_id, tokenizer.bos_id]] = -torch.inf
    return logits


def greedy_ids(lm: LanguageModel, max_tokens: int = 100) -> list[int]:
    """Reference greedy decode: rerun the whole sequence each step and take the argmax."""
    ids: list[int] = []
    while len(ids) < max_tokens:
        token = int(masked_logits(lm, ids)[-1].argmax())
        if token == lm.tokenizer.eos_id:
            break
        ids.append(token)
    return ids


def test_same_seed_gives_same_samples(memorised_lm):
    config = SamplingConfig(num=10, seed=3)
    assert sample_sentences(memorised_lm, config) == sample_sentences(memorised_lm, config)


def test_different_seeds_give_different_samples(spread_lm):
    first = sample_sentences(spread_lm, SamplingConfig(num=10, seed=1, max_tokens=10))
    second = sample_sentences(spread_lm, SamplingConfig(num=10, seed=2, max_tokens=10))
    assert first != second


def test_global_rng_is_untouched(memorised_lm):
    before = torch.get_rng_state()
    sample_sentences(memorised_lm, SamplingConfig(num=4))
    assert torch.equal(before, torch.get_rng_state())


@pytest.mark.parametrize("temperature", [0.0, 1e-7])
def test_zero_temperature_is_greedy(spread_lm, temperature):
    expected = spread_lm.tokenizer.decode(greedy_ids(spread_lm, max_tokens=12))
    config = SamplingConfig(num=3, temperature=temperature, max_tokens=12, seed=5)
    assert sample_sentences(spread_lm, config) == [expected] * 3


def test_greedy_sampling_follows_the_ngram_mixture(spread_lm, spread_mixed_lm):
    expected = greedy_ids(spread_mixed_lm, max_tokens=12)
    assert expected != greedy_ids(spread_lm, max_tokens=12)  # the n-gram changes the choices
    config = SamplingConfig(num=2, temperature=0.0, max_tokens=12)
    assert sample_token_ids(spread_mixed_lm, config) == [expected] * 2


def test_top_k_one_is_greedy(spread_lm):
    expected = greedy_ids(spread_lm, max_tokens=12)
    config = SamplingConfig(num=4, temperature=1.0, top_k=1, max_tokens=12)
    assert sample_token_ids(spread_lm, config) == [expected] * 4


def test_greedy_sample_of_memorised_model_is_a_corpus_sentence(memorised_lm):
    assert sample_sentences(memorised_lm, SamplingConfig(num=1, temperature=0))[0] in SENTENCES


def ranks_of_drawn_tokens(lm: LanguageModel, config: SamplingConfig) -> list[int]:
    """Rank (0 = most probable) of every drawn token, ``</s>`` included, among that step's logits."""
    ranks = []
    for ids in sample_token_ids(lm, config):
        logits = masked_logits(lm, ids)
        drawn = ids + ([lm.tokenizer.eos_id] if len(ids) < config.max_tokens else [])
        for step, token in enumerate(drawn):
            ranks.append(int((logits[step] > logits[step, token]).sum()))
    return ranks


def test_top_k_draws_only_among_the_k_most_probable(spread_lm):
    config = SamplingConfig(num=20, temperature=5.0, top_k=3, max_tokens=8, seed=11)
    assert max(ranks_of_drawn_tokens(spread_lm, config)) < 3


def test_without_top_k_less_probable_tokens_are_drawn(spread_lm):
    """The top-k test above would pass vacuously if this model only ever drew its top 3."""
    config = SamplingConfig(num=20, temperature=5.0, top_k=0, max_tokens=8, seed=11)
    assert max(ranks_of_drawn_tokens(spread_lm, config)) >= 3


@pytest.mark.parametrize("top_k", [0, 5])
def test_never_draws_pad_unk_or_bos(spread_lm, top_k):
    tokenizer = spread_lm.tokenizer
    banned = [tokenizer.pad_id, tokenizer.unk_id, tokenizer.bos_id]
    with torch.no_grad():
        spread_lm.model.output_linear.bias[banned] = 50.0  # would win every step if not masked
    samples = sample_token_ids(spread_lm, SamplingConfig(num=20, top_k=top_k, max_tokens=10))
    drawn = {token for ids in samples for token in ids}
    assert drawn and drawn.isdisjoint(banned), drawn


@pytest.mark.parametrize("max_tokens", [1, 4])
def test_max_tokens_caps_the_length(spread_lm, max_tokens):
    with torch.no_grad():
        spread_lm.model.output_linear.bias[spread_lm.tokenizer.eos_id] = -50.0  # </s> never drawn
    samples = sample_token_ids(spread_lm, SamplingConfig(num=6, max_tokens=max_tokens))
    assert [len(ids) for ids in samples] == [max_tokens] * 6


def test_memorised_model_samples_corpus_sentences(memorised_lm):
    samples = sample_sentences(memorised_lm, SamplingConfig(num=50, seed=0))
    in_corpus = sum(sentence in SENTENCES for sentence in samples)
    assert in_corpus >= 40, samples
    assert len(set(samples) & set(SENTENCES)) >= 3, samples  # not one sentence over and over


def test_prefix_starts_every_sample(memorised_lm):
    samples = sample_sentences(memorised_lm, SamplingConfig(num=10, prefix="rain"))
    assert all(sentence.startswith("rain") for sentence in samples), samples
    greedy = sample_sentences(memorised_lm, SamplingConfig(num=1, temperature=0, prefix="a dog"))
    assert greedy == ["a dog ran in the park"]


def test_backward_model_samples_read_left_to_right(backward_memorised_lm):
    samples = sample_sentences(backward_memorised_lm, SamplingConfig(num=30, seed=0))
    assert sum(sentence in SENTENCES for sentence in samples) >= 24, samples


def test_backward_model_prefix_is_the_sentence_end(backward_memorised_lm):
    samples = sample_sentences(backward_memorised_lm, SamplingConfig(num=10, prefix="the roof"))
    assert all(sentence.endswith("the roof") for sentence in samples), samples
    greedy = sample_sentences(backward_memorised_lm, SamplingConfig(num=1, temperature=0, prefix="green tea"))
    assert greedy == ["we like green tea"]


def test_model_mode_is_restored(spread_lm):
    spread_lm.model.train()
    sample_token_ids(spread_lm, SamplingConfig(num=2, max_tokens=3))
    assert spread_lm.model.training


@pytest.mark.parametrize(
    "settings, match",
    [
        (dict(num=0), "num"),
        (dict(max_tokens=0), "--max-tokens"),
        (dict(temperature=-1.0), "temperature"),
        (dict(top_k=-2), "--top-k"),
    ],
)
def test_invalid_settings_are_refused(settings, match):
    with pytest.raises(ValueError, match=match):
        SamplingConfig(**settings)
