"""Finding and loading model directories, including the embedded default model."""

from __future__ import annotations

import os
from pathlib import Path

from lm.checkpoint import LanguageModel, ModelDirError, load_model_dir
from lm.device import resolve_device
from lm.scorer import SentenceScorer

# The small bilingual (Chinese + English) model committed with the project; scripts/train_default_model.sh
# reproduces it. In a source checkout (or an editable install) it is data/default_model; a wheel carries
# the same folder as the asr_rescore_data package. ASR_RESCORE_MODEL points elsewhere.
CHECKOUT_MODEL = Path(__file__).resolve().parent.parent / "data" / "default_model"


def embedded_model_dir() -> Path | None:
    """Where the embedded default model is installed, or None."""
    if (CHECKOUT_MODEL / "config.json").is_file():
        return CHECKOUT_MODEL
    try:
        from importlib.resources import files

        packaged = Path(str(files("asr_rescore_data") / "default_model"))
    except (ImportError, TypeError):  # not installed as a package
        return None
    return packaged if (packaged / "config.json").is_file() else None


def default_model_dir() -> Path:
    override = os.environ.get("ASR_RESCORE_MODEL")
    if override:
        return Path(override)
    found = embedded_model_dir()
    if found is None:
        raise ModelDirError(
            f"{CHECKOUT_MODEL}: the embedded default model is not installed here; pass -m MODEL_DIR "
            "(or reinstall the package: its wheel carries the model)"
        )
    return found


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
