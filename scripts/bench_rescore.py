"""Benchmark of the scoring engine: naive one-at-a-time vs padded batching vs the pooled prefix trie.

    python scripts/bench_rescore.py                       # 50-best synthetic workload, default model size
    python scripts/bench_rescore.py --dev ../shared/data/zh-rmrb/dev.nbest.json -m data/default_model

All variants run in one process at the same thread count, so the ratios hold on a noisy shared machine.
The synthetic workload uses a model of the given size with random weights (speed does not depend on
the weights); n-best lists are shaped like real ones (see ``synthetic_nbest``). The last variant adds
the n-gram mixture (the model's own n-gram, or for random weights one counted on the workload itself;
its max|diff| is against naive scoring of the same mixture).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from lm.checkpoint import LanguageModel, load_model_dir
from lm.model import ModelConfig, RnnLanguageModel
from lm.ngram import NgramModel
from lm.scorer import SentenceScorer, score_one_at_a_time, score_padded


def synthetic_nbest(utterances: int, hyps: int, vocab: int, seed: int) -> list[list[int]]:
    """Token sequences of ``utterances`` lattice-like n-best lists, ~5% of them duplicates.

    A recogniser's n-best list is the best paths through a lattice: one base sentence with a few
    confusable spans, each hypothesis a combination of choices at those spans (a substitution, or a
    one-token insertion or deletion). The shared dev sets measure 2.4-2.5 tokens per trie node; this
    generator gives about 2.1, a little less sharing than real lists.
    """
    rng = random.Random(seed)
    sequences: list[list[int]] = []
    for _ in range(utterances):
        base = [rng.randrange(4, vocab) for _ in range(max(6, int(rng.gauss(22, 6))))]
        spans = sorted(rng.sample(range(len(base)), k=min(len(base), 8)))
        alternatives = {p: [rng.randrange(4, vocab) for _ in range(rng.randint(1, 3))] for p in spans}
        seen: set[tuple[int, ...]] = set()
        for _ in range(50 * hyps):
            if len(seen) == hyps:
                break
            hyp = []
            for position, token in enumerate(base):
                choice = rng.random()
                if position not in alternatives or choice < 0.75:
                    hyp.append(token)
                elif choice < 0.93:
                    hyp.append(rng.choice(alternatives[position]))
                elif choice < 0.97:
                    hyp += [token, alternatives[position][0]]
            if tuple(hyp) not in seen:
                seen.add(tuple(hyp))
                sequences.append(hyp)
                if rng.random() < 0.05:
                    sequences.append(list(hyp))
    return sequences


def random_model(args) -> LanguageModel:
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=args.vocab, embedding_dim=args.embedding_dim, hidden_dim=args.hidden_dim,
                         num_layers=args.num_layers, cell=args.cell, dropout=0.0)
    tokenizer = SimpleNamespace(bos_id=2, eos_id=3, pad_id=0)
    return LanguageModel(model=RnnLanguageModel(config).eval(), tokenizer=tokenizer, path=Path("random"), config={})


def flops_per_token(config: ModelConfig) -> float:
    """Multiply-adds x 2 of one token through the naive scorer (recurrent stack + full output layer)."""
    gates = {"lstm": 4, "gru": 3, "rnn": 1}[config.cell]
    flops, width = 0.0, config.embedding_dim
    for _ in range(config.num_layers):
        flops += 2 * gates * config.hidden_dim * (width + config.hidden_dim)
        width = config.hidden_dim
    if config.tie_weights and config.hidden_dim != config.embedding_dim:
        flops += 2 * config.hidden_dim * config.embedding_dim
        width = config.embedding_dim
    return flops + 2 * width * config.vocab_size


def matmul_flops_per_s(dtype: torch.dtype, repeats: int = 20) -> float:
    """The machine's measured matrix-multiply throughput at the current thread count."""
    a, b = torch.randn(512, 1024, dtype=dtype), torch.randn(1024, 2048, dtype=dtype)
    torch.mm(a, b)
    best = min(timed(lambda: torch.mm(a, b))[1] for _ in range(repeats))
    return 2 * 512 * 1024 * 2048 / best


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def best_of(fn, repeats: int):
    runs = [timed(fn) for _ in range(repeats)]
    return runs[0][0], min(t for _, t in runs)


def with_ngram(lm: LanguageModel, sequences: list[list[int]], order: int = 4) -> LanguageModel:
    """``lm`` mixed with a Kneser-Ney n-gram: its own if it has one, else one counted on ``sequences``."""
    if lm.ngram is not None:
        return lm
    flat = torch.tensor([t for s in sequences for t in s], dtype=torch.int64)
    offsets = torch.tensor([0] + [len(s) for s in sequences]).cumsum(0)
    vocab = lm.model.config.vocab_size
    ngram = NgramModel.build(flat, offsets, order, vocab, lm.tokenizer.bos_id, lm.tokenizer.eos_id)
    return dataclasses.replace(lm, ngram=ngram, config={**lm.config, "ngram": {"order": order, "rnn_weight": 0.5}})


def run_variants(lm: LanguageModel, sequences: list[list[int]], repeats: int, naive_limit: int) -> list[dict]:
    """Time every variant on the same sequences; naive runs on a prefix and is extrapolated per hypothesis."""
    naive_part = sequences[:naive_limit]
    network = dataclasses.replace(lm, ngram=None)
    mixed = with_ngram(lm, sequences)
    reference, naive_s = best_of(lambda: score_one_at_a_time(network, naive_part), 1)
    naive_s *= len(sequences) / len(naive_part)
    mixed_reference = score_one_at_a_time(mixed, naive_part)
    fp32, bf16 = SentenceScorer(network, precision="fp32"), SentenceScorer(network, precision="bf16")
    mixed_fp32 = SentenceScorer(mixed, precision="fp32")
    variants = [("naive one-at-a-time", None, naive_s)]
    for name, fn, expected in [
        ("padded batching (length-sorted)", lambda: score_padded(network, sequences), reference),
        ("production engine fp32 (trie)", lambda: fp32.score_ids(sequences), reference),
        ("production engine bf16 (trie)", lambda: bf16.score_ids(sequences), reference),
        ("trie fp32 + 4-gram mixture", lambda: mixed_fp32.score_ids(sequences), mixed_reference),
    ]:
        scores, seconds = best_of(fn, repeats)
        error = max(abs(a - b) for a, b in zip(scores[:naive_limit], expected))
        variants.append((name, error, seconds))
    tokens = sum(len(s) + 1 for s in sequences)
    return [
        {"variant": name, "seconds": s, "hyps_per_s": len(sequences) / s, "tokens_per_s": tokens / s,
         "speedup_vs_naive": naive_s / s, "max_abs_diff_vs_naive": err}
        for name, err, s in variants
    ]


def print_table(title: str, rows: list[dict], flops_token: float, tokens: int, peak: dict) -> None:
    print(f"\n## {title}")
    print(f"{'variant':34} {'hyps/s':>9} {'tokens/s':>10} {'x naive':>8} {'x padded':>9} {'max|diff|':>10} {'% matmul peak':>14}")
    padded = next(r for r in rows if r["variant"].startswith("padded"))
    for r in rows:
        useful = flops_token * tokens / r["seconds"]  # FLOPs a naive scorer would need, per second
        reference_peak = peak["bf16"] if "bf16" in r["variant"] else peak["fp32"]
        diff = "-" if r["max_abs_diff_vs_naive"] is None else f"{r['max_abs_diff_vs_naive']:.1e}"
        print(f"{r['variant']:34} {r['hyps_per_s']:9.0f} {r['tokens_per_s']:10.0f} {r['speedup_vs_naive']:8.2f} "
              f"{padded['seconds'] / r['seconds']:9.2f} {diff:>10} {100 * useful / reference_peak:13.1f}%")


def dev_sequences(path: Path, lm: LanguageModel) -> list[list[int]]:
    data = json.loads(path.read_text(encoding="utf-8"))
    texts = [h["text"] for u in data["utterances"] for h in u["hypotheses"]]
    return lm.tokenizer.encode(texts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vocab", type=int, default=8000)
    parser.add_argument("--embedding-dim", type=int, default=ModelConfig.embedding_dim)
    parser.add_argument("--hidden-dim", type=int, default=ModelConfig.hidden_dim)
    parser.add_argument("--num-layers", type=int, default=ModelConfig.num_layers)
    parser.add_argument("--cell", default="lstm")
    parser.add_argument("--utterances", type=int, default=40)
    parser.add_argument("--hyps", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--naive-limit", type=int, default=500, help="hypotheses timed for the naive scorer")
    parser.add_argument("--dev", type=Path, action="append", default=[], help="real n-best files to time too")
    parser.add_argument("-m", "--model", type=Path, default=Path("data/default_model"), help="model for --dev files")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    peak = {"fp32": matmul_flops_per_s(torch.float32), "bf16": matmul_flops_per_s(torch.bfloat16)}
    print(f"threads {args.threads}; measured matmul throughput: fp32 {peak['fp32'] / 1e9:.1f} GFLOP/s, "
          f"bf16 {peak['bf16'] / 1e9:.1f} GFLOP/s")
    lm = random_model(args)
    sequences = synthetic_nbest(args.utterances, args.hyps, args.vocab, seed=0)
    tokens = sum(len(s) + 1 for s in sequences)
    print(f"synthetic: {args.utterances} utterances x {args.hyps} hypotheses, {tokens} tokens; model "
          f"{args.cell} {args.num_layers}x{args.hidden_dim}, embedding {args.embedding_dim}, vocabulary {args.vocab}")
    rows = run_variants(lm, sequences, args.repeats, args.naive_limit)
    print_table("synthetic 50-best workload", rows, flops_per_token(lm.model.config), tokens, peak)
    for path in args.dev:
        real = load_model_dir(args.model)
        seqs = dev_sequences(path, real)
        rows = run_variants(real, seqs, args.repeats, args.naive_limit)
        count = sum(len(s) + 1 for s in seqs)
        print_table(f"{path} ({len(seqs)} hypotheses, model {args.model})", rows, flops_per_token(real.model.config), count, peak)


if __name__ == "__main__":
    main()
