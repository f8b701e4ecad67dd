"""Preparing a training run's data once: tokenizer, tokenised train/valid corpora, statistics."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lm import atomic, distributed
from lm.data import CorpusError, TokenizedCorpus, is_validation_line, iter_corpus_lines, load_tokenized, tokenize_to_files
from lm.tokenizer import Tokenizer, TokenizerConfig, train_tokenizer

log = logging.getLogger(__name__)


@dataclass
class TrainingData:
    tokenizer: Tokenizer
    train: TokenizedCorpus
    valid: TokenizedCorpus
    statistics: dict


def read_exclude(paths: Sequence[Path]) -> frozenset[str]:
    """Sentences to drop from the corpus (e.g. evaluation references), one per line."""
    return frozenset(iter_corpus_lines(paths)) if paths else frozenset()


def prepare_data(
    corpus_paths: Sequence[Path],
    work_dir: Path,
    tokenizer_config: TokenizerConfig,
    config,
    valid_paths: Sequence[Path] | None,
    exclude_paths: Sequence[Path],
    world: distributed.World,
    tokenizer_source: Path | None = None,
) -> TrainingData:
    """Train the tokenizer (or copy ``tokenizer_source``) and tokenise the corpora on rank 0, then load.

    Work already done (a previous run's files in ``work_dir``) is reused.
    """
    if world.is_main:
        build_data(corpus_paths, work_dir, tokenizer_config, config, valid_paths, exclude_paths, tokenizer_source)
    distributed.barrier(world)
    tokenizer = Tokenizer(work_dir / "tokenizer.model")
    train, valid = load_tokenized(work_dir / "train"), load_tokenized(work_dir / "valid")
    statistics = json.loads((work_dir / "statistics.json").read_text())
    tokenizer_config.character_coverage = statistics["character_coverage"]
    return TrainingData(tokenizer=tokenizer, train=train, valid=valid, statistics=statistics)


def build_data(
    corpus_paths, work_dir: Path, tokenizer_config: TokenizerConfig, config, valid_paths, exclude_paths,
    tokenizer_source: Path | None,
) -> None:
    if (work_dir / "statistics.json").is_file():
        log.info("%s: tokenised corpus exists, reusing it", work_dir)
        return
    exclude = read_exclude(exclude_paths)
    stats = {"train": {}, "valid": {}}

    def train_lines():
        for index, line in enumerate(iter_corpus_lines(corpus_paths, exclude)):
            if valid_paths or not is_validation_line(index, config.valid_fraction, config.seed):
                yield count(stats["train"], line)

    def valid_lines():
        if valid_paths:
            yield from (count(stats["valid"], line) for line in iter_corpus_lines(valid_paths))
            return
        for index, line in enumerate(iter_corpus_lines(corpus_paths, exclude)):
            if is_validation_line(index, config.valid_fraction, config.seed):
                yield count(stats["valid"], line)

    if tokenizer_source is not None:
        data = Path(tokenizer_source).read_bytes()
        atomic.atomic_write_bytes(work_dir / "tokenizer.model", lambda f: f.write(data))
        tokenizer = Tokenizer(work_dir / "tokenizer.model")
    else:
        log.info("training the %s tokenizer (vocabulary %d)", tokenizer_config.model_type, tokenizer_config.vocab_size)
        tokenizer = train_tokenizer(iter_corpus_lines(corpus_paths, exclude), work_dir / "tokenizer.model", tokenizer_config)
    log.info("tokenising the corpus")
    train = tokenize_to_files(train_lines(), tokenizer, work_dir / "train", reverse=config.reverse)
    valid = tokenize_to_files(valid_lines(), tokenizer, work_dir / "valid", reverse=config.reverse)
    if len(train) == 0 or len(valid) == 0:
        raise CorpusError(f"{', '.join(map(str, corpus_paths))}: too few sentences for training and validation")
    if exclude:
        dropped = sum(1 for line in iter_corpus_lines(corpus_paths) if line in exclude)
        if dropped:
            log.warning("%d corpus lines overlap the --exclude sentences and were dropped", dropped)
        stats["excluded_lines"] = dropped
    stats["train"]["tokens"], stats["valid"]["tokens"] = train.num_tokens, valid.num_tokens
    stats["character_coverage"] = tokenizer_config.character_coverage
    stats["files"] = [str(Path(p).resolve()) for p in corpus_paths]  # absolute: config.json outlives the cwd
    atomic.atomic_write_json(work_dir / "statistics.json", stats)  # last: it marks the data as complete


def count(stats: dict, line: str) -> str:
    """Add a sentence to the running corpus statistics and pass it on."""
    stats["sentences"] = stats.get("sentences", 0) + 1
    stats["characters"] = stats.get("characters", 0) + len(line.replace(" ", ""))
    stats["words"] = stats.get("words", 0) + len(line.split())
    return line
