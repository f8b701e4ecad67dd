"""Regularisation that follows the corpus: stronger where the network has few training tokens per weight.

A network with many weights per training token memorises its corpus within the time budget. On zh-rmrb
(314k training tokens; 0.083 per weight of the default one-layer network, 0.054 with two layers) the
large-corpus settings overfit (with two layers, after epoch 10), and ``SMALL_CORPUS`` settings lowered dev
CER from 8.42% to 7.97%. On en-kjv (794k tokens; 0.211 per weight, 0.135 with two layers), which does not
overfit in the budget, the same settings cost 0.2 points of WER (two layers). The threshold lies between
the two corpora for either depth. The strong settings also
need epochs (a slow or busy machine, or a small ``--epochs``, gives few): a small corpus gets them with
``MIN_EPOCHS_FOR_SMALL_CORPUS`` or more in the budget, the large-corpus settings with
``MAX_EPOCHS_FOR_LARGE_CORPUS_SETTINGS`` or fewer, and settings in proportion between the two: on zh-rmrb
with 11 epochs, halfway settings beat the strong ones in perplexity and CER, and the large-corpus ones in
perplexity at the same CER. A setting the caller gives is kept as given; the rule fills the others.
"""

from __future__ import annotations

from collections.abc import Callable

from lm.model import DROPOUTS, ModelConfig, RnnLanguageModel

LARGE_CORPUS = {"dropout": 0.4, "weight_dropout": 0.0, "embedding_dropout": 0.0, "layer_dropout": 0.4}
# zh-rmrb, 22 epochs: between the layers 0.25 (AWD-LSTM's) beat the 0.5 of the embeddings and outputs
# and with 29 epochs, 0.5 on the embeddings and outputs beat AWD-LSTM's 0.4 there
SMALL_CORPUS = {"dropout": 0.5, "weight_dropout": 0.3, "embedding_dropout": 0.1, "layer_dropout": 0.25}
# the settings a small corpus raises (it lowers layer_dropout: less there measured better)
RAISED_FOR_SMALL_CORPUS = tuple(name for name in DROPOUTS if SMALL_CORPUS[name] > LARGE_CORPUS[name])
# between zh-rmrb's 0.083 (one layer) and 0.054 (two), which overfit, and en-kjv's 0.211 and 0.135, which do not
SMALL_CORPUS_TOKENS_PER_WEIGHT = 0.12
# zh-rmrb: the strong settings won with 31 epochs and tied with 16; with 11, halfway settings beat them,
# and with 13 (since --layer-dropout) the rule's 57% did
MIN_EPOCHS_FOR_SMALL_CORPUS = 24
MAX_EPOCHS_FOR_LARGE_CORPUS_SETTINGS = 4  # zh-rmrb: the large-corpus settings beat the strong ones with 3


def architecture(model_settings: dict, vocab_size: int) -> ModelConfig:
    """The network these settings describe, its regularisers left aside."""
    return ModelConfig(vocab_size=vocab_size, **{k: v for k, v in model_settings.items() if k not in DROPOUTS})


def count_weights(network: ModelConfig) -> int:
    """The trainable weights of the network (tied weights counted once)."""
    return sum(p.numel() for p in RnnLanguageModel(network).parameters())


def resolve_regularisation(
    model_settings: dict, train_tokens: int, vocab_size: int, epochs: Callable[[dict], float] | None = None,
) -> tuple[dict, str | None]:
    """``model_settings`` with every regulariser it leaves unset (absent or None) chosen by the corpus.

    For a small corpus, ``epochs(settings)`` (when given) says how many epochs the run can train with the
    small-corpus settings; with fewer than they need, the settings lie between the large-corpus ones and
    theirs (:func:`strength_for_epochs`). Returns the settings and a line
    saying what was chosen and why, or None when all were given.
    """
    missing = [name for name in DROPOUTS if model_settings.get(name) is None]
    if not missing:
        return dict(model_settings), None
    network = architecture(model_settings, vocab_size)
    per_weight = train_tokens / count_weights(network)
    small = per_weight < SMALL_CORPUS_TOKENS_PER_WEIGHT
    why = f"under {SMALL_CORPUS_TOKENS_PER_WEIGHT:g}: a small corpus, which the network would memorise" if small \
        else f"at least {SMALL_CORPUS_TOKENS_PER_WEIGHT:g}"
    strength = 1.0 if small else 0.0
    if small and epochs is not None:
        available = epochs({**model_settings, **{name: SMALL_CORPUS[name] for name in missing}})
        strength = strength_for_epochs(available)
        if strength < 1.0:
            why += (f", but the budget allows about {available:.1f} epochs, fewer than the"
                    f" {MIN_EPOCHS_FOR_SMALL_CORPUS} its strong settings need")
            why += ", so the large-corpus settings" if strength == 0.0 else f", so {strength:.0%} of the way to them"
    chosen = {name: between(LARGE_CORPUS[name], SMALL_CORPUS[name], strength) for name in missing}
    settings = {**model_settings, **chosen}
    values = " ".join(f"--{name.replace('_', '-')} {value:g}" for name, value in chosen.items()
                      if network.stacked or name != "layer_dropout")
    note = f"{train_tokens:,} training tokens, {per_weight:.3f} per network weight ({why}): {values}"
    return settings, note


def strength_for_epochs(available: float) -> float:
    """How far from the large-corpus settings (0) to the strong ones (1) a run of ``available`` epochs goes:
    0 up to ``MAX_EPOCHS_FOR_LARGE_CORPUS_SETTINGS``, 1 from ``MIN_EPOCHS_FOR_SMALL_CORPUS``, linear between."""
    low, high = MAX_EPOCHS_FOR_LARGE_CORPUS_SETTINGS, MIN_EPOCHS_FOR_SMALL_CORPUS
    if available >= high:
        return 1.0
    if available <= low:
        return 0.0
    return (available - low) / (high - low)


def between(weak: float, strong: float, strength: float) -> float:
    """The setting ``strength`` of the way from ``weak`` to ``strong``, to two decimals (as logged)."""
    return round(weak + strength * (strong - weak), 2)
