"""The trie scoring engine equals the plain methods: per cell, on n-best lists, in edge cases, in chunks."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import CORPUS, make_random_model_dir
from lm.checkpoint import CONFIG_FILE, LanguageModel, load_model_dir
from lm.perplexity import PerplexityReport, SentenceLogprobs, compute_perplexity, mix_directions
from lm.scorer import SentenceScorer, build_trie, pools_by_budget, score_one_at_a_time, score_padded

TOLERANCE = 1e-4


def sharpen(lm: LanguageModel, seed: int = 0, scale: float = 0.25) -> LanguageModel:
    """Replace the weights by large random ones: each context then moves the scores by whole nats."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in lm.model.parameters():
            parameter.copy_(scale * torch.randn(parameter.shape, generator=generator))
    return lm


@pytest.fixture(params=["default", "sharp"])
def any_lm(request, random_lm) -> LanguageModel:
    """random_lm (lstm/gru/rnn) with its initial weights, and with large ones."""
    return sharpen(random_lm) if request.param == "sharp" else random_lm


@pytest.fixture
def sharp_lm(random_lm) -> LanguageModel:
    return sharpen(random_lm)


@pytest.fixture(scope="module")
def sharp_lms(tmp_path_factory, tokenizer) -> dict[str, LanguageModel]:
    root = tmp_path_factory.mktemp("sharp")
    return {cell: sharpen(load_model_dir(make_random_model_dir(root / cell, tokenizer, cell=cell)))
            for cell in ("lstm", "gru", "rnn")}


def random_nbest(vocab_size: int, seed: int, utterances: int = 4, per_utterance: int = 12) -> list[list[int]]:
    """N-best lists the way a decoder makes them: variants of one sentence that share prefixes, with repeats."""
    rng = random.Random(seed)
    tokens = [1, *range(4, vocab_size)]  # unk may occur inside a hypothesis; pad/bos/eos never do
    sequences = []
    for _ in range(utterances):
        base = [rng.choice(tokens) for _ in range(rng.randint(3, 12))]
        for _ in range(per_utterance):
            variant = list(base)
            edit = rng.random()
            if edit < 0.25:
                variant[rng.randrange(len(variant))] = rng.choice(tokens)
            elif edit < 0.45:
                variant = variant[: rng.randint(0, len(variant))]  # a prefix (possibly empty)
            elif edit < 0.65:
                variant += [rng.choice(tokens) for _ in range(rng.randint(1, 3))]  # extends the base
            elif edit < 0.75:
                del variant[rng.randrange(len(variant))]
            sequences.append(variant)  # edit >= 0.75: the base itself, again
    rng.shuffle(sequences)
    return sequences


def assert_close(actual: list[float], expected: list[float], tolerance: float = TOLERANCE) -> None:
    assert len(actual) == len(expected)
    worst = max((abs(a - b) for a, b in zip(actual, expected)), default=0.0)
    assert worst <= tolerance, f"largest difference {worst}"


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_trie_equals_one_at_a_time_on_nbest_lists(any_lm, seed):
    sequences = random_nbest(any_lm.tokenizer.vocab_size, seed)
    assert len({tuple(s) for s in sequences}) < len(sequences)  # there are duplicates
    expected = score_one_at_a_time(any_lm, sequences)
    assert_close(SentenceScorer(any_lm).score_ids(sequences), expected)
    assert_close(SentenceScorer(any_lm, batch_tokens=40).score_ids(sequences), expected)
    assert_close(score_padded(any_lm, sequences), expected)
    assert_close(score_padded(any_lm, sequences, batch_tokens=30), expected)


def test_sharp_weights_spread_the_scores(sharp_lm):
    """Guards the tests above: with these weights a wrong context or a lost token shows up clearly."""
    sequences = random_nbest(sharp_lm.tokenizer.vocab_size, 0)
    sequence = max(sequences, key=len)
    x = torch.tensor([[sharp_lm.tokenizer.bos_id, *sequence]])
    y = torch.tensor([[*sequence, sharp_lm.tokenizer.eos_id]])
    with torch.no_grad():
        nll = sharp_lm.model(x, y, torch.tensor([len(sequence) + 1]))[0]
    assert float(nll.max() - nll.min()) > 1.0
    scores = score_one_at_a_time(sharp_lm, [sequence, sequence[:-1] + [sequence[-1] % 50 + 4], sequence[1:]])
    assert min(abs(scores[0] - scores[1]), abs(scores[0] - scores[2])) > 100 * TOLERANCE


@settings(max_examples=25, deadline=None)
@given(
    cell=st.sampled_from(["lstm", "gru", "rnn"]),
    sequences=st.lists(st.lists(st.sampled_from([1, 4, 5, 6, 7, 40]), max_size=7), max_size=12),
    batch_tokens=st.integers(1, 30),
)
def test_trie_equals_one_at_a_time_on_any_list(sharp_lms, cell, sequences, batch_tokens):
    lm = sharp_lms[cell]
    expected = score_one_at_a_time(lm, sequences)
    assert_close(SentenceScorer(lm, batch_tokens=batch_tokens, long_sequence=6).score_ids(sequences), expected)


def test_score_texts_equals_one_at_a_time(any_lm):
    texts = [CORPUS[0], CORPUS[9], CORPUS[0], "", "the", CORPUS[9], "历史", "in the beginning god"]
    scores = SentenceScorer(any_lm).score(texts)
    assert_close(scores, score_one_at_a_time(any_lm, any_lm.tokenizer.encode(texts)))
    assert scores[0] == scores[2] and scores[1] == scores[5]


def test_score_detailed_counts_tokens_with_end_of_sentence(random_lm):
    texts = ["", "the earth", "历史告诉我们"]
    details = SentenceScorer(random_lm).score_detailed(texts)
    assert [d.num_tokens for d in details] == [len(ids) + 1 for ids in random_lm.tokenizer.encode(texts)]
    assert details[0].num_tokens == 1


@pytest.mark.parametrize(
    "sequences",
    [
        [[]],
        [[], [], []],
        [[7]],
        [[7], [8], [9], [7]],
        [[5, 6, 7, 8]] * 4,
        [[5, 6, 7, 8], [5, 6], [5], [], [5, 6, 7, 8, 9]],  # each a prefix of the next
        [[9, 8], [9], [9, 8, 7], [9, 8, 7, 6, 5, 4], [9, 8, 7, 6]],
        [[]] + [[4 + i % 30] for i in range(60)],
    ],
    ids=["empty", "empties", "one-token", "one-token-each", "identical", "prefixes", "prefix-chain", "wide"],
)
def test_trie_edge_cases(sharp_lm, sequences):
    expected = score_one_at_a_time(sharp_lm, sequences)
    for batch_tokens in (1, 3, 16384):
        assert_close(SentenceScorer(sharp_lm, batch_tokens=batch_tokens).score_ids(sequences), expected)


def test_empty_list_scores_nothing(random_lm):
    assert SentenceScorer(random_lm).score_ids([]) == []
    assert SentenceScorer(random_lm).score([]) == []


def test_empty_text_is_log_probability_of_end_after_start(sharp_lm):
    model, tok = sharp_lm.model, sharp_lm.tokenizer
    with torch.no_grad():
        hidden, _ = model.hidden_states(torch.tensor([[tok.bos_id]]))
        network = torch.log_softmax(model.output_linear(hidden[0, 0]), dim=-1)
        expected = float(sharp_lm.mix_next(network, sharp_lm.start_history())[tok.eos_id])
    assert SentenceScorer(sharp_lm).score([""]) == [pytest.approx(expected, abs=1e-5)]


def test_pooling_across_utterances_with_many_pools(sharp_lm):
    sequences = random_nbest(sharp_lm.tokenizer.vocab_size, seed=5, utterances=8, per_utterance=10)
    pools = pools_by_budget([len(s) + 1 for s in sorted(sequences)], 20)  # pooled in sorted order
    assert len(pools) > 10
    calls = []
    scores = SentenceScorer(sharp_lm, batch_tokens=20).score_ids(sequences, progress=calls.append)
    assert_close(scores, score_one_at_a_time(sharp_lm, sequences))
    assert sum(calls) == len(sequences) and len(calls) == len(pools)


def test_pools_stay_within_budget():
    lengths = [3, 4, 2, 9, 1, 1, 1, 5]
    pools = pools_by_budget(lengths, 8)
    assert [list(p) for p in pools] == [[0, 1], [2], [3], [4, 5, 6, 7]]
    assert [i for p in pools for i in p] == list(range(len(lengths)))
    assert pools_by_budget([], 8) == []


def test_long_hypotheses_are_scored_in_chunks(sharp_lm):
    rng = random.Random(3)
    sequences = [[rng.randrange(4, 60) for _ in range(n)] for n in (2, 7, 8, 9, 20, 31)]
    sequences.append(sequences[4][:5])  # a short prefix of a long one still goes through the trie
    expected = score_one_at_a_time(sharp_lm, sequences)
    scorer = SentenceScorer(sharp_lm, long_sequence=8)
    assert_close(scorer.score_ids(sequences), expected)
    calls = []
    scorer.score_ids(sequences, progress=calls.append)
    assert calls == [3, 1, 1, 1, 1]  # one trie pool of the 3 short ones, then each long sequence alone
    with torch.inference_mode():
        for chunk in (1, 3, 8, 512):
            assert_close([scorer.score_chunked(s, chunk=chunk) for s in sequences], expected)


def test_order_is_preserved(sharp_lm):
    sequences = random_nbest(sharp_lm.tokenizer.vocab_size, seed=7)
    scorer = SentenceScorer(sharp_lm, batch_tokens=50, long_sequence=10)
    scores = scorer.score_ids(sequences)
    permutation = list(range(len(sequences)))
    random.Random(0).shuffle(permutation)
    # Pools are made of other sequences then, so float rounding may differ by ~1e-6.
    assert_close(scorer.score_ids([sequences[i] for i in permutation]), [scores[i] for i in permutation])
    distinct = {tuple(s): score for s, score in zip(sequences, scores)}
    ordered = sorted(distinct.values())
    assert min(b - a for a, b in zip(ordered, ordered[1:])) > 10 * TOLERANCE  # so a mix-up would show


def test_backward_model_scores_reversed_tokens(tmp_path, tokenizer):
    model_dir = make_random_model_dir(tmp_path / "backward", tokenizer)
    config = json.loads((model_dir / CONFIG_FILE).read_text())
    config["direction"] = "backward"
    (model_dir / CONFIG_FILE).write_text(json.dumps(config))
    lm = sharpen(load_model_dir(model_dir))
    assert lm.direction == "backward"
    texts = ["in the beginning god created the heaven", "and god saw the light", "历史总是不断重演"]
    ids = tokenizer.encode(texts)
    assert all(len(i) > 1 for i in ids)
    scores = SentenceScorer(lm).score(texts)
    assert_close(scores, score_one_at_a_time(lm, [i[::-1] for i in ids]))
    forward = score_one_at_a_time(lm, ids)
    assert min(abs(a - b) for a, b in zip(scores, forward)) > 0.01


def test_build_trie_structure():
    sequences = [[], [1], [1, 2], [1, 2], [1, 3, 4], [5]]
    levels = build_trie(sequences, bos_id=9)
    assert [len(level.tokens) for level in levels] == [1, 2, 2, 1]
    assert [level.tokens for level in levels] == [[9], [1, 5], [2, 3], [4]]
    assert [level.parents for level in levels] == [[0], [0, 0], [0, 0], [1]]
    assert [level.ends for level in levels] == [[0], [0, 1], [0, 0], [0]]
    assert [level.ending for level in levels] == [[0], [1, 5], [2, 3], [4]]


def test_build_trie_shares_every_common_prefix():
    sequences = sorted([[1, 2, 3], [1, 2, 4], [1, 5], [6], [6, 7, 8, 9]])
    levels = build_trie(sequences, bos_id=0)
    distinct_prefixes = {tuple(s[:d]) for s in sequences for d in range(1, len(s) + 1)}
    assert sum(len(level.tokens) for level in levels[1:]) == len(distinct_prefixes)
    assert sorted(i for level in levels for i in level.ending) == list(range(len(sequences)))


def test_bf16_is_close_to_fp32(random_lm):
    sequences = random_nbest(random_lm.tokenizer.vocab_size, seed=1)
    fp32 = SentenceScorer(random_lm).score_ids(sequences)
    bf16 = SentenceScorer(random_lm, precision="bf16").score_ids(sequences)
    assert all(math.isfinite(s) for s in bf16)
    assert_close(bf16, fp32, tolerance=0.05)  # measured here: at most 0.001 nats
    assert bf16 != fp32  # the autocast did run in bfloat16


def test_bad_precision_raises(random_lm):
    with pytest.raises(ValueError, match="precision must be one of fp32, bf16, got 'fp16'"):
        SentenceScorer(random_lm, precision="fp16")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_scores_equal_cpu_scores(tmp_path, tokenizer):
    model_dir = make_random_model_dir(tmp_path / "lm", tokenizer)
    cpu, cuda = sharpen(load_model_dir(model_dir)), sharpen(load_model_dir(model_dir, device="cuda"))
    sequences = random_nbest(tokenizer.vocab_size, seed=2)
    assert_close(SentenceScorer(cuda).score_ids(sequences), score_one_at_a_time(cpu, sequences), tolerance=1e-3)


def test_perplexity_counts_units_by_hand(sharp_lm):
    texts = ["in the beginning", "历史告诉我们"]
    ids = sharp_lm.tokenizer.encode(texts)
    report = compute_perplexity(SentenceScorer(sharp_lm), texts)
    assert report.sentences == 2
    assert report.tokens == len(ids[0]) + len(ids[1]) + 2
    assert report.characters == (14 + 1) + (6 + 1)
    assert report.words == (3 + 1) + (1 + 1)
    logprob = sum(score_one_at_a_time(sharp_lm, ids))
    assert report.logprob == pytest.approx(logprob, abs=TOLERANCE)
    assert report.ppl_token == pytest.approx(math.exp(-logprob / report.tokens), rel=1e-6)
    assert report.ppl_char == pytest.approx(math.exp(-logprob / 22), rel=1e-6)
    assert report.ppl_word == pytest.approx(math.exp(-logprob / 6), rel=1e-6)
    twice = compute_perplexity(SentenceScorer(sharp_lm), texts + texts[:1])
    assert twice.tokens == report.tokens + len(ids[0]) + 1
    assert twice.logprob == pytest.approx(report.logprob + score_one_at_a_time(sharp_lm, ids[:1])[0], abs=TOLERANCE)
    assert set(report.as_dict()) >= {"ppl_token", "ppl_char", "ppl_word", "tokens", "characters", "words"}


def test_the_mixture_of_two_directions_averages_sentence_probabilities():
    texts = ["in the beginning", "历史告诉我们"]
    forward, backward = SentenceLogprobs([-2.0, -10.0], tokens=9), SentenceLogprobs([-4.0, -3.0], tokens=9)
    report = mix_directions(texts, forward, backward)
    expected = math.log(0.5 * math.exp(-2) + 0.5 * math.exp(-4)) + math.log(0.5 * math.exp(-10) + 0.5 * math.exp(-3))
    assert report.logprob == pytest.approx(expected, rel=1e-12)
    assert report.tokens == 9 and report.characters == forward.report(texts).characters
    identical = mix_directions(texts, forward, forward)  # two equal models mix to themselves
    assert identical.logprob == pytest.approx(sum(forward.logprobs), rel=1e-12)
    with pytest.raises(ValueError, match="every sentence"):
        mix_directions(texts, forward, SentenceLogprobs([-1.0], tokens=3))


def test_perplexity_of_text_is_per_word_with_spaces_and_per_character_without():
    english = PerplexityReport.of(["in the beginning"], logprob=-8.0, tokens=5)
    chinese = PerplexityReport.of(["历史告诉我们"], logprob=-14.0, tokens=4)
    assert english.ppl_text == english.ppl_word == pytest.approx(math.exp(8.0 / 4))
    assert chinese.ppl_word is None
    assert chinese.ppl_text == chinese.ppl_char == pytest.approx(math.exp(14.0 / 7))
