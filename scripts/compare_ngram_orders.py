"""Does a higher-order n-gram help the mixture? Count a trained model's n-gram again at other orders.

    python scripts/compare_ngram_orders.py exp/zh refs.txt --orders 2 3 4
    python scripts/compare_ngram_orders.py exp/en refs.txt --orders 5 --write exp/en_5gram

Needs the model directory's ``train/`` (the tokenised training and validation splits, which training
keeps). For each order the Kneser-Ney n-gram is counted again over the training split, the mixture
weight fitted on the validation split (as training fits it), and the mixture's perplexity measured on
the sentences of ``refs.txt`` with the model's own network: per word for text with spaces, else per
character. Nothing is written unless ``--write OUT`` (one order): then OUT is a copy of the model
directory, its ``backward/`` model too, with the n-gram of that order and the mixture weights fitted
again (without ``weights.json``: tune it again).
That is the model ``--ngram-order N`` would have given when training kept the same epoch (the n-gram is
not part of training's loss; it only takes part in choosing the epoch to keep).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import torch

from lm.checkpoint import CONFIG_FILE, LanguageModel, load_model_dir, replace_ngram
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


def fitted_ngram(lm: LanguageModel, train: TokenizedCorpus, valid_batches: list, valid_network: torch.Tensor,
                 order: int) -> tuple[NgramModel, float]:
    """The n-gram of ``order`` counted over ``train`` and the network's mixture weight fitted on validation."""
    tok = lm.tokenizer
    ngram = NgramModel.build(train.ids, train.offsets, order, tok.vocab_size, tok.bos_id, tok.eos_id,
                             int((lm.config.get("ngram") or {}).get("min_count", 1)))
    return ngram, fit_mixture_weight(valid_network, ngram_scores(ngram, valid_batches))


def refit_ngram(model_dir: Path, order: int) -> tuple[NgramModel, float]:
    """The n-gram of ``order`` and its mixture weight for the model in ``model_dir`` (from its ``train/``)."""
    lm = load_model_dir(model_dir)
    train, valid = load_splits(model_dir)
    valid_batches, valid_network = network_scores(lm, valid)
    return fitted_ngram(lm, train, valid_batches, valid_network, order)


def write_with_order(model_dir: Path, out_dir: Path, order: int, forward: tuple[NgramModel, float]) -> None:
    """Copy ``model_dir`` (and its ``backward/``) to ``out_dir`` with the n-gram counted again at ``order``.

    ``forward`` is the forward model's n-gram and weight, already fitted; the backward model's are fitted
    here. Written under a ``.partial`` name and renamed when complete, so ``out_dir`` is never half a model.
    """
    partial = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    fitted = {model_dir: forward}
    if (model_dir / "backward" / CONFIG_FILE).is_file():
        fitted[model_dir / "backward"] = refit_ngram(model_dir / "backward", order)
    for source, (ngram, weight) in fitted.items():
        target = partial / source.relative_to(model_dir)
        shutil.copytree(source, target, ignore=shutil.ignore_patterns("backward", "train", "weights.json"))
        replace_ngram(target, ngram, weight)
        print(f"{source}: {order}-gram, {ngram.num_ngrams:,} n-grams, network weight {weight:.3f}", flush=True)
    partial.rename(out_dir)
    print(f"wrote {out_dir}")


def load_splits(model_dir: Path) -> tuple[TokenizedCorpus, TokenizedCorpus]:
    train, valid = (load_tokenized(model_dir / "train" / split) for split in ("train", "valid"))
    if train is None or valid is None:
        raise SystemExit(f"{model_dir / 'train'}: no tokenised training and validation splits")
    return train, valid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("text", type=Path, help="held-out sentences, one per line")
    parser.add_argument("--orders", type=int, nargs="+", default=[2, 3, 4])
    parser.add_argument("--write", type=Path, metavar="OUT", help="write the model with the n-gram of the one order given")
    args = parser.parse_args()
    torch.set_num_threads(1)

    lm = load_model_dir(args.model)
    try:
        for order in args.orders:
            check_order(order)
    except NgramError as error:
        raise SystemExit(str(error)) from None
    if args.write is not None and (len(args.orders) != 1 or args.write.exists() or lm.ngram is None):
        raise SystemExit(f"--write {args.write}: needs one order, a model with an n-gram, and a new directory")
    train, valid = load_splits(args.model)
    sentences = [line.strip() for line in args.text.read_text(encoding="utf-8").splitlines() if line.strip()]
    unit = "word" if any(" " in s for s in sentences) else "character"
    with tempfile.TemporaryDirectory() as tmp:
        held_out = tokenize_to_files(sentences, lm.tokenizer, Path(tmp) / "text", reverse=lm.direction == "backward")
        text_batches, text_network = network_scores(lm, held_out)
    valid_batches, valid_network = network_scores(lm, valid)
    per_unit = lambda logprobs: PerplexityReport.of(sentences, float(logprobs.sum()), logprobs.numel()).ppl_text  # noqa: E731
    print(f"network alone: {per_unit(text_network):.2f} per {unit}")

    for order in args.orders:
        ngram, weight = fitted_ngram(lm, train, valid_batches, valid_network, order)
        text_ngram = ngram_scores(ngram, text_batches)
        mixture = mix_logprobs(text_network, text_ngram, weight)
        print(f"order {order}: {ngram.num_ngrams:,} n-grams, network weight {weight:.3f}; per {unit} "
              f"n-gram alone {per_unit(text_ngram):.2f}, mixture {per_unit(mixture):.2f}", flush=True)
    if args.write is not None:  # --write takes one order: the loop's last n-gram is the one to write
        write_with_order(args.model, args.write, args.orders[0], (ngram, weight))


if __name__ == "__main__":
    main()
