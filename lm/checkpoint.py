"""The model directory: ``config.json``, ``tokenizer.model``, ``model.pt`` (a plain state dict) and,
when the model interpolates one, ``ngram.pt`` (the n-gram's tables, also plain tensors).

Everything needed to score is in the directory, so loading never needs the training flags again.
Weights are read with ``torch.load(weights_only=True)``: a file that carries pickled code is refused
before any of it runs.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from lm import atomic
from lm.model import ModelConfig, RnnLanguageModel
from lm.ngram import NgramError, NgramModel, mix_logprobs
from lm.tokenizer import Tokenizer, TokenizerError

log = logging.getLogger(__name__)

# 2: ngram.pt's keys hold context indices (an older version would misread them, so it must refuse the
# directory); directories of format 1 still load, their n-gram converted.
FORMAT_VERSION = 2
READABLE_FORMAT_VERSIONS = (1, 2)
CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.model"
WEIGHTS_FILE = "model.pt"
NGRAM_FILE = "ngram.pt"
TIED_KEY = "output_linear.weight"
BACKWARD_DIR = "backward"  # a right-to-left model trained beside the forward one (train --direction both)


class ModelDirError(ValueError):
    """A model directory is missing, incomplete, corrupt or inconsistent; the message names the file."""


@dataclass
class LanguageModel:
    """A loaded model directory: the network, its tokenizer and the recorded settings."""

    model: RnnLanguageModel
    tokenizer: Tokenizer
    path: Path
    config: dict = field(default_factory=dict)
    ngram: NgramModel | None = None
    rnn_weight_override: float | None = None  # 1.0: the network alone, 0.0: the n-gram alone (see part())

    @property
    def direction(self) -> str:
        """"forward" (left to right) or "backward" (trained on token-reversed text)."""
        return self.config.get("direction", "forward")

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def rnn_weight(self) -> float:
        """The network's share in the mixture with the n-gram (1.0 without one)."""
        if self.ngram is None:
            return 1.0
        if self.rnn_weight_override is not None:
            return self.rnn_weight_override
        return float(self.config["ngram"]["rnn_weight"])

    def part(self, name: str) -> LanguageModel:
        """The same model scoring with one part only: ``"network"`` or ``"ngram"`` (which needs an n-gram)."""
        if name == "network":
            return replace(self, rnn_weight_override=1.0)
        if name == "ngram" and self.ngram is not None:
            return replace(self, rnn_weight_override=0.0)
        raise ValueError(f"{self.path}: no {name!r} part (parts: network{', ngram' if self.ngram else ''})")

    def mix(self, rnn_logprobs: torch.Tensor, histories: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The model's log-probabilities from the network's: mixed with the n-gram's when there is one.

        rnn_logprobs (M,), histories (M, ngram.history_width) with -1 before ``<s>``, targets (M,).
        Without an n-gram the network's values come back unchanged.
        """
        if self.ngram is None:
            return rnn_logprobs
        return mix_logprobs(rnn_logprobs, self.ngram.logprobs(histories, targets), self.rnn_weight)

    def mix_next(self, rnn_logprobs: torch.Tensor, history: Sequence[int] | torch.Tensor) -> torch.Tensor:
        """Like :meth:`mix` for a whole next-token distribution: rnn_logprobs (V,), history (n-1,) -> (V,)."""
        if self.ngram is None:
            return rnn_logprobs
        ngram = self.ngram.next_logprobs(torch.as_tensor(history, dtype=torch.int64))
        return mix_logprobs(rnn_logprobs, ngram, self.rnn_weight)

    def start_history(self) -> list[int]:
        """The n-gram history after ``<s>``: -1 for the positions before it (empty without an n-gram)."""
        if self.ngram is None:
            return []
        return [-1] * (self.ngram.history_width - 1) + [self.tokenizer.bos_id]


def backward_model_dir(model_dir: Path) -> Path | None:
    """``MODEL_DIR/backward`` when it holds a model (written by training in both directions), else None."""
    path = Path(model_dir) / BACKWARD_DIR
    return path if (path / CONFIG_FILE).is_file() else None


def save_model_dir(
    out_dir: Path,
    model: RnnLanguageModel,
    tokenizer: Tokenizer,
    config: dict,
    weights_dtype: torch.dtype = torch.float32,
    ngram: NgramModel | None = None,
) -> None:
    """Write a complete model directory; each file is replaced atomically, ``config.json`` last.

    With an ``ngram``, ``config["ngram"]`` must say how it mixes (``rnn_weight``, ``order``).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if tokenizer.path.resolve() != (out_dir / TOKENIZER_FILE).resolve():
        data = tokenizer.path.read_bytes()
        atomic.atomic_write_bytes(out_dir / TOKENIZER_FILE, lambda f: f.write(data))
    state = {k: v.detach().to("cpu", weights_dtype).clone() for k, v in model.state_dict().items()}
    if model.config.tie_weights:
        del state[TIED_KEY]  # the same tensor as the embedding; restored on load
    atomic.atomic_write_bytes(out_dir / WEIGHTS_FILE, lambda f: torch.save(state, f))
    if ngram is not None:
        atomic.atomic_write_bytes(out_dir / NGRAM_FILE, lambda f: torch.save(ngram.state_dict(), f))
    else:
        config = {key: value for key, value in config.items() if key != "ngram"}
        (out_dir / NGRAM_FILE).unlink(missing_ok=True)
    full = {
        "format_version": FORMAT_VERSION,
        "model": asdict(model.config),
        "tokenizer_ids": tokenizer.describe(),
        **config,
    }
    atomic.atomic_write_json(out_dir / CONFIG_FILE, full)


def replace_ngram(model_dir: Path, ngram: NgramModel, rnn_weight: float) -> None:
    """Put ``ngram``, mixed at ``rnn_weight``, in place of a model directory's n-gram; the rest is untouched.

    The network's weights keep their bytes (and dtype); ``config.json`` is written last, with this
    version's ``format_version``, since the n-gram's tables are saved in this version's key format.
    """
    if not 0.0 < rnn_weight <= 1.0:
        raise ValueError(f"rnn_weight must be in (0, 1], got {rnn_weight}")
    model_dir = Path(model_dir)
    config = read_config(model_dir)
    del config["model_config"]
    atomic.atomic_write_bytes(model_dir / NGRAM_FILE, lambda f: torch.save(ngram.state_dict(), f))
    settings = config.get("ngram") if isinstance(config.get("ngram"), dict) else {}
    config["ngram"] = {**settings, "order": ngram.order, "num_ngrams": ngram.num_ngrams, "rnn_weight": rnn_weight}
    config["format_version"] = FORMAT_VERSION
    atomic.atomic_write_json(model_dir / CONFIG_FILE, config)


def read_config(model_dir: Path) -> dict:
    """Parse and check ``config.json``."""
    path = Path(model_dir) / CONFIG_FILE
    if not Path(model_dir).is_dir():
        raise ModelDirError(f"{model_dir}: not a model directory (no such directory)")
    if not path.is_file():
        raise ModelDirError(f"{path}: missing; a model directory needs {CONFIG_FILE}, {TOKENIZER_FILE}, {WEIGHTS_FILE}")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelDirError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(config, dict) or config.get("format_version") not in READABLE_FORMAT_VERSIONS:
        found = config.get("format_version") if isinstance(config, dict) else None
        readable = " or ".join(str(v) for v in READABLE_FORMAT_VERSIONS)
        raise ModelDirError(f"{path}: expected format_version {readable}, got {found!r} (written by a newer asr-rescore?)")
    try:
        config["model_config"] = ModelConfig(**config["model"])
    except (KeyError, TypeError, ValueError) as e:
        raise ModelDirError(f"{path}: bad 'model' settings ({e})") from e
    return config


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """Read a state dict without unpickling arbitrary objects."""
    if not path.is_file():
        raise ModelDirError(f"{path}: missing weights file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for truncated, corrupt or unsafe files
        if "weights_only" in str(e) or "Unpickl" in type(e).__name__:
            reason = "refused: the file holds pickled objects other than tensors, which could run code"
        else:
            reason = f"corrupt or truncated: {str(e).splitlines()[0][:160]}"
        raise ModelDirError(f"{path}: cannot load weights ({reason})") from e
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelDirError(f"{path}: expected a state dict of tensors")
    return state


def load_model_dir(model_dir: Path, device: str | torch.device = "cpu") -> LanguageModel:
    """Load a model directory for scoring (eval mode, float32 weights on ``device``)."""
    model_dir = Path(model_dir)
    config = read_config(model_dir)
    try:
        tokenizer = Tokenizer(model_dir / TOKENIZER_FILE)
    except TokenizerError as e:
        raise ModelDirError(str(e)) from e
    model_config: ModelConfig = config.pop("model_config")
    if tokenizer.describe() != config.get("tokenizer_ids") or tokenizer.vocab_size != model_config.vocab_size:
        raise ModelDirError(
            f"{model_dir / TOKENIZER_FILE}: tokenizer ({tokenizer.describe()}) does not match "
            f"{CONFIG_FILE} (vocab_size {model_config.vocab_size}, ids {config.get('tokenizer_ids')})"
        )
    model = RnnLanguageModel(model_config)
    state = load_weights(model_dir / WEIGHTS_FILE)
    if model_config.tie_weights and "input_embedding.weight" in state:
        state[TIED_KEY] = state["input_embedding.weight"]
    try:
        model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    except RuntimeError as e:
        raise ModelDirError(f"{model_dir / WEIGHTS_FILE}: weights do not match {CONFIG_FILE} ({str(e)[:300]})") from e
    model.to(device).eval()
    ngram = load_ngram(model_dir, config, model_config.vocab_size)
    return LanguageModel(model=model, tokenizer=tokenizer, path=model_dir, config=config, ngram=ngram)


def load_ngram(model_dir: Path, config: dict, vocab_size: int) -> NgramModel | None:
    """The interpolated n-gram named by ``config["ngram"]``, or None when the model has none."""
    settings = config.get("ngram")
    if not settings:
        return None
    path = model_dir / NGRAM_FILE
    weight = settings.get("rnn_weight") if isinstance(settings, dict) else None
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0.0 < weight <= 1.0:
        raise ModelDirError(f"{model_dir / CONFIG_FILE}: 'ngram' needs a number rnn_weight in (0, 1], got {weight!r}")
    try:
        ngram = NgramModel.from_state_dict(load_weights(path))
    except NgramError as e:
        raise ModelDirError(f"{path}: {e}") from e
    if ngram.vocab_size != vocab_size:
        raise ModelDirError(f"{path}: n-gram vocabulary {ngram.vocab_size} does not match the model's {vocab_size}")
    return ngram

