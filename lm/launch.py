"""Starting training: one direction or both, after checking the output directories, and leaving the
process group at the end. The command line calls :func:`run`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from lm import distributed
from lm.bidirectional import train_both_directions
from lm.checkpoint import BACKWARD_DIR
from lm.resume import check_out_dir
from lm.session import TrainConfig, TrainState
from lm.tokenizer import TokenizerConfig
from lm.train import train_model


def run(
    corpus_paths: Sequence[Path],
    out_dir: Path,
    model_settings: dict | None = None,
    tokenizer_config: TokenizerConfig | None = None,
    config: TrainConfig | None = None,
    valid_paths: Sequence[Path] | None = None,
    exclude_paths: Sequence[Path] = (),
    resume: bool = False,
    show_progress: bool = True,
    both_directions: bool = False,
    provenance: dict | None = None,
) -> TrainState:
    """Train (or resume) and leave the best model in ``out_dir``. Returns the final state.

    With ``both_directions``, a forward model in ``out_dir`` and a backward one in ``out_dir/backward``
    (:mod:`lm.bidirectional`); the state returned is the forward run's.
    """
    out_dir = Path(out_dir)
    options = dict(
        corpus_paths=corpus_paths, model_settings=model_settings or {},
        tokenizer_config=tokenizer_config or TokenizerConfig(), config=config or TrainConfig(),
        valid_paths=valid_paths, exclude_paths=exclude_paths, resume=resume, show_progress=show_progress,
        provenance=provenance,
    )
    try:
        check_out_dir(out_dir, resume)
        if both_directions:
            check_out_dir(out_dir / BACKWARD_DIR, resume)
            return train_both_directions(out_dir, **options)
        return train_model(out_dir, **options)
    finally:
        distributed.shutdown()
