"""The SentencePiece tokenizer: round trips, special ids, unknown characters, coverage, bad input."""

from __future__ import annotations

import logging

import struct
from pathlib import Path

import pytest
import sentencepiece as spm

from conftest import CHINESE, ENGLISH
from lm.tokenizer import Tokenizer, TokenizerConfig, TokenizerError, train_tokenizer


@pytest.fixture(scope="module")
def chinese_tokenizer(tmp_path_factory) -> Tokenizer:
    return train_tokenizer(CHINESE * 5, tmp_path_factory.mktemp("zh") / "zh.model", TokenizerConfig(vocab_size=60))


@pytest.fixture(scope="module")
def english_tokenizer(tmp_path_factory) -> Tokenizer:
    return train_tokenizer(ENGLISH * 5, tmp_path_factory.mktemp("en") / "en.model", TokenizerConfig(vocab_size=60))


def stored_coverage(model_path: Path, coverage: float) -> bool:
    """True if the model's TrainerSpec records ``character_coverage`` (field 10, a float32: tag 0x55)."""
    return b"\x55" + struct.pack("<f", coverage) in model_path.read_bytes()


@pytest.mark.parametrize("language", ["chinese", "english"])
def test_encode_decode_round_trip(request, language):
    tokenizer = request.getfixturevalue(f"{language}_tokenizer")
    sentences = CHINESE if language == "chinese" else ENGLISH
    encoded = tokenizer.encode(sentences)
    assert all(ids and all(isinstance(i, int) for i in ids) for ids in encoded)
    assert [tokenizer.decode(ids) for ids in encoded] == sentences


def test_chinese_has_no_dummy_prefix_token(chinese_tokenizer):
    # Chinese text has no spaces: no sentence should start with a lone "▁" piece.
    for ids in chinese_tokenizer.encode(CHINESE):
        assert chinese_tokenizer.piece(ids[0]) != "▁"
        assert not chinese_tokenizer.piece(ids[0]).startswith("▁")


def test_english_pieces_mark_word_starts(english_tokenizer):
    ids = english_tokenizer.encode(["the earth"])[0]
    assert english_tokenizer.piece(ids[0]).startswith("▁")


def test_empty_text_encodes_to_empty_list(english_tokenizer):
    assert english_tokenizer.encode(["", "the"])[0] == []


def test_special_ids_are_fixed_and_read_back_from_the_model_file(english_tokenizer):
    tok = english_tokenizer
    assert (tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id) == (0, 1, 2, 3)
    assert len(tok.special_ids) == 4
    raw = spm.SentencePieceProcessor(model_file=str(tok.path))
    assert (raw.pad_id(), raw.unk_id(), raw.bos_id(), raw.eos_id()) == (0, 1, 2, 3)
    reloaded = Tokenizer(tok.path)
    assert reloaded.describe() == tok.describe()
    assert reloaded.describe()["vocab_size"] == raw.get_piece_size()


def test_decode_drops_special_ids(english_tokenizer):
    tok = english_tokenizer
    ids = tok.encode(["the earth"])[0]
    assert tok.decode([tok.bos_id, *ids, tok.eos_id, tok.pad_id]) == "the earth"


@pytest.mark.parametrize("language, text", [("chinese", "犬"), ("english", "ж")])
def test_unseen_characters_map_to_unk(request, language, text):
    tokenizer = request.getfixturevalue(f"{language}_tokenizer")
    ids = tokenizer.encode([text])[0]
    assert tokenizer.unk_id in ids
    assert all(i in (tokenizer.unk_id, tokenizer.processor.piece_to_id("▁")) for i in ids)


def test_seen_text_has_no_unk(chinese_tokenizer, english_tokenizer):
    for tokenizer, sentences in ((chinese_tokenizer, CHINESE), (english_tokenizer, ENGLISH)):
        assert all(tokenizer.unk_id not in ids for ids in tokenizer.encode(sentences))


@pytest.mark.parametrize("lines, expected", [(CHINESE, 0.9995), (ENGLISH, 1.0)])
def test_character_coverage_is_chosen_by_script(tmp_path, lines, expected):
    config = TokenizerConfig(vocab_size=60)
    assert config.character_coverage is None
    tokenizer = train_tokenizer(lines * 5, tmp_path / "t.model", config)
    assert config.character_coverage == expected
    assert stored_coverage(tokenizer.path, expected)  # it reached sentencepiece, not just the config


def test_explicit_character_coverage_is_kept(tmp_path):
    config = TokenizerConfig(vocab_size=60, character_coverage=0.999)
    tokenizer = train_tokenizer(CHINESE * 5, tmp_path / "t.model", config)
    assert config.character_coverage == 0.999
    assert stored_coverage(tokenizer.path, 0.999)


def test_bad_model_type_raises_in_the_config(tmp_path):
    with pytest.raises(TokenizerError, match="model type must be one of.*'wordpiece'"):
        TokenizerConfig(model_type="wordpiece")


def test_bad_model_type_raises_in_training_too(tmp_path):
    config = TokenizerConfig(vocab_size=60)
    config.model_type = "wordpiece"  # past the config's own check: train_tokenizer must refuse it itself
    with pytest.raises(TokenizerError, match="model type must be one of.*'wordpiece'"):
        train_tokenizer(ENGLISH, tmp_path / "t.model", config)
    assert not (tmp_path / "t.model").exists()


def test_a_vocabulary_smaller_than_asked_is_reported(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="lm.tokenizer"):
        tokenizer = train_tokenizer(ENGLISH, tmp_path / "t.model", TokenizerConfig(vocab_size=5000))
    assert tokenizer.vocab_size < 5000
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [f"the corpus supports {tokenizer.vocab_size} pieces, fewer than the 5000 asked for "
                        f"(--vocab-size): using {tokenizer.vocab_size}"]


def test_empty_corpus_raises(tmp_path):
    with pytest.raises(TokenizerError, match="no non-empty lines"):
        train_tokenizer([], tmp_path / "t.model", TokenizerConfig(vocab_size=60))


def test_corrupt_tokenizer_file_raises_naming_it(tmp_path):
    path = tmp_path / "broken.model"
    path.write_bytes(b"\x00not a sentencepiece model" * 8)
    with pytest.raises(TokenizerError, match="broken.model: not a valid sentencepiece model"):
        Tokenizer(path)


def test_truncated_tokenizer_file_raises(tmp_path, english_tokenizer):
    path = tmp_path / "cut.model"
    data = english_tokenizer.path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(TokenizerError, match="cut.model"):
        Tokenizer(path)


def test_missing_tokenizer_file_raises_naming_it(tmp_path):
    with pytest.raises(TokenizerError, match="nowhere.model: no such tokenizer file"):
        Tokenizer(tmp_path / "nowhere.model")
