"""Finding and loading model directories, including the embedded default model."""

from __future__ import annotations

import os
from pathlib import Path

from lm.checkpoint import LanguageModel, ModelDirError, load_model_dir
from lm.device import resolve_device
from lm.scorer import SentenceScorer

# The small bilingual (Chinese + English) model committed with the project; scripts/train_default_model.sh
# reproduces it. ASR_RESCORE_MODEL points elsewhere.
EMBEDDED_MODEL = Path(__file__).resolve().parent.parent / "data" / "default_model"


def default_model_dir() -> Path:
    override = os.environ.get("ASR_RESCORE_MODEL")
    if override:
        return Path(override)
    if not EMBEDDED_MODEL.is_dir():
        raise ModelDirError(
            f"{EMBEDDED_MODEL}: the embedded default model is not installed here; pass -m MODEL_DIR "
            "(or install the project from its repository with pip install -e .)"
        )
    return EMBEDDED_MODEL


def check_device(name: str) -> str:
    """Refuse a ``--device`` this machine cannot use before anything is loaded; returns the name."""
    resolve_device(name)
    return name


def load_model(model_dir: Path | None, device: str = "cpu") -> LanguageModel:
    return load_model_dir(model_dir or default_model_dir(), resolve_device(device))


def load_scorer(
    model_dir: Path | None, threads: int | None = 1, device: str = "cpu", precision: str = "fp32", batch_tokens: int = 16384
) -> SentenceScorer:
    """Load a model directory (the embedded one when None) and wrap it in the scoring engine."""
    return SentenceScorer(load_model(model_dir, device), batch_tokens=batch_tokens, precision=precision, threads=threads)
