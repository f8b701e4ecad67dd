"""SentencePiece tokenizer: training on a corpus and encoding sentences to ids.

Special ids are fixed when the tokenizer is trained (pad 0, unk 1, bos 2, eos 3) and always read back
from the ``.model`` file, so nothing downstream hard-codes them. SentencePiece stores its normaliser
(NFKC, whitespace folding) inside the model, so training and scoring normalise text the same way.
"""

from __future__ import annotations

import io
import itertools
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import sentencepiece as spm

from lm import atomic

log = logging.getLogger(__name__)

MODEL_TYPES = ("unigram", "bpe", "char", "word")


class TokenizerError(ValueError):
    """A tokenizer could not be trained or loaded; the message names the file."""


@dataclass
class TokenizerConfig:
    """Settings of SentencePiece training; every field is recorded in the model directory."""

    vocab_size: int = 8000
    model_type: str = "unigram"
    character_coverage: float | None = None  # None: 0.9995 for CJK-heavy text, 1.0 otherwise
    max_sentence_length: int = 8192
    input_sentence_size: int = 2_000_000
    seed_sentencepiece_size: int = 1_000_000

    def __post_init__(self) -> None:
        if self.model_type not in MODEL_TYPES:
            raise TokenizerError(f"model type must be one of {', '.join(MODEL_TYPES)}, got {self.model_type!r}")
        if self.vocab_size < 8:
            raise TokenizerError(f"vocabulary size must be at least 8, got {self.vocab_size}")


# Scripts written without spaces between words, scored and counted one character at a time.
CHARACTER_SCRIPT_RANGES = (
    (0x3040, 0x30FF),  # Hiragana, Katakana
    (0x3400, 0x4DBF),  # CJK Unified Ideographs Extension A
    (0x4E00, 0x9FFF),  # CJK Unified Ideographs
    (0xF900, 0xFAFF),  # CJK Compatibility Ideographs
    (0x20000, 0x3134F),  # CJK Extensions B-G and Compatibility Supplement
)


CJK_CHARACTER = re.compile("[" + "".join(f"{chr(low)}-{chr(high)}" for low, high in CHARACTER_SCRIPT_RANGES) + "]")
SPACE = re.compile(r"\s")


def cjk_fraction(lines: Iterable[str]) -> float:
    """Fraction of non-space characters that are CJK ideographs or kana (regular expressions: rescoring
    asks this of every list)."""
    cjk = total = 0
    for line in lines:
        total += len(line) - len(SPACE.findall(line))
        cjk += len(CJK_CHARACTER.findall(line))
    return cjk / total if total else 0.0


def train_tokenizer(lines: Iterable[str], model_path: Path, config: TokenizerConfig) -> Tokenizer:
    """Train a SentencePiece model on ``lines`` (streamed) and write it to ``model_path``."""
    if config.model_type not in MODEL_TYPES:
        raise TokenizerError(f"model type must be one of {', '.join(MODEL_TYPES)}, got {config.model_type!r}")
    lines = iter(lines)
    head = list(itertools.islice(lines, 20000))
    if not head:
        raise TokenizerError("cannot train a tokenizer: the corpus has no non-empty lines")
    mostly_cjk = cjk_fraction(head) > 0.3
    coverage = config.character_coverage
    if coverage is None:
        # sentencepiece's advice: 0.9995 for languages with rich character sets, 1.0 otherwise.
        coverage = 0.9995 if mostly_cjk else 1.0
    buffer = io.BytesIO()
    kwargs = dict(
        sentence_iterator=itertools.chain(head, lines),
        model_writer=buffer,
        vocab_size=config.vocab_size,
        model_type=config.model_type,
        character_coverage=coverage,
        pad_id=0,
        unk_id=1,
        bos_id=2,
        eos_id=3,
        max_sentence_length=config.max_sentence_length,
        input_sentence_size=config.input_sentence_size,
        seed_sentencepiece_size=config.seed_sentencepiece_size,
        shuffle_input_sentence=True,
        # Chinese has no spaces: a dummy "▁" prefix would be one more token per sentence, always the same.
        add_dummy_prefix=not mostly_cjk,
        hard_vocab_limit=False,  # a small corpus may not support the requested size
        num_threads=1,
        minloglevel=2,
    )
    try:
        spm.SentencePieceTrainer.train(**kwargs)
    except RuntimeError as e:
        raise TokenizerError(f"sentencepiece training failed: {e}") from e
    data = buffer.getvalue()
    atomic.atomic_write_bytes(model_path, lambda f: f.write(data))
    config.character_coverage = coverage
    tokenizer = Tokenizer(model_path)
    if tokenizer.vocab_size < config.vocab_size:
        log.warning("the corpus supports %d pieces, fewer than the %d asked for (--vocab-size): using %d",
                    tokenizer.vocab_size, config.vocab_size, tokenizer.vocab_size)
    return tokenizer


class Tokenizer:
    """A loaded SentencePiece model: ``encode`` texts to id lists without bos/eos."""

    def __init__(self, model_path: Path):
        self.path = Path(model_path)
        if not self.path.is_file():
            raise TokenizerError(f"{self.path}: no such tokenizer file")
        self.processor = spm.SentencePieceProcessor()
        try:
            self.processor.Load(str(self.path))
        except (OSError, RuntimeError) as e:
            raise TokenizerError(f"{self.path}: not a valid sentencepiece model ({e})") from e
        self.pad_id = self.processor.pad_id()
        self.unk_id = self.processor.unk_id()
        self.bos_id = self.processor.bos_id()
        self.eos_id = self.processor.eos_id()
        self.vocab_size = self.processor.get_piece_size()
        if min(self.pad_id, self.bos_id, self.eos_id, self.unk_id) < 0:
            raise TokenizerError(f"{self.path}: the model lacks pad, unk, bos or eos ids")

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text (no bos/eos); an empty text gives an empty list."""
        return self.processor.encode(list(texts), out_type=int)

    def decode(self, ids: Sequence[int]) -> str:
        """Text of a list of ids; special ids are dropped."""
        return self.processor.decode([i for i in ids if i not in self.special_ids])

    def piece(self, token_id: int) -> str:
        return self.processor.id_to_piece(token_id)

    @property
    def special_ids(self) -> frozenset[int]:
        return frozenset((self.pad_id, self.unk_id, self.bos_id, self.eos_id))

    def describe(self) -> dict:
        """Ids and size recorded in ``config.json``, checked again when a model is loaded."""
        return {
            "vocab_size": self.vocab_size,
            "pad_id": self.pad_id,
            "unk_id": self.unk_id,
            "bos_id": self.bos_id,
            "eos_id": self.eos_id,
        }
