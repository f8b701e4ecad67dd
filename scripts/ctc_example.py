#!/usr/bin/env python3
"""Our LSTM LM in torchaudio's CTC beam search, on simulated acoustics: no downloads, a few minutes on one thread.

1. Train a small LM on the first lines of a corpus (or load one with ``-m MODEL_DIR``).
2. Take held-out sentences (lines after the training lines) and make piece-level CTC emissions for them:
   each SentencePiece piece gets one frame, then a blank frame; on some frames a similar-sounding piece
   (small edit distance) outscores the true one, and every frame gets noise.
3. Decode three ways and print the word error rate of each:
   (a) beam search without an LM, (b) beam search with the LM fused (``pipeline.audio.LstmCtcLM``),
   (c) beam search without an LM, then its n-best lists rescored with the LM (``pipeline.rescore``).

    python scripts/ctc_example.py                       # trains for 1-2 minutes first
    python scripts/ctc_example.py -m MODEL_DIR          # any forward model directory
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from lm.checkpoint import LanguageModel, load_model_dir
from lm.scorer import SentenceScorer
from lm.tokenizer import Tokenizer, TokenizerConfig
from lm.launch import run
from lm.session import TrainConfig
from pipeline.audio import build_ctc_decoder, hypotheses_to_utterances, sentencepiece_tokens
from pipeline.metrics import EditCounts, edit_counts, oracle_counts
from pipeline.rescore import Rescorer, Weights

log = logging.getLogger("ctc_example")


def default_corpus() -> Path:
    """``shared/data/en-kjv/train.txt`` inside the checkout, or beside it."""
    root = Path(__file__).resolve().parent.parent
    candidates = [base / "shared" / "data" / "en-kjv" / "train.txt" for base in (root, root.parent)]
    return next((path for path in candidates if path.is_file()), candidates[-1])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("-m", "--model-dir", type=Path, help="use this forward model instead of training one")
    parser.add_argument("--corpus", type=Path, default=default_corpus(), help="one sentence a line")
    parser.add_argument("--train-lines", type=int, default=4000, help="train on the first N lines, test after them")
    parser.add_argument("--train-minutes", type=float, default=3.0, help="cap on the 10 training epochs")
    parser.add_argument("--out-dir", type=Path, help="keep the trained model here; unset: a temporary directory")
    parser.add_argument("--sentences", type=int, default=40, help="held-out sentences to decode")
    parser.add_argument("--confusion", type=float, default=0.3, help="chance a piece with a look-alike is misheard")
    parser.add_argument("--lm-weight", type=float, default=0.8, help="LM weight, fused and in rescoring")
    parser.add_argument("--beam-size", type=int, default=32, help="beam of both decoders")
    parser.add_argument("--nbest", type=int, default=32, help="n-best size for rescoring")
    parser.add_argument("--seed", type=int, default=1234, help="seeds training and the simulated acoustics")
    return parser.parse_args(argv)


# ---------------------------------------------------------------------------------------------------
# The LM


def train_small_model(corpus: Path, lines: int, minutes: float, out_dir: Path, seed: int) -> None:
    """A one-layer LSTM over a 600-piece vocabulary, trained on the first ``lines`` lines.

    Ten epochs take 1-2 minutes on one thread; ``minutes`` only caps slower machines (where the
    time cap, unlike the epoch count, makes the model depend on the machine's speed).
    """
    head = out_dir / "corpus-head.txt"
    with open(corpus, encoding="utf-8") as f:
        head.write_text("".join(line for _, line in zip(range(lines), f)), encoding="utf-8")
    model_settings = dict(embedding_dim=128, hidden_dim=256, num_layers=1, dropout=0.0)
    config = TrainConfig(
        epochs=10, max_minutes=minutes, batch_tokens=2048, lr=5e-3, warmup_steps=50, threads=1, device="cpu",
        precision="fp32", valid_fraction=0.03, patience=3, checkpoint_minutes=60.0, seed=seed,
    )
    log.info("training an LM on the first %d lines of %s (at most %.1f minutes)", lines, corpus, minutes)
    run([head], out_dir / "lm", model_settings, TokenizerConfig(vocab_size=600), config, show_progress=False)


def held_out_sentences(
    corpus: Path, skip: int, count: int, tokenizer: Tokenizer, min_words: int = 8, max_words: int = 24
) -> list[str]:
    """``count`` sentences of moderate length, with no unknown piece, from the lines after the first ``skip``."""
    sentences = []
    with open(corpus, encoding="utf-8") as f:
        for index, line in enumerate(f):
            words = line.split()
            if index < skip or not min_words <= len(words) <= max_words:
                continue
            text = " ".join(words)
            if tokenizer.unk_id not in tokenizer.encode([text])[0]:
                sentences.append(text)
                if len(sentences) == count:
                    break
    return sentences


# ---------------------------------------------------------------------------------------------------
# Simulated acoustics


def edit_distance(a: str, b: str) -> int:
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, 1):
        current = [i]
        for j, char_b in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char_a != char_b)))
        previous = current
    return previous[-1]


def similar_tokens(tokens: list[str], index: int, limit: int = 4) -> list[int]:
    """Token indices that "sound like" ``tokens[index]``: edit distance 1 (2 for long pieces), same word-start."""
    target = tokens[index]
    stem = target.lstrip("\u2581")
    if len(stem) < 2:
        return []
    allowed = 1 if len(stem) < 5 else 2
    candidates = []
    for other, token in enumerate(tokens[2:], 2):  # 0 and 1 are blank and silence
        if other == index or token.startswith("\u2581") != target.startswith("\u2581"):
            continue
        distance = edit_distance(stem, token.lstrip("\u2581"))
        if 0 < distance <= allowed and len(token.lstrip("\u2581")) >= 2:
            candidates.append((distance, other))
    return [other for _, other in sorted(candidates)[:limit]]


@dataclass
class AcousticSettings:
    confusion: float = 0.3  # probability that a similar piece outscores the true one on a frame
    peak: float = 7.0  # logit of the frame's winning token; the rest of the vocabulary sits near 0
    noise: float = 0.5  # standard deviation of Gaussian noise on every logit


def simulate_emissions(
    indices: list[int], similar: dict[int, list[int]], num_tokens: int, settings: AcousticSettings,
    rng: random.Random, generator: torch.Generator,
) -> torch.Tensor:
    """(T, N) float32 CTC log-probs for a piece sequence; T = 2 * pieces + 1, token 0 is blank.

    Frame layout:  blank | p1 | blank | p2 | blank | ...  A misheard frame gives a similar piece a
    logit above the true one (by 0.2-2 nats); otherwise a similar piece trails by 1-3 nats.
    """
    logits = torch.randn(2 * len(indices) + 1, num_tokens, generator=generator) * settings.noise  # (T, N)
    logits[0::2, 0] += settings.peak
    for position, true_index in enumerate(indices):
        frame = 2 * position + 1
        logits[frame, true_index] += settings.peak
        if not similar[true_index]:
            continue
        other = rng.choice(similar[true_index])
        if rng.random() < settings.confusion:
            logits[frame, other] += settings.peak + rng.uniform(0.2, 2.0)
        else:
            logits[frame, other] += settings.peak - rng.uniform(1.0, 3.0)
    return torch.log_softmax(logits, dim=-1).contiguous()


def build_emissions(sentences, tokenizer: Tokenizer, tokens, settings, seed: int) -> list[torch.Tensor]:
    index_of = {token: i for i, token in enumerate(tokens)}
    rng, generator = random.Random(seed), torch.Generator().manual_seed(seed)
    sequences = [[index_of[tokenizer.piece(i)] for i in ids] for ids in tokenizer.encode(sentences)]
    similar = {index: similar_tokens(tokens, index) for index in sorted({i for s in sequences for i in s})}
    return [simulate_emissions(indices, similar, len(tokens), settings, rng, generator) for indices in sequences]


# ---------------------------------------------------------------------------------------------------
# Decoding and scoring


def decode(decoder, emissions: list[torch.Tensor]) -> list:
    """Decoder results (one n-best list each) for a list of (T, N) emissions."""
    return [decoder(e[None])[0] for e in emissions]


def word_errors(references: list[str], hypotheses: list[str]) -> EditCounts:
    return sum((edit_counts(r.split(), h.split()) for r, h in zip(references, hypotheses)), EditCounts())


Row = tuple[str, EditCounts, float]  # system, word error counts, seconds


def run_systems(lm: LanguageModel, sentences: list[str], args: argparse.Namespace) -> list[Row]:
    tokens = sentencepiece_tokens(lm.tokenizer)
    emissions = build_emissions(sentences, lm.tokenizer, tokens, AcousticSettings(confusion=args.confusion), args.seed)
    ids = [f"held-out-{i:03d}" for i in range(len(sentences))]

    started = time.perf_counter()
    plain = build_ctc_decoder(tokens, None, nbest=args.nbest, beam_size=args.beam_size)
    utterances = hypotheses_to_utterances(decode(plain, emissions), tokens, ids, references=sentences)
    best = [u["hypotheses"][0]["text"] if u["hypotheses"] else "" for u in utterances]
    rows = [("(a) beam search, no LM", word_errors(sentences, best), time.perf_counter() - started)]

    started = time.perf_counter()
    fused = build_ctc_decoder(tokens, lm, lm_weight=args.lm_weight, beam_size=args.beam_size)
    best = [u["hypotheses"][0]["text"] for u in hypotheses_to_utterances(decode(fused, emissions), tokens, ids)]
    name = f"(b) LSTM LM fused, weight {args.lm_weight}"
    rows.append((name, word_errors(sentences, best), time.perf_counter() - started))

    started = time.perf_counter()
    rescorer = Rescorer(SentenceScorer(lm), Weights(lm_weight=args.lm_weight, length_bonus=0.0))
    best = [u["best"] for u in rescorer.rescore_utterances(utterances)]
    name = f"(c) no LM, {args.nbest}-best rescored, weight {args.lm_weight}"
    rows.append((name, word_errors(sentences, best), time.perf_counter() - started))

    lists = [(u["reference"], [h["text"] for h in u["hypotheses"]]) for u in utterances]
    oracle = sum((oracle_counts(reference, texts, "word") for reference, texts in lists), EditCounts())
    rows.append((f"    oracle of the {args.nbest}-best lists", oracle, 0.0))
    return rows


def print_table(rows: list[Row], sentences: list[str]) -> None:
    words = sum(len(s.split()) for s in sentences)
    print(f"{len(sentences)} held-out sentences, {words} words")
    print(f"{'system':<48} {'WER':>7} {'errors':>7} {'seconds':>8}")
    for name, counts, seconds in rows:
        print(f"{name:<48} {100 * counts.rate:6.2f}% {counts.errors:>7} {seconds:8.1f}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    if not args.corpus.is_file():
        log.error("%s: no such corpus file (pass --corpus)", args.corpus)
        return 1
    with tempfile.TemporaryDirectory(prefix="ctc-example-") as tmp:
        if args.model_dir:
            lm = load_model_dir(args.model_dir)
        else:
            out_dir = args.out_dir or Path(tmp)
            if (out_dir / "lm" / "model.pt").is_file():
                log.info("%s: a trained model exists, using it", out_dir / "lm")
            else:
                out_dir.mkdir(parents=True, exist_ok=True)
                train_small_model(args.corpus, args.train_lines, args.train_minutes, out_dir, args.seed)
            lm = load_model_dir(out_dir / "lm")
        sentences = held_out_sentences(args.corpus, args.train_lines, args.sentences, lm.tokenizer)
        log.info("decoding %d held-out sentences three ways", len(sentences))
        print_table(run_systems(lm, sentences, args), sentences)
    return 0


if __name__ == "__main__":
    sys.exit(main())
