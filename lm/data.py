"""Training data: corpus lines -> token ids on disk (memory-mapped) -> padded batches of similar length.

A corpus is tokenised once into two flat files next to the training checkpoints: ``NAME.ids`` (int32
token ids of all sentences, back to back) and ``NAME.offsets`` (int64 start of each sentence), so a
corpus larger than memory trains, and a resumed run skips the tokenisation pass.
"""

from __future__ import annotations

import array
import hashlib
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from lm.tokenizer import Tokenizer

log = logging.getLogger(__name__)


class CorpusError(ValueError):
    """A corpus file is missing, unreadable or empty; the message names the file."""


def iter_corpus_lines(paths: Iterable[Path], exclude: frozenset[str] = frozenset()) -> Iterator[str]:
    """Non-empty, whitespace-normalised lines of the corpus files, minus the ``exclude`` sentences."""
    for path in paths:
        try:
            with open(path, "rb") as f:  # decoded line by line, so an error names the right line
                for line_number, line in enumerate(f, 1):
                    text = " ".join(line.decode("utf-8").split())
                    if text and text not in exclude:
                        yield text
        except FileNotFoundError as e:
            raise CorpusError(f"{path}: no such file") from e
        except IsADirectoryError as e:
            raise CorpusError(f"{path}: is a directory, expected a text file (one sentence per line)") from e
        except UnicodeDecodeError as e:
            raise CorpusError(f"{path}: line {line_number}: not valid UTF-8 ({e.reason})") from e


def is_validation_line(index: int, fraction: float, seed: int) -> bool:
    """Deterministic held-out selection that needs no shuffle of the whole corpus."""
    digest = hashlib.blake2b(f"{seed}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64 < fraction


@dataclass
class TokenizedCorpus:
    """Sentences as token ids: ``ids`` (T,) int32 back to back, ``offsets`` (S + 1,) int64."""

    ids: torch.Tensor
    offsets: torch.Tensor

    def __len__(self) -> int:
        return self.offsets.numel() - 1

    @property
    def lengths(self) -> torch.Tensor:
        return self.offsets[1:] - self.offsets[:-1]

    @property
    def num_tokens(self) -> int:
        return int(self.offsets[-1])

    def sentence(self, index: int) -> torch.Tensor:
        return self.ids[self.offsets[index] : self.offsets[index + 1]]

    def target_counts(self, vocab_size: int, eos_id: int, chunk: int = 1 << 24) -> torch.Tensor:
        """How often each token id is a prediction target: once per occurrence, and ``</s>`` once per sentence.

        Counted in chunks, so a memory-mapped corpus larger than memory is never copied whole.
        """
        counts = torch.zeros(vocab_size, dtype=torch.int64)
        for start in range(0, self.num_tokens, chunk):
            counts += torch.bincount(self.ids[start : start + chunk].long(), minlength=vocab_size)
        counts[eos_id] += len(self)
        return counts


def tokenize_to_files(
    lines: Iterable[str], tokenizer: Tokenizer, prefix: Path, reverse: bool = False, chunk_lines: int = 10000
) -> TokenizedCorpus:
    """Tokenise ``lines`` in chunks into ``prefix.ids`` / ``prefix.offsets`` and memory-map the result."""
    prefix.parent.mkdir(parents=True, exist_ok=True)
    ids_tmp, offsets_tmp = Path(f"{prefix}.ids.tmp"), Path(f"{prefix}.offsets.tmp")
    offsets = [0]
    with open(ids_tmp, "wb") as ids_file:
        chunk: list[str] = []
        for line in lines:
            chunk.append(line)
            if len(chunk) == chunk_lines:
                _append_chunk(chunk, tokenizer, reverse, ids_file, offsets)
                chunk = []
        _append_chunk(chunk, tokenizer, reverse, ids_file, offsets)
    with open(offsets_tmp, "wb") as offsets_file:
        array.array("q", offsets).tofile(offsets_file)  # int64, native order, as torch.from_file reads it
    os.replace(ids_tmp, f"{prefix}.ids")  # ids first: offsets present means the pair is complete
    os.replace(offsets_tmp, f"{prefix}.offsets")
    return load_tokenized(prefix)


def _append_chunk(chunk: list[str], tokenizer: Tokenizer, reverse: bool, ids_file, offsets: list[int]) -> None:
    for ids in tokenizer.encode(chunk):
        if reverse:
            ids.reverse()
        array.array("i", ids).tofile(ids_file)  # int32
        offsets.append(offsets[-1] + len(ids))


def load_tokenized(prefix: Path) -> TokenizedCorpus | None:
    """Memory-map a corpus written by :func:`tokenize_to_files`; None if it is not there."""
    ids_path, offsets_path = Path(f"{prefix}.ids"), Path(f"{prefix}.offsets")
    if not (ids_path.is_file() and offsets_path.is_file()):
        return None
    offsets = torch.from_file(str(offsets_path), size=offsets_path.stat().st_size // 8, dtype=torch.int64)
    num_ids = ids_path.stat().st_size // 4
    ids = torch.from_file(str(ids_path), size=num_ids, dtype=torch.int32) if num_ids else torch.zeros(0, dtype=torch.int32)
    if offsets.numel() == 0 or int(offsets[-1]) != num_ids:
        return None
    return TokenizedCorpus(ids=ids, offsets=offsets)


def make_batches(
    lengths: torch.Tensor, batch_tokens: int, generator: torch.Generator, max_length: int
) -> list[torch.Tensor]:
    """Group sentence indices into batches of similar length with at most ``batch_tokens`` padded tokens.

    Sentences are shuffled, sorted by length (so ties stay shuffled), cut into batches, and the batch
    order is shuffled: every epoch sees a different grouping, and a batch is padded only to its longest
    sentence, which the sort keeps close to the others.
    """
    permutation = torch.randperm(lengths.numel(), generator=generator)
    clipped = (lengths[permutation] + 1).clamp(max=max_length)  # + 1 for </s>
    by_length = torch.argsort(clipped, stable=True)
    order, sorted_lengths = permutation[by_length], clipped[by_length].tolist()
    batches, start = [], 0
    while start < len(order):
        end = start + 1
        while end < len(order) and (end - start + 1) * sorted_lengths[end] <= batch_tokens:
            end += 1
        batches.append(order[start:end])
        start = end
    shuffle = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in shuffle]


def collate(
    corpus: TokenizedCorpus, indices: torch.Tensor, tokenizer: Tokenizer, max_length: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Padded inputs and targets for a batch of sentences.

    Returns x (N, L) int64 ``<s> w1 .. wn`` + pad, y (N, L) int64 ``w1 .. wn </s>`` + pad, and
    lengths (N,) int64 = n + 1. Sentences longer than ``max_length - 1`` tokens are cut (training only).
    """
    sentences = [corpus.sentence(int(i))[: max_length - 1].long() for i in indices]
    lengths = torch.tensor([s.numel() + 1 for s in sentences], dtype=torch.int64)
    L = int(lengths.max())
    x = torch.full((len(sentences), L), tokenizer.pad_id, dtype=torch.int64)
    y = torch.full((len(sentences), L), tokenizer.pad_id, dtype=torch.int64)
    for row, sentence in enumerate(sentences):
        n = sentence.numel()
        x[row, 0] = tokenizer.bos_id
        x[row, 1 : n + 1] = sentence
        y[row, :n] = sentence
        y[row, n] = tokenizer.eos_id
    return x, y, lengths
