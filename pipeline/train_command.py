"""What ``asr-rescore train`` does once the CLI has gathered its options: check them all, then train."""

from __future__ import annotations

import datetime
import logging
import sys
from pathlib import Path

from pipeline.errors import UsageError

log = logging.getLogger(__name__)

DIRECTIONS = ("auto", "both", "forward", "backward")


def run_train(corpus, output, valid, valid_fraction, exclude, vocab_size, model_type, cell, embedding_dim, hidden_dim,
              num_layers, dropout, layer_dropout, embedding_dropout, weight_dropout, tie_weights, ngram_order, ngram_min_count, epochs,
              max_minutes, batch_tokens, lr, warmup_steps, weight_decay, clip, patience, average_power, seed, device, precision, threads, direction,
              reverse, resume, keep_checkpoint, progress) -> None:
    from lm.bidirectional import choose_direction
    from lm.device import check_training_precision, resolve_device
    from lm.launch import run
    from lm.metrics_log import perplexity_from_loss
    from lm.model import ModelConfig
    from lm.ngram import check_order
    from lm.session import TrainConfig
    from lm.tokenizer import TokenizerConfig

    if Path(output).exists() and not Path(output).is_dir():
        raise UsageError(f"-o {output}: is a file, expected a model directory (new, or an earlier run's with --resume)")
    if direction not in DIRECTIONS:
        raise UsageError(f"--direction must be auto, both, forward or backward, got {direction!r}")
    model_settings = dict(
        embedding_dim=embedding_dim, hidden_dim=hidden_dim, num_layers=num_layers, cell=cell, dropout=dropout,
        tie_weights=tie_weights, embedding_dropout=embedding_dropout, weight_dropout=weight_dropout,
        layer_dropout=layer_dropout,
    )
    try:
        config = TrainConfig(
            epochs=epochs, max_minutes=max_minutes or None, batch_tokens=batch_tokens, lr=lr, warmup_steps=warmup_steps,
            weight_decay=weight_decay, clip=clip, seed=seed, device=device, precision=precision, threads=threads or None,
            valid_fraction=valid_fraction, patience=patience, reverse=direction == "backward" or reverse,
            ngram_order=ngram_order, ngram_min_count=ngram_min_count, keep_checkpoint=keep_checkpoint,
            average_power=average_power,
        )
        tokenizer_config = TokenizerConfig(vocab_size=vocab_size, model_type=model_type)
        given = {name: value for name, value in model_settings.items() if value is not None}  # None: by the corpus
        ModelConfig(vocab_size=vocab_size, **given)  # check the options before any work
        check_training_precision(precision, resolve_device(device), cell)
        if ngram_order:
            check_order(ngram_order)
    except (TypeError, ValueError) as e:
        raise UsageError(str(e)) from e
    if direction == "auto" and not config.reverse:
        direction = choose_direction(config)
    both = direction == "both" and not config.reverse
    state = run(corpus, output, model_settings, tokenizer_config, config, valid, exclude or (), resume, progress, both,
                provenance=provenance(corpus, valid, exclude))
    log.info(
        "done: %d epochs, %d steps; best validation perplexity per token %.2f; model in %s%s",
        state.epoch, state.step, perplexity_from_loss(state.best_valid_loss), output,
        " (backward model in backward/)" if both else "",
    )


def provenance(corpus, valid, exclude) -> dict:
    """What config.json records about how the model was made: version, command line, time, absolute paths."""
    from pipeline.cli import package_version

    return {
        "package_version": package_version(),
        "command_line": sys.argv,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "corpus_files": [str(Path(p).resolve()) for p in corpus],
        "valid_files": [str(Path(p).resolve()) for p in valid or ()],
        "exclude_files": [str(Path(p).resolve()) for p in exclude or ()],
    }
