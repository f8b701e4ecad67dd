"""Training throughput (tokens/second) of the default model size on CPU and, when present, GPU.

    python scripts/bench_train.py                  # CPU fp32 vs bf16 autocast, 1 and 2 threads; CUDA if available
    python scripts/bench_train.py --batch-tokens 16384 --devices cuda
    python scripts/bench_train.py --hidden-dim 512 384 256 --threads 1 --precisions fp32   # model sizes
    python scripts/bench_train.py --threads 1 --precisions fp32 --batch-tokens 512 --length 17 \
        --dropout 0.44 --weight-dropout 0.12 --embedding-dropout 0.04 \
        --variants current unfused-adamw bernoulli-masks before
    python scripts/bench_train.py --threads 1 --precisions bf16 --batch-tokens 512 --length 17 \
        --dropout 0.5 --weight-dropout 0.3 --embedding-dropout 0.1 --variants current float32-loss
    python scripts/bench_train.py --threads 1 --precisions fp32 --batch-tokens 448 512 --corpus exp/zh/train/train \
        --dropout 0.43 --weight-dropout 0.1 --embedding-dropout 0.03 --variants current before-stop-53

Each configuration runs a few warm-up steps, then times full training steps (forward, backward,
clipping, AdamW) on random sentences of one length, or with ``--corpus`` on the batches training makes
of a tokenised corpus (the ``train/train`` files of a model directory: every k-th batch of an epoch,
after one step of each shape among them); the ratios to the first row are printed.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import time
from pathlib import Path
from unittest import mock

import torch
import torch.nn.functional as F

from lm.data import TokenizedCorpus, collate, load_tokenized, make_batches
from lm.device import cpu_trains_in_bf16
from lm.model import ModelConfig, RnnLanguageModel
from lm.session import TrainConfig
from lm.tokenizer import Tokenizer, TokenizerError
from lm.train import FUSED_ADAMW_DEVICES


def random_batch(batch_tokens: int, vocab: int, length: int, device: torch.device):
    rows = max(1, batch_tokens // length)
    x = torch.randint(4, vocab, (rows, length), device=device)
    y = torch.randint(4, vocab, (rows, length), device=device)
    return x, y, torch.full((rows,), length, device=device)


@functools.cache
def load_corpus(prefix: str) -> tuple[TokenizedCorpus, Tokenizer]:
    """A model directory's tokenised corpus (``DIR/train/train``) and the tokenizer beside it, loaded once."""
    corpus = load_tokenized(Path(prefix))
    if corpus is None:
        raise SystemExit(f"{prefix}: no tokenised corpus (.ids and .offsets files) there")
    try:
        return corpus, Tokenizer(Path(prefix).parent / "tokenizer.model")
    except TokenizerError as e:
        raise SystemExit(f"{prefix}: {e}") from e


def corpus_batches(args, device: torch.device, widths_of_eight: bool) -> list[tuple[torch.Tensor, ...]]:
    """Every k-th of the batches training makes of ``args.corpus`` in its first epoch, ``args.steps`` in all."""
    corpus, tokenizer = load_corpus(args.corpus)
    lengths = corpus.lengths
    max_length = TrainConfig.max_length
    if widths_of_eight:  # as batching did before: each sentence counted, and each batch padded, to a multiple of 8
        lengths = up_to_eight(lengths + 1) - 1
    batches = make_batches(lengths, args.batch_tokens, torch.Generator().manual_seed(0), max_length)
    chosen = batches[:: max(1, len(batches) // args.steps)][: args.steps]
    made = [collate(corpus, indices, tokenizer, max_length) for indices in chosen]
    if widths_of_eight:
        made = [(pad_to_eight(x, tokenizer.pad_id), pad_to_eight(y, tokenizer.pad_id), real) for x, y, real in made]
    return [tuple(t.to(device) for t in batch) for batch in made]


def up_to_eight(n):
    """``n`` rounded up to a multiple of 8 (ints or tensors)."""
    return -(-n // 8) * 8


def pad_to_eight(tokens: torch.Tensor, pad_id: int) -> torch.Tensor:
    return F.pad(tokens, (0, up_to_eight(tokens.shape[1]) - tokens.shape[1]), value=pad_id)


# Earlier implementations of a training step's parts, timed beside the current ones: each variant
# names the parts it takes from before.
VARIANTS = {
    "current": frozenset(),
    "unfused-adamw": {"unfused-adamw"},  # AdamW's per-parameter loop
    "bernoulli-masks": {"bernoulli-masks"},  # DropConnect masks from F.dropout
    "before": {"unfused-adamw", "bernoulli-masks"},  # both, as training ran before
    "float32-loss": {"float32-loss"},  # the loss's log-softmax in float32 under bf16 autocast too
    "uniform-masks": {"uniform-masks"},  # DropConnect masks from uniform floats (stops 45 to 52)
    "widths-of-eight": {"widths-of-eight"},  # batches padded to a multiple of 8 tokens (until stop 53; --corpus)
    "before-stop-53": {"uniform-masks", "widths-of-eight"},  # both
}


def uniform_drop_connect(weight: torch.Tensor, p: float) -> torch.Tensor:
    """DropConnect before stop 53: one uniform float per weight."""
    return weight * ((torch.rand_like(weight) >= p).to(weight.dtype) * (1 / (1 - p)))


def float32_token_logprobs(self: RnnLanguageModel, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The training loss before stop 51: the log-softmax in float32 whatever the autocast."""
    return -F.cross_entropy(self.output_linear(hidden).float(), targets, reduction="none")


def tokens_per_second(model_config: ModelConfig, device: torch.device, bf16: bool, args, variant: str) -> float:
    torch.manual_seed(0)
    model = RnnLanguageModel(model_config).to(device).train()
    earlier = VARIANTS[variant]
    fused = "unfused-adamw" not in earlier and device.type in FUSED_ADAMW_DEVICES
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=fused or None)
    masks = (mock.patch("lm.model.drop_connect", F.dropout) if "bernoulli-masks" in earlier
             else mock.patch("lm.model.drop_connect", uniform_drop_connect) if "uniform-masks" in earlier
             else contextlib.nullcontext())
    loss = (mock.patch.object(RnnLanguageModel, "token_logprobs", float32_token_logprobs)
            if "float32-loss" in earlier else contextlib.nullcontext())
    warmup, batches = batches_to_time(args, model_config, device, "widths-of-eight" in earlier)
    with masks, loss:
        for batch in warmup:
            training_step(model, optimizer, device, bf16, batch)
        seconds = sum(training_step(model, optimizer, device, bf16, batch) for batch in batches)
    return sum(int(batch[2].sum()) for batch in batches) / seconds


def batches_to_time(args, model_config: ModelConfig, device: torch.device, widths_of_eight: bool):
    """(warm-up batches, timed batches): with ``--corpus``, one warm-up step for each batch shape."""
    if not args.corpus:
        batch = random_batch(args.batch_tokens, model_config.vocab_size, args.length, device)
        return [batch] * args.warmup, [batch] * args.steps
    batches = corpus_batches(args, device, widths_of_eight)
    one_of_each_shape = list({batch[0].shape: batch for batch in batches}.values())
    steps = max(args.warmup, len(one_of_each_shape))
    return [one_of_each_shape[i % len(one_of_each_shape)] for i in range(steps)], batches


def training_step(model: RnnLanguageModel, optimizer: torch.optim.Optimizer, device: torch.device, bf16: bool,
                  batch: tuple[torch.Tensor, ...]) -> float:
    """Seconds one training step (forward, backward, clipping, AdamW) takes on ``batch``."""
    x, y, lengths = batch
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        loss = model(x, y, lengths).sum() / lengths.sum()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vocab", type=int, default=8000, help="vocabulary size (with --corpus: its tokenizer's)")
    parser.add_argument("--embedding-dim", type=int, default=ModelConfig.embedding_dim)
    parser.add_argument("--hidden-dim", type=int, nargs="+", default=[ModelConfig.hidden_dim],
                        help="recurrent state sizes to compare")
    parser.add_argument("--num-layers", type=int, default=ModelConfig.num_layers)
    parser.add_argument("--batch-tokens", type=int, nargs="+", default=[4096], help="batch sizes to compare")
    parser.add_argument("--length", type=int, default=24, help="tokens per sentence, </s> included")
    parser.add_argument("--corpus", help="time the batches training makes of this tokenised corpus "
                        "(a model directory's train/train, its tokenizer.model beside it) instead of random sentences of --length")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--devices", nargs="+", default=["cpu", "cuda"])
    parser.add_argument("--precisions", nargs="+", choices=["fp32", "bf16"], default=["fp32", "bf16"])
    parser.add_argument("--dropout", type=float, default=ModelConfig.dropout)
    parser.add_argument("--weight-dropout", type=float, default=ModelConfig.weight_dropout)
    parser.add_argument("--embedding-dropout", type=float, default=ModelConfig.embedding_dropout)
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=["current"],
                        help="the current training step and earlier implementations of its parts")
    args = parser.parse_args()
    if args.corpus:  # its ids index the tokenizer's vocabulary
        args.vocab = load_corpus(args.corpus)[1].vocab_size

    sizes = ", ".join(f"{args.num_layers}x{hidden}" for hidden in args.hidden_dim)
    batches = ", ".join(map(str, args.batch_tokens))
    print(f"model lstm {sizes}, embedding {args.embedding_dim}, vocabulary {args.vocab}; batches of {batches} tokens")
    devices = [name for name in args.devices if name != "cuda" or torch.cuda.is_available()]
    if len(devices) < len(args.devices):
        print("cuda: not available here, skipped")
    rows = []
    for hidden in args.hidden_dim:
        config = ModelConfig(vocab_size=args.vocab, embedding_dim=args.embedding_dim, hidden_dim=hidden,
                             num_layers=args.num_layers, dropout=args.dropout, weight_dropout=args.weight_dropout,
                             embedding_dropout=args.embedding_dropout)
        label = f"{args.num_layers}x{hidden} " if len(args.hidden_dim) > 1 else ""
        rows += measure_size(config, devices, args, label)
    base = rows[0][1]
    print(f"{'configuration':60} {'tokens/s':>10} {'ratio':>7}")
    for name, speed in rows:
        print(f"{name:60} {speed:10,.0f} {speed / base:7.2f}")


def measure_size(config: ModelConfig, devices: list[str], args, label: str) -> list[tuple[str, float]]:
    """(name, tokens/s) of one model size on each device, thread count and precision asked for."""
    rows = []
    for device_name in devices:
        device = torch.device(device_name)
        for threads in args.threads if device.type == "cpu" else [torch.get_num_threads()]:
            torch.set_num_threads(threads)
            for precision in args.precisions:
                bf16 = precision == "bf16"
                name = f"{label}{device_name} {'bf16 autocast' if bf16 else 'fp32'} {threads} thread(s)"
                if bf16 and device.type == "cpu" and not cpu_trains_in_bf16(config.cell):
                    print(f"{name}: not supported here (no bfloat16 kernel for the cell on this CPU)")
                    continue
                for batch_tokens in args.batch_tokens:
                    for variant in args.variants:
                        suffix = f" batch {batch_tokens}" if len(args.batch_tokens) > 1 else ""
                        suffix += f" {variant}" if len(args.variants) > 1 else ""
                        run = argparse.Namespace(**{**vars(args), "batch_tokens": batch_tokens})
                        rows.append((name + suffix, tokens_per_second(config, device, bf16, run, variant)))
    return rows


if __name__ == "__main__":
    main()
