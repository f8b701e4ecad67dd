"""The Kneser-Ney n-gram and its mixture with the network: probabilities, storage, training, loading."""

from __future__ import annotations

import json
import math
import random
import shutil
from collections import defaultdict
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from conftest import CORPUS, TINY_MODEL, count_ngram, make_random_model_dir, tiny_train_config, write_lines
from lm.checkpoint import NGRAM_FILE, ModelDirError, load_model_dir, load_weights, replace_ngram
from lm.kneser_ney import unique_rows
from lm.ngram import (
    NgramError, NgramModel, check_order, context_index, fit_mixture_weight, history_windows, mix_logprobs,
)
from lm.scorer import SentenceScorer
from lm.tokenizer import TokenizerConfig
from lm.launch import run
from lm.metrics_log import kept_loss, read_metrics

V, BOS, EOS = 12, 1, 2


def random_sentences(seed: int, count: int = 60) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.choice(range(3, 9)) for _ in range(rng.randint(1, 8))] for _ in range(count)]


def build(sentences: list[list[int]], order: int, min_count: int = 1) -> NgramModel:
    flat = torch.tensor([t for s in sentences for t in s], dtype=torch.int64)
    offsets = torch.tensor([0] + [len(s) for s in sentences]).cumsum(0)
    return NgramModel.build(flat, offsets, order, V, BOS, EOS, min_count)


class DictKneserNey:
    """Interpolated modified Kneser-Ney written plainly with dictionaries: the reference.

    With ``min_count`` > 1, n-grams of order 2 and up with fewer (adjusted) counts are dropped and their
    mass goes to the back-off weight.
    """

    def __init__(self, sentences: list[list[int]], order: int, min_count: int = 1, vocab_size: int = V):
        self.order, self.min_count, self.vocab_size = order, min_count, vocab_size
        raw = [defaultdict(int) for _ in range(order + 1)]
        for sentence in sentences:
            seq = [BOS, *sentence, EOS]
            for end in range(1, len(seq)):
                for k in range(1, min(order, end + 1) + 1):
                    raw[k][tuple(seq[end - k + 1 : end + 1])] += 1
        self.counts = [dict() for _ in range(order + 1)]
        self.counts[order] = dict(raw[order])
        for k in range(1, order):
            left = defaultdict(int)
            for gram in raw[k + 1]:
                left[gram[1:]] += 1
            self.counts[k] = {g: (c if g[0] == BOS else left[g]) for g, c in raw[k].items()}
        self.discounts = [None] + [self.discount(self.counts[k]) for k in range(1, order + 1)]
        self.followers = [defaultdict(dict) for _ in range(order + 1)]
        for k in range(1, order + 1):
            for gram, c in self.counts[k].items():
                self.followers[k][gram[:-1]][gram[-1]] = c

    @staticmethod
    def discount(counts: dict) -> list[float]:
        n = [sum(1 for c in counts.values() if c == i) or 1 for i in (1, 2, 3, 4)]
        y = n[0] / (n[0] + 2 * n[1])
        raw = [1 - 2 * y * n[1] / n[0], 2 - 3 * y * n[2] / n[1], 3 - 4 * y * n[3] / n[2]]
        return [min(max(d, 0.05), c - 0.05) for c, d in zip((1, 2, 3), raw)]

    def prob(self, history: list[int], word: int) -> float:
        history = [t for t in history if t >= 0][-(self.order - 1) :]
        p = 1.0 / self.vocab_size
        for k in range(1, len(history) + 2):
            context = tuple(history[len(history) - (k - 1) :]) if k > 1 else ()
            followers = self.followers[k].get(context)
            if not followers:
                continue
            total, d = sum(followers.values()), self.discounts[k]
            kept = {w: c for w, c in followers.items() if k == 1 or c >= self.min_count}
            direct = {w: (c - d[min(c, 3) - 1]) / total for w, c in kept.items()}
            p = direct.get(word, 0.0) + (1.0 - sum(direct.values())) * p
        return p


HISTORIES = [[-1, BOS], [BOS, 3], [3, 4], [5, 5], [4, 8], [11, 3], [11, 11], [-1, -1]]


@pytest.mark.parametrize("seed", [0, 1])
def test_probabilities_equal_a_plain_dictionary_implementation(seed):
    sentences = random_sentences(seed)
    ngram, reference = build(sentences, 3), DictKneserNey(sentences, 3)
    for history in HISTORIES:
        expected = torch.tensor([reference.prob(history, w) for w in range(V)], dtype=torch.float64)
        assert torch.allclose(ngram.next_logprobs(torch.tensor(history)).exp(), expected, atol=1e-6), history


@pytest.mark.parametrize("order, min_count", [(2, 1), (3, 1), (4, 1), (4, 2), (4, 3)])
def test_every_next_token_distribution_sums_to_one(order, min_count):
    ngram = build(random_sentences(2), order, min_count)
    for history in HISTORIES:
        full = torch.tensor([-1] * (order - 1 - len(history)) + history)[-(order - 1) :]
        assert float(ngram.next_logprobs(full).exp().sum()) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("order, min_count", [(4, 2), (5, 3)])
def test_pruned_probabilities_equal_the_reference(order, min_count):
    """Pruning leaves some contexts no n-grams of their own while longer ones keep theirs."""
    sentences = random_sentences(6, count=300)
    ngram, reference = build(sentences, order, min_count), DictKneserNey(sentences, order, min_count)
    histories = [[-1] * (order - 1 - len(h)) + h for h in HISTORIES] + [s[:order - 1] for s in sentences[:20] if len(s) >= order - 1]
    for history in histories:
        expected = torch.tensor([reference.prob(history, w) for w in range(V)], dtype=torch.float64)
        assert torch.allclose(ngram.next_logprobs(torch.tensor(history)).exp(), expected, atol=1e-6), history


def test_orders_beyond_packed_keys_for_a_large_vocabulary():
    """Order 5 over 8,000 tokens needs 65 bits to pack five ids; the context-index keys take any order."""
    vocab, rng = 8000, random.Random(7)
    phrases = [[rng.randrange(3, vocab) for _ in range(6)] for _ in range(5)]
    sentences = [phrases[rng.randrange(5)][: rng.randint(2, 6)] + [rng.randrange(3, vocab)] for _ in range(200)]
    flat = torch.tensor([t for s in sentences for t in s], dtype=torch.int64)
    offsets = torch.tensor([0] + [len(s) for s in sentences]).cumsum(0)
    ngram = NgramModel.build(flat, offsets, 5, vocab, BOS, EOS)
    reference = DictKneserNey(sentences, 5, vocab_size=vocab)
    pairs = [([BOS, *s][max(0, t - 3) : t + 1], ([*s, EOS])[t]) for s in sentences[:40] for t in range(len(s) + 1)]
    pairs += [([BOS, *phrases[0][:3]], phrases[1][0]), ([9, 9, 9, 9], phrases[0][0])]
    histories = torch.tensor([[-1] * (4 - len(h)) + h for h, _ in pairs])
    expected = torch.tensor([math.log(reference.prob(h, w)) for h, w in pairs], dtype=torch.float64)
    assert torch.allclose(ngram.logprobs(histories, torch.tensor([w for _, w in pairs])), expected, atol=1e-6)
    assert float(ngram.next_logprobs(histories[5]).exp().sum()) == pytest.approx(1.0, abs=1e-6)


def test_batched_lookup_equals_the_next_token_distribution():
    ngram = build(random_sentences(3), 4)
    histories = torch.tensor([[-1, -1, BOS], [BOS, 3, 4], [5, 6, 7], [8, 8, 8], [-1, BOS, 6]] * V)
    targets = torch.arange(V).repeat_interleave(5)
    batched = ngram.logprobs(histories, targets)
    one_by_one = torch.stack([ngram.next_logprobs(h)[t] for h, t in zip(histories, targets)])
    assert torch.allclose(batched, one_by_one, atol=1e-12)


def test_lower_orders_use_continuation_counts():
    """Kneser-Ney's point: a token seen often but after one context only gets little back-off mass."""
    sentences = [[3, 4]] * 30 + [[t, 5] for t in (6, 7, 8, 9, 10)]  # 4 follows only 3; 5 follows five tokens
    ngram = build(sentences, 2)
    unseen_context = ngram.next_logprobs(torch.tensor([11]))  # 11 never seen: falls to the unigram level
    assert unseen_context[5] > unseen_context[4]
    assert ngram.next_logprobs(torch.tensor([3]))[4] > math.log(0.9)  # yet after 3, 4 is near certain


def test_pruning_drops_rare_ngrams_and_keeps_the_rest():
    sentences = random_sentences(4, count=200)
    full, pruned = build(sentences, 4), build(sentences, 4, min_count=3)
    assert pruned.num_ngrams < full.num_ngrams
    assert torch.equal(pruned.tables["gram_keys.1"], full.tables["gram_keys.1"])  # unigrams are never pruned
    for k in (3, 4):  # with six word types, every bigram here is frequent; longer n-grams are not
        assert pruned.tables[f"gram_keys.{k}"].numel() < full.tables[f"gram_keys.{k}"].numel()
    rare_bigram = build([[3, 4]] * 5 + [[5, 6]], 2, min_count=2)  # (5, 6) and (<s>, 5) seen once
    assert rare_bigram.tables["gram_keys.2"].numel() == build([[3, 4]] * 5 + [[5, 6]], 2).tables["gram_keys.2"].numel() - 3


def test_sentence_boundaries_are_not_crossed():
    ngram = build([[3, 4], [5, 6]], 3)
    # "4 </s> <s> 5" never happened: there is no trigram context (4, EOS)
    _, found = context_index(ngram.tables, ngram.bits, torch.tensor([[4, EOS], [3, 4]]))
    assert found.tolist() == [False, True]
    assert ngram.next_logprobs(torch.tensor([BOS, 3]))[4] > ngram.next_logprobs(torch.tensor([BOS, 3]))[6]


def test_order_must_be_at_least_two():
    with pytest.raises(NgramError, match="at least 2"):
        check_order(1)
    check_order(7)


@given(st.lists(st.lists(st.integers(0, 40), min_size=3, max_size=3), max_size=60))
def test_unique_rows_equals_torch_unique_over_rows(rows):
    rows = torch.tensor(rows, dtype=torch.int64).reshape(-1, 3)
    expected = torch.unique(rows, dim=0, return_inverse=True, return_counts=True) if rows.shape[0] else (rows, rows[:, 0], rows[:, 0])
    for got, want in zip(unique_rows(rows), expected):
        assert torch.equal(got, want)


def test_state_dict_round_trip():
    ngram = build(random_sentences(5), 3)
    again = NgramModel.from_state_dict(ngram.state_dict())
    histories, targets = torch.tensor([[BOS, 3], [4, 5]]), torch.tensor([4, EOS])
    assert torch.equal(again.logprobs(histories, targets), ngram.logprobs(histories, targets))
    state = ngram.state_dict()
    del state["gram_keys.2"]
    with pytest.raises(NgramError, match="missing gram_keys.2"):
        NgramModel.from_state_dict(state)


def format_1_logprobs(state: dict, histories: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Scoring as format 1 did: every token of a context or n-gram packed into one key."""
    order, vocab = int(state["order"]), int(state["vocab_size"])
    bits = max(1, (vocab - 1).bit_length())

    def find(name: str, values: str, query: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        keys = state[name]
        index = torch.searchsorted(keys, query).clamp(max=keys.numel() - 1)
        found = keys[index] == query
        return torch.where(found, state[values][index].double(), 0.0), found

    p = torch.full(targets.shape, 1.0 / vocab, dtype=torch.float64)
    for k in range(1, order + 1):
        context = histories[:, histories.shape[1] - (k - 1) :]
        key = torch.zeros(len(targets), dtype=torch.int64)
        for j in range(k - 1):
            key = (key << bits) | context[:, j].clamp(min=0)
        backoff, known = find(f"context_keys.{k}", f"context_backoff.{k}", key)
        direct, _ = find(f"gram_keys.{k}", f"gram_direct.{k}", (key << bits) | targets)
        p = torch.where((context >= 0).all(dim=1) & known, direct + backoff * p, p)
    return p.log()


# Tables of format 1 written by lm/ngram.py as it was at commit cf6e66c: a 4-gram over a 116-piece
# vocabulary (the test tokenizer's; <s> 2, </s> 3) counted with min_count 2 from 600 random sentences of
# Zipf-distributed pieces 4-115, so pruning left 4-gram contexts whose shorter suffix context is absent.
FORMAT_1_FILE = Path(__file__).parent / "data" / "ngram_format1.pt"


def test_format_1_tables_load_with_the_same_probabilities():
    """Models trained before context-index keys (the previous embedded one among them) score as they did."""
    state = load_weights(FORMAT_1_FILE)
    assert "key_format" not in state
    ngram = NgramModel.from_state_dict(state)
    generator = torch.Generator().manual_seed(0)
    grams = state["gram_keys.4"][torch.randint(state["gram_keys.4"].numel(), (300,), generator=generator)]
    mask = (1 << ngram.bits) - 1
    seen = torch.stack([(grams >> (ngram.bits * (3 - j))) & mask for j in range(4)], dim=1)
    unseen = torch.randint(3, ngram.vocab_size, (300, 4), generator=generator)
    rows = torch.cat([seen, unseen, torch.cat([torch.full((300, 2), -1), unseen[:, 2:]], dim=1)])
    histories, targets = rows[:, :3], rows[:, 3].clamp(min=0)
    assert torch.allclose(ngram.logprobs(histories, targets), format_1_logprobs(state, histories, targets), atol=1e-12)
    again = NgramModel.from_state_dict(ngram.state_dict())  # saved again, it is format 2
    assert int(again.state_dict()["key_format"]) == 2
    assert torch.equal(again.logprobs(histories, targets), ngram.logprobs(histories, targets))


def format_1_model_dir(path: Path, tokenizer) -> Path:
    """A model directory as the format-1 code wrote it: FORMAT_1_FILE as its n-gram, format_version 1."""
    model_dir = make_random_model_dir(path, tokenizer, ngram_order=4)
    shutil.copyfile(FORMAT_1_FILE, model_dir / NGRAM_FILE)
    config = json.loads((model_dir / "config.json").read_text())
    (model_dir / "config.json").write_text(json.dumps({**config, "format_version": 1}))
    return model_dir


def test_a_model_directory_of_format_1_loads_its_n_gram(tmp_path, tokenizer):
    model_dir = format_1_model_dir(tmp_path / "m", tokenizer)
    loaded = load_model_dir(model_dir).ngram
    expected = NgramModel.from_state_dict(load_weights(FORMAT_1_FILE))
    histories, targets = torch.tensor([[-1, -1, 2], [5, 4, 4], [30, 7, 4]]), torch.tensor([4, 5, 3])
    assert torch.equal(loaded.logprobs(histories, targets), expected.logprobs(histories, targets))


def test_replace_ngram_swaps_the_n_gram_of_a_format_1_directory_and_keeps_the_network(tmp_path, tokenizer):
    """compare_ngram_orders --write: the new tables load as this version's, the weights keep their bytes."""
    model_dir = format_1_model_dir(tmp_path / "m", tokenizer)
    weights = (model_dir / "model.pt").read_bytes()
    trigram = count_ngram(tokenizer, CORPUS, 3)
    replace_ngram(model_dir, trigram, 0.35)
    loaded = load_model_dir(model_dir)
    assert loaded.config["format_version"] == 2 and loaded.rnn_weight == 0.35
    assert loaded.config["ngram"]["order"] == 3 and loaded.config["ngram"]["num_ngrams"] == trigram.num_ngrams
    histories, targets = torch.tensor([[-1, 2], [5, 4], [30, 7]]), torch.tensor([4, 5, 3])
    assert torch.equal(loaded.ngram.logprobs(histories, targets), trigram.logprobs(histories, targets))
    assert (model_dir / "model.pt").read_bytes() == weights


def test_unknown_key_format_and_mismatched_tables_are_refused():
    state = build(random_sentences(5), 3).state_dict()
    state["key_format"] = torch.tensor(9)
    with pytest.raises(NgramError, match="key format 9"):
        NgramModel.from_state_dict(state)
    state = build(random_sentences(5), 3).state_dict()
    state["context_backoff.2"] = state["context_backoff.2"][:-1]
    with pytest.raises(NgramError, match="context_keys.2 and context_backoff.2 do not match"):
        NgramModel.from_state_dict(state)


def test_history_windows_pad_before_the_start():
    windows = history_windows(torch.tensor([BOS, 5, 6, 7]), 3)
    assert windows.tolist() == [[-1, -1, BOS], [-1, BOS, 5], [BOS, 5, 6], [5, 6, 7]]


def test_mixture_weight_maximises_the_likelihood():
    generator = torch.Generator().manual_seed(0)
    a = -torch.rand(500, generator=generator, dtype=torch.float64) * 6
    b = -torch.rand(500, generator=generator, dtype=torch.float64) * 6
    weight = fit_mixture_weight(a, b)

    def likelihood(w: float) -> float:
        return float(mix_logprobs(a, b, w).sum())

    grid = max((likelihood(w / 100), w / 100) for w in range(1, 100))
    assert likelihood(weight) >= grid[0] - 1e-6
    assert abs(weight - grid[1]) <= 0.011
    # a model that is better everywhere takes (nearly) all the weight
    assert fit_mixture_weight(a, a - 3.0) > 0.95


def test_mix_logprobs_is_the_log_of_the_mixed_probabilities():
    a, b = torch.tensor([-1.0, -7.0, -0.1]), torch.tensor([-2.0, -0.5, -30.0])
    expected = torch.log(0.3 * a.double().exp() + 0.7 * b.double().exp())
    assert torch.allclose(mix_logprobs(a, b, 0.3), expected)


@pytest.fixture(scope="module")
def mixed_run(tmp_path_factory):
    """A tiny run with a trigram; the validation sentences are new combinations of corpus words."""
    root = tmp_path_factory.mktemp("mixed")
    corpus = write_lines(root / "corpus.txt", CORPUS, repeat=10)
    valid = write_lines(root / "valid.txt", ["and god saw the earth", "the history of the light", "历史告诉他们"])
    config = tiny_train_config(epochs=6, ngram_order=3)
    run([corpus], root / "lm", TINY_MODEL, TokenizerConfig(vocab_size=120), config, valid_paths=[valid], show_progress=False)
    return root / "lm"


def test_training_writes_the_ngram_and_a_fitted_weight(mixed_run):
    config = json.loads((mixed_run / "config.json").read_text())
    assert config["ngram"]["order"] == 3 and 0.0 < config["ngram"]["rnn_weight"] < 1.0
    rows = read_metrics(mixed_run, "valid")
    best = min(rows, key=kept_loss)
    share = best["average_rnn_weight"] if best.get("kept") == "average" else best["rnn_weight"]
    assert config["ngram"]["rnn_weight"] == pytest.approx(share)
    # the fitted mixture is at least as good on validation as the network alone
    assert all(row["valid_loss"] <= row["rnn_valid_loss"] + 1e-9 for row in rows)
    assert (mixed_run / NGRAM_FILE).is_file()


def test_scores_mix_network_and_ngram_token_by_token(mixed_run):
    lm = load_model_dir(mixed_run)
    text = "and god saw the earth"
    ids = lm.tokenizer.encode([text])[0]
    inputs, targets = torch.tensor([lm.tokenizer.bos_id, *ids]), torch.tensor([*ids, lm.tokenizer.eos_id])
    with torch.inference_mode():
        hidden, _ = lm.model.hidden_states(inputs[None])
        network = torch.log_softmax(lm.model.output_linear(hidden[0]), dim=-1)[torch.arange(len(targets)), targets]
    w = lm.rnn_weight
    expected = 0.0
    for t, target in enumerate(targets.tolist()):
        history = inputs[max(0, t - 1) : t + 1].tolist()
        p_ngram = math.exp(float(lm.ngram.next_logprobs(torch.tensor([-1] * (2 - len(history)) + history))[target]))
        expected += math.log(w * math.exp(float(network[t])) + (1 - w) * p_ngram)
    assert SentenceScorer(lm).score([text]) == [pytest.approx(expected, abs=1e-5)]


def test_model_without_ngram_file_is_refused(mixed_run, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("config.json", "tokenizer.model", "model.pt"):
        (broken / name).write_bytes((mixed_run / name).read_bytes())
    with pytest.raises(ModelDirError, match="ngram.pt: missing"):
        load_model_dir(broken)


def test_pickled_code_in_place_of_the_ngram_is_refused(mixed_run, tmp_path):
    import pickle

    class Exploit:
        def __reduce__(self):
            return (exec, ("raise SystemExit('pwned')",))

    target = tmp_path / "evil"
    target.mkdir()
    for name in ("config.json", "tokenizer.model", "model.pt"):
        (target / name).write_bytes((mixed_run / name).read_bytes())
    torch.save({"order": Exploit()}, target / NGRAM_FILE, pickle_module=pickle)
    with pytest.raises(ModelDirError, match="refused"):
        load_model_dir(target)
