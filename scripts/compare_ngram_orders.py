"""Does a higher-order n-gram help the mixture? Count a trained model's n-gram again at other orders.

    python scripts/compare_ngram_orders.py exp/zh refs.txt --orders 2 3 4

Needs the model directory's ``train/`` (the tokenised training and validation splits, which training
keeps). For each order the Kneser-Ney n-gram is counted again over the training split, the mixture
weight fitted on the validation split (as training fits it), and the mixture's perplexity measured on
the sentences of ``refs.txt`` with the model's own network: per word for text with spaces, else per
character. Nothing is written.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from lm.checkpoint import LanguageModel, load_model_dir
from lm.data import TokenizedCorpus, collate, load_tokenized, tokenize_to_files
from lm.ngram import NgramError, NgramModel, check_order, fit_mixture_weight, history_windows, mix_logprobs
from lm.perplexity import PerplexityReport

BATCH = 64
NO_CUT = 10**9  # collate cuts training sentences at max_length; scoring keeps them whole


def network_scores(lm: LanguageModel, corpus: TokenizedCorpus) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Each batch's n-gram inputs (x at real positions' rows, targets) and the network's log-probs of every token."""
    batches, logprobs = [], []
    with torch.inference_mode():
        for start in range(0, len(corpus), BATCH):
            indices = torch.arange(start, min(start + BATCH, len(corpus)))
            x, y, lengths = collate(corpus, indices, lm.tokenizer, max_length=NO_CUT)
            real = torch.arange(x.shape[1])[None, :] < lengths[:, None]
            batches.append((x, real, y[real]))
            logprobs.append(-lm.model(x, y, lengths).double()[real])
    return batches, torch.cat(logprobs)


def ngram_scores(ngram: NgramModel, batches: list) -> torch.Tensor:
    return torch.cat([ngram.logprobs(history_windows(x, ngram.history_width)[real], y) for x, real, y in batches])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("text", type=Path, help="held-out sentences, one per line")
    parser.add_argument("--orders", type=int, nargs="+", default=[2, 3, 4])
    args = parser.parse_args()
    torch.set_num_threads(1)

    lm = load_model_dir(args.model)
    lm.model.eval()
    try:
        for order in args.orders:
            check_order(order)
    except NgramError as error:
        raise SystemExit(str(error)) from None
    train, valid = (load_tokenized(args.model / "train" / split) for split in ("train", "valid"))
    if train is None or valid is None:
        raise SystemExit(f"{args.model / 'train'}: no tokenised training and validation splits")
    sentences = [line.strip() for line in args.text.read_text(encoding="utf-8").splitlines() if line.strip()]
    unit = "word" if any(" " in s for s in sentences) else "character"
    with tempfile.TemporaryDirectory() as tmp:
        held_out = tokenize_to_files(sentences, lm.tokenizer, Path(tmp) / "text", reverse=lm.direction == "backward")
        text_batches, text_network = network_scores(lm, held_out)
    valid_batches, valid_network = network_scores(lm, valid)
    per_unit = lambda logprobs: PerplexityReport.of(sentences, float(logprobs.sum()), logprobs.numel()).ppl_text  # noqa: E731
    print(f"network alone: {per_unit(text_network):.2f} per {unit}")

    tok = lm.tokenizer
    for order in args.orders:
        ngram = NgramModel.build(train.ids, train.offsets, order, tok.vocab_size, tok.bos_id, tok.eos_id)
        weight = fit_mixture_weight(valid_network, ngram_scores(ngram, valid_batches))
        text_ngram = ngram_scores(ngram, text_batches)
        mixture = mix_logprobs(text_network, text_ngram, weight)
        print(f"order {order}: {ngram.num_ngrams:,} n-grams, network weight {weight:.3f}; per {unit} "
              f"n-gram alone {per_unit(text_ngram):.2f}, mixture {per_unit(mixture):.2f}", flush=True)


if __name__ == "__main__":
    main()
