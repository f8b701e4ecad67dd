"""The LM in torchaudio's CTC decoder: exact fused scores, bounded state cache, lexicon words, n-best output."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("flashlight.lib.text", reason="the CTC decoder needs flashlight-text")

from torchaudio.models.decoder import CTCHypothesis  # noqa: E402

from conftest import ENGLISH  # noqa: E402
from lm.checkpoint import LanguageModel, load_model_dir, save_model_dir  # noqa: E402
from lm.model import ModelConfig, RnnLanguageModel  # noqa: E402
from lm.scorer import SentenceScorer  # noqa: E402
from conftest import count_ngram  # noqa: E402
from lm.tokenizer import Tokenizer, TokenizerConfig, train_tokenizer  # noqa: E402
from pipeline.audio import (  # noqa: E402
    BLANK_TOKEN,
    SILENCE_TOKEN,
    build_ctc_decoder,
    hypotheses_to_utterances,
    lstm_ctc_lm_class,
    sentencepiece_lexicon,
    sentencepiece_tokens,
)

torch.set_num_threads(1)

CORPUS = ENGLISH[:6]  # the shared tiny English corpus
SENTENCES = ["and god saw the light", "the earth was void", "let there be light and darkness"]


@pytest.fixture(scope="module")
def audio_tokenizer(tmp_path_factory) -> Tokenizer:
    path = tmp_path_factory.mktemp("audio-tok") / "tokenizer.model"
    return train_tokenizer(CORPUS * 5, path, TokenizerConfig(vocab_size=60))


@pytest.fixture(scope="module", params=[0, 3], ids=["lstm", "lstm+trigram"])
def fusion_lm(request, tmp_path_factory, audio_tokenizer) -> LanguageModel:
    """A two-layer LSTM with random weights (exactness needs no training), alone and mixed with a trigram."""
    torch.manual_seed(0)
    config = ModelConfig(
        vocab_size=audio_tokenizer.vocab_size, embedding_dim=16, hidden_dim=24, num_layers=2, dropout=0.0
    )
    out = tmp_path_factory.mktemp("audio-lm")
    ngram = count_ngram(audio_tokenizer, CORPUS, request.param) if request.param else None
    record = {"seed": 0, "ngram": {"order": request.param, "rnn_weight": 0.5}} if ngram else {"seed": 0}
    save_model_dir(out, RnnLanguageModel(config), audio_tokenizer, record, ngram=ngram)
    return load_model_dir(out)


@pytest.fixture(scope="module")
def tokens(audio_tokenizer) -> list[str]:
    return sentencepiece_tokens(audio_tokenizer)


def token_indices(tokenizer: Tokenizer, tokens: list[str], text: str) -> list[int]:
    return [tokens.index(tokenizer.piece(i)) for i in tokenizer.encode([text])[0]]


def spelled_emissions(indices: list[int], num_tokens: int, blank: int = 0, peak: float = 8.0) -> torch.Tensor:
    """(T, num_tokens) float32 log-probs: each token for one frame, then a blank frame."""
    logits = torch.zeros(2 * len(indices) + 1, num_tokens)
    logits[0, blank] = peak
    for position, index in enumerate(indices):
        logits[2 * position + 1, index] = peak
        logits[2 * position + 2, blank] = peak
    return torch.log_softmax(logits, dim=-1).contiguous()


def fused_sentence_logprob(fused, tokenizer: Tokenizer, tokens: list[str], text: str) -> float:
    state = fused.start(False)
    total = 0.0
    for index in token_indices(tokenizer, tokens, text):
        state, score = fused.score(state, index)
        total += score
    return total + fused.finish(state)[1]


@pytest.mark.parametrize("max_cached_states", [4096, 2, 1])
@pytest.mark.parametrize("text", SENTENCES)
def test_fused_piece_scores_sum_to_sentence_score(fusion_lm, audio_tokenizer, tokens, text, max_cached_states):
    fused = lstm_ctc_lm_class()(fusion_lm, tokens=tokens, max_cached_states=max_cached_states)
    expected = SentenceScorer(fusion_lm).score([text])[0]
    assert fused_sentence_logprob(fused, audio_tokenizer, tokens, text) == pytest.approx(expected, abs=1e-4)
    assert len(fused.cache) <= max_cached_states


def test_each_state_costs_one_recurrent_step(fusion_lm, audio_tokenizer, tokens):
    fused = lstm_ctc_lm_class()(fusion_lm, tokens=tokens)
    text = SENTENCES[0]
    indices = token_indices(audio_tokenizer, tokens, text)
    fused_sentence_logprob(fused, audio_tokenizer, tokens, text)
    assert fused.steps == len(indices) + 1  # <s> and each piece, once
    state = fused.start(False)
    for index in indices:  # scoring every token from each state adds no recurrent step
        for other in range(len(tokens)):
            fused.score(state, other)
        state, _ = fused.score(state, index)
    assert fused.steps == len(indices)  # <s> and all pieces but the last (never scored from)


def test_same_token_gives_same_state_object(fusion_lm, tokens):
    fused = lstm_ctc_lm_class()(fusion_lm, tokens=tokens)
    root = fused.start(False)
    first, score_a = fused.score(root, 5)
    second, score_b = fused.score(root, 5)
    assert first is second
    assert score_a == score_b
    assert first.compare(second) == 0 and first.compare(fused.score(root, 6)[0]) != 0


@pytest.mark.parametrize("token", [BLANK_TOKEN, SILENCE_TOKEN])
def test_non_piece_tokens_are_transparent(fusion_lm, tokens, token):
    fused = lstm_ctc_lm_class()(fusion_lm, tokens=tokens)
    root = fused.start(False)
    state, score = fused.score(root, tokens.index(token))
    assert state is root and score == 0.0


def test_start_resets_the_state_cache(fusion_lm, audio_tokenizer, tokens):
    fused = lstm_ctc_lm_class()(fusion_lm, tokens=tokens)
    fused_sentence_logprob(fused, audio_tokenizer, tokens, SENTENCES[2])
    assert fused.num_states > 1 and len(fused.cache) > 0
    fused.start(False)
    assert fused.num_states == 1 and len(fused.cache) == 0 and fused.steps == 0


def test_state_cache_stays_bounded_over_many_utterances(fusion_lm, tokens):
    frames, beam_size, beam_size_token = 12, 8, 6
    decoder = build_ctc_decoder(
        tokens, fusion_lm, beam_size=beam_size, beam_size_token=beam_size_token, max_cached_states=16
    )
    fused = decoder.lm
    generator = torch.Generator().manual_seed(0)
    for _ in range(25):
        emissions = torch.log_softmax(torch.randn(1, frames, len(tokens), generator=generator) * 3, dim=-1)
        decoder(emissions.contiguous())
        assert len(fused.cache) <= 16
        uncached = [node for node in fused.nodes.values() if node not in fused.cache and node is not fused.root]
        assert not any(node.cached for node in uncached)  # evicted nodes hold no tensors
        assert fused.num_states <= 1 + frames * beam_size * beam_size_token
        for node in fused.nodes.values():  # only this utterance's states are held
            while node.parent is not None:
                node = node.parent
            assert node is fused.root


def test_fused_decoding_adds_weighted_lm_score(fusion_lm, audio_tokenizer, tokens):
    text, lm_weight = SENTENCES[1], 0.3
    emissions = spelled_emissions(token_indices(audio_tokenizer, tokens, text), len(tokens))
    decoder = build_ctc_decoder(tokens, fusion_lm, lm_weight=lm_weight, beam_size=10)
    best = decoder(emissions[None])[0][0]
    am_score = float(emissions.max(dim=-1).values.sum())  # the best path follows each frame's peak
    lm_score = SentenceScorer(fusion_lm).score([text])[0]
    utterance = hypotheses_to_utterances([[best]], tokens, ["u1"])[0]
    assert utterance["hypotheses"][0]["text"] == text
    assert best.score == pytest.approx(am_score + lm_weight * lm_score, abs=1e-3)


def test_lexicon_word_score_equals_sum_of_piece_scores(fusion_lm, audio_tokenizer, tokens):
    words = sorted({word for line in CORPUS for word in line.split()})
    word_lm = lstm_ctc_lm_class()(fusion_lm, words=words)
    piece_lm = lstm_ctc_lm_class()(fusion_lm, tokens=tokens)
    multi_piece = [w for w in words if len(audio_tokenizer.encode([w])[0]) > 1]
    assert multi_piece, "the tiny tokenizer should split some words"
    word_state, piece_state = word_lm.start(False), piece_lm.start(False)
    for word in ["and", *multi_piece[:3], "light"]:
        word_state, word_score = word_lm.score(word_state, words.index(word))
        piece_total = 0.0
        for index in token_indices(audio_tokenizer, tokens, word):
            piece_state, score = piece_lm.score(piece_state, index)
            piece_total += score
        assert word_score == pytest.approx(piece_total, abs=1e-5)
    assert word_lm.finish(word_state)[1] == pytest.approx(piece_lm.finish(piece_state)[1], abs=1e-5)


def test_lexicon_sentence_score_matches_scorer(fusion_lm):
    words = sorted({word for line in CORPUS for word in line.split()})
    word_lm = lstm_ctc_lm_class()(fusion_lm, words=words)
    text = "and god divided the darkness"
    state, total = word_lm.start(False), 0.0
    for word in text.split():
        state, score = word_lm.score(state, words.index(word))
        total += score
    total += word_lm.finish(state)[1]
    assert total == pytest.approx(SentenceScorer(fusion_lm).score([text])[0], abs=1e-4)


def test_lexicon_decoding_returns_words_and_fused_score(fusion_lm, audio_tokenizer, tokens):
    words = sorted({word for line in CORPUS for word in line.split()})
    text, lm_weight = "the earth was void", 0.4
    emissions = spelled_emissions(token_indices(audio_tokenizer, tokens, text), len(tokens))
    decoder = build_ctc_decoder(
        tokens, fusion_lm, lexicon=sentencepiece_lexicon(audio_tokenizer, words), lm_weight=lm_weight, beam_size=10
    )
    best = decoder(emissions[None])[0][0]
    assert best.words == text.split()
    am_score = float(emissions.max(dim=-1).values.sum())
    lm_score = SentenceScorer(fusion_lm).score([text])[0]
    assert best.score == pytest.approx(am_score + lm_weight * lm_score, abs=1e-3)
    utterance = hypotheses_to_utterances([[best]], None, ["w1"], references=[text])[0]
    assert utterance == {"id": "w1", "reference": text, "hypotheses": [{"text": text, "score": best.score}]}


def test_decoder_without_lm_gives_nbest_utterances(audio_tokenizer, tokens):
    text = SENTENCES[0]
    emissions = spelled_emissions(token_indices(audio_tokenizer, tokens, text), len(tokens), peak=3.0)
    decoder = build_ctc_decoder(tokens, nbest=10, beam_size=20)
    results = decoder(torch.stack([emissions, emissions]))
    utterances = hypotheses_to_utterances(results, tokens, ["a", "b"], references=[text, text])
    assert [u["id"] for u in utterances] == ["a", "b"]
    first = utterances[0]
    assert first["reference"] == text and first["hypotheses"][0]["text"] == text
    texts = [h["text"] for h in first["hypotheses"]]
    scores = [h["score"] for h in first["hypotheses"]]
    assert len(texts) == len(set(texts)) and scores == sorted(scores, reverse=True)
    assert first["hypotheses"][0]["score"] == pytest.approx(results[0][0].score)


def hypothesis(token_ids: list[int], score: float, words: list[str] | None = None) -> CTCHypothesis:
    return CTCHypothesis(
        tokens=torch.tensor(token_ids, dtype=torch.long), words=words or [], score=score,
        timesteps=torch.arange(len(token_ids), dtype=torch.int32),
    )


def test_pieces_become_words_and_duplicates_keep_the_best_score():
    tokens = ["-", "|", "\u2581in", "\u2581the", "\u2581begin", "ning", "<s>"]
    results = [[
        hypothesis([1, 2, 3, 4, 5, 1], -3.0),
        hypothesis([1, 2, 1, 3, 4, 5, 6], -2.5),  # same words: silence and <s> do not count
        hypothesis([2, 4], -4.0),
    ]]
    (utterance,) = hypotheses_to_utterances(results, tokens, ["u1"])
    assert utterance == {
        "id": "u1",
        "hypotheses": [{"text": "in the beginning", "score": -2.5}, {"text": "in begin", "score": -4.0}],
    }


def test_characters_with_word_delimiter_become_words():
    tokens = ["<b>", "|", "a", "n", "d", "g", "o"]
    results = [[hypothesis([1, 2, 3, 4, 1, 5, 6, 4, 1], -1.0)]]
    (utterance,) = hypotheses_to_utterances(results, tokens, ["c1"], blank_token="<b>")
    assert utterance["hypotheses"] == [{"text": "and god", "score": -1.0}]


def test_empty_decoder_output_gives_empty_list():
    assert hypotheses_to_utterances([[]], ["-", "|"], ["e"]) == [{"id": "e", "hypotheses": []}]


def test_mismatched_ids_are_refused():
    with pytest.raises(ValueError, match="2 decoder results but 1 ids"):
        hypotheses_to_utterances([[], []], ["-", "|"], ["only"])


def test_blank_must_be_a_token(tokens):
    with pytest.raises(ValueError, match="blank_token '#' is not in"):
        build_ctc_decoder(tokens, blank_token="#")


def test_blank_may_not_be_a_piece(audio_tokenizer):
    piece = audio_tokenizer.piece(10)
    with pytest.raises(ValueError, match="also a piece"):
        sentencepiece_tokens(audio_tokenizer, blank_token=piece)


def test_backward_model_is_refused(fusion_lm, tokens):
    backward = LanguageModel(fusion_lm.model, fusion_lm.tokenizer, fusion_lm.path, {"direction": "backward"})
    with pytest.raises(ValueError, match="left-to-right"):
        lstm_ctc_lm_class()(backward, tokens=tokens)


def test_import_does_not_load_torchaudio():
    code = "import sys, pipeline.audio; print('torchaudio' in sys.modules, 'flashlight' in sys.modules)"
    root = Path(__file__).resolve().parent.parent
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "False"]
