"""The combination weights: what they are, where the defaults come from, and whether a file fits the model.

Which weights a run uses, first match wins:

1. ``--weights W.json`` (written by ``asr-rescore tune``), checked against the model it was tuned for;
2. ``MODEL_DIR/weights.json`` (``tune -o MODEL_DIR/weights.json`` puts one there), checked the same way;
3. the untuned default: ``lm_weight`` 1 with a *length-neutral* LM term. Each list gets a bonus per word
   (or character) equal to the LM's mean cost per unit over that list's hypotheses, so a hypothesis as
   probable per unit as its neighbours neither gains nor loses by its length. Added as log-probabilities,
   the LM alone would favour every shorter text by its whole cost (an empty text costs ~7 nats, a
   sentence ~40): an empty or truncated hypothesis far below the first-pass best would win.

Options (``--lm-weight``, ``--length-bonus``, ...) then override single values.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from lm.atomic import atomic_write_json, file_sha256
from lm.checkpoint import WEIGHTS_FILE, read_config
from pipeline.confusions import ConfusionTable, table_from_json, table_to_json
from pipeline.errors import UsageError, WeightsFileError

log = logging.getLogger(__name__)

MODEL_WEIGHTS_FILE = "weights.json"  # default weights inside a model directory
DECISIONS = ("map", "mbr")
SEARCHES = ("none", "network")
# temperature: of the first-pass posteriors that weigh the arcs; candidates: paths expanded per list besides
# the inputs (20: as accurate as 50 on both dev sets, at less cost; tune may fit fewer, 0 for none);
# the rest weigh each candidate's arc log posterior, first-pass score (an input's own, else the estimate
# from its arcs' shares), LM scores and length (pipeline.network); arc_weight 1 and first_pass_weight 0
# are what weights files written before the first-pass term meant.
# input_bonus: added to a candidate that is one of the input hypotheses (how far new texts are trusted);
# passes: rounds of local changes around the best candidate (0: none), scored with the same weights;
# mbr_temperature: of the posterior over the scored candidates that decision "mbr" weighs with; None (not
# fitted by tune --decision mbr --search network): the search keeps its highest-scoring candidate.
# stage_budget: new texts each stage of the search (the expanded paths, each pass) may send to the network,
# per list, as a fraction of the list's hypotheses, the most promising by the n-gram (pipeline.screen);
# None: no limit. It bounds the search's cost; files written before it existed get the default.
# confusion_penalty: of an arc the weights' confusion table adds to a slot (pipeline.confusions); None: no
# such arcs (files written before them, and tune where they did not pay). confusion_count_weight: how much
# less a pair the dev lists confused often pays (times the log of its count); None: as 0.
NETWORK_DEFAULTS = {"temperature": 1.0, "candidates": 20, "arc_weight": 1.0, "first_pass_weight": 0.0,
                    "lm_weight": 1.0, "backward_weight": 0.0, "length_bonus": 0.0, "input_bonus": 0.0, "passes": 0,
                    "mbr_temperature": None, "stage_budget": 0.1, "confusion_penalty": None,
                    "confusion_count_weight": None}


def stage_budget(network: dict) -> float | None:
    """The search's stage budget of network settings (the default where a partial dict, as a caller of the
    Python API may give, has none)."""
    return network.get("stage_budget", NETWORK_DEFAULTS["stage_budget"])


@dataclass
class Weights:
    """How the scores are combined; ``asr-rescore tune`` finds them, ``rescore --weights`` reads them.

    ``length_neutral`` adds, on top of ``length_bonus``, the list's mean LM cost per unit (the weighted
    forward and backward LM terms together; see the module docstring). Tuned weights leave it off.
    """

    lm_weight: float = 1.0
    length_bonus: float = 0.0
    score_fields: dict[str, float] = field(default_factory=lambda: {"score": 1.0})
    backward_weight: float = 0.0
    length_neutral: bool = False
    posterior_temperature: float = 1.0  # of the n-best posterior (softmax of total_score / T); tune fits it
    decision: str = "map"  # "map": the highest total; "mbr": the least expected errors (pipeline.mbr)
    mbr_temperature: float = 1.0  # of the posterior MBR weighs with; tune --decision mbr fits it
    search: str = "none"  # "network": best may be a path of the hypotheses' confusion network (pipeline.network)
    network: dict = field(default_factory=lambda: dict(NETWORK_DEFAULTS))  # the search's settings
    confusions: ConfusionTable | None = None  # units the recogniser confuses (pipeline.confusions)

    def __post_init__(self):
        if is_confusion_json(self.confusions):  # as a weights file holds it
            self.confusions = table_from_json(self.confusions)

    def save(self, path: Path, extra: dict | None = None) -> None:
        values = asdict(self)
        if self.confusions:
            values["confusions"] = table_to_json(self.confusions)
        atomic_write_json(Path(path), {"weights": values, **(extra or {})})

    @classmethod
    def load(cls, path: Path) -> Weights:
        """Read the ``weights`` object of a file written by ``tune`` (or a bare weights object)."""
        weights, _ = read_weights_file(path)
        return weights

    def numbers(self) -> list[float]:
        return [self.lm_weight, self.length_bonus, self.backward_weight, self.posterior_temperature,
                self.mbr_temperature, *self.score_fields.values(),
                *(v for v in self.network.values() if v is not None)]  # None: a setting not fitted


def is_finite_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def read_weights_file(path: Path) -> tuple[Weights, dict]:
    """The weights of a file written by ``tune`` and the rest of what it records (model, dev figures)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise WeightsFileError(f"{path}: no such weights file") from e
    except IsADirectoryError as e:
        raise WeightsFileError(f"{path}: is a directory, expected a weights file") from e
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise WeightsFileError(f"{path}: not valid JSON ({e})") from e
    record = data if isinstance(data, dict) else {}
    values = data.get("weights", data) if isinstance(data, dict) else data
    try:
        weights = Weights(**values)
        numbers = weights.numbers()
    except (TypeError, AttributeError) as e:
        names = ", ".join(Weights.__dataclass_fields__)
        raise WeightsFileError(f"{path}: expected a 'weights' object with {names} ({e})") from e
    if not all(is_finite_number(v) for v in numbers):
        raise WeightsFileError(f"{path}: every weight must be a finite number")
    if not isinstance(weights.length_neutral, bool) or not isinstance(weights.score_fields, dict):
        raise WeightsFileError(f"{path}: length_neutral must be true or false, score_fields an object")
    if not weights.posterior_temperature > 0 or not weights.mbr_temperature > 0:
        raise WeightsFileError(f"{path}: posterior_temperature and mbr_temperature must be above 0")
    if weights.search not in SEARCHES:
        raise WeightsFileError(f"{path}: search must be one of {', '.join(SEARCHES)}, got {weights.search!r}")
    if not isinstance(weights.network, dict) or set(weights.network) - set(NETWORK_DEFAULTS):
        raise WeightsFileError(f"{path}: network must be an object with {', '.join(NETWORK_DEFAULTS)}")
    weights.network = {**NETWORK_DEFAULTS, **weights.network}
    count = weights.network["candidates"]
    if (not weights.network["temperature"] > 0 or not isinstance(count, int) or isinstance(count, bool) or count < 0
            or not all(weights.network[name] is None or weights.network[name] > 0
                       for name in ("mbr_temperature", "stage_budget"))):
        raise WeightsFileError(f"{path}: network temperature, mbr_temperature and stage_budget must be above 0 "
                               "and candidates a whole number, 0 or more")
    if weights.decision not in DECISIONS:
        raise WeightsFileError(f"{path}: decision must be one of {', '.join(DECISIONS)}, got {weights.decision!r}")
    penalties = [weights.network["confusion_penalty"], weights.network["confusion_count_weight"]]
    table_ok = weights.confusions is None or is_confusion_table(weights.confusions)
    if not all(p is None or p >= 0 for p in penalties) or not table_ok:
        raise WeightsFileError(f"{path}: network confusion_penalty and confusion_count_weight must be 0 or more, "
                               "and confusions an object of strings")
    return weights, record


def is_confusion_json(value) -> bool:
    """{unit: "unit:count unit:count ..."} (pipeline.confusions), as a weights file holds it."""
    return isinstance(value, dict) and all(isinstance(others, str) for others in value.values())


def is_confusion_table(value) -> bool:
    """{unit: {unit: count}} (pipeline.confusions), counts whole and above 0."""
    return isinstance(value, dict) and all(
        isinstance(others, dict) and all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in others.values())
        for others in value.values())


def model_fingerprint(model_dir: Path) -> str:
    """sha256 of a model directory's ``model.pt``: the same weights wherever the directory lives."""
    return file_sha256(Path(model_dir) / WEIGHTS_FILE)


def model_record(model_dir: Path | None, backward_dir: Path | None) -> dict:
    """What a weights file records about the models it was tuned with."""
    return {
        "model": str(model_dir) if model_dir else None,
        "model_sha256": model_fingerprint(model_dir) if model_dir else None,
        "backward_model": str(backward_dir) if backward_dir else None,
        "backward_model_sha256": model_fingerprint(backward_dir) if backward_dir else None,
    }


def check_tuned_for(path: Path, record: dict, weights: Weights, model_dir: Path, backward_dir: Path | None) -> None:
    """Refuse weights tuned for another model, or a backward weight with no backward model to apply it to.

    The model is identified by its weights' sha256; files from before that was recorded, by its path.
    """
    recorded = record.get("model_sha256")
    legacy = not recorded and record.get("model") and Path(record["model"]).resolve() != Path(model_dir).resolve()
    if (recorded and recorded != model_fingerprint(model_dir)) or legacy:
        raise WeightsFileError(
            f"{path}: tuned for the model {record.get('model')}, but this run uses {model_dir} (other weights); "
            "tune again for this model, or pass --allow-other-model if that is intended"
        )
    if weights.backward_weight and backward_dir is None:
        raise WeightsFileError(
            f"{path}: gives backward_weight {weights.backward_weight:g} (tuned with the backward model "
            f"{record.get('backward_model')}), but {model_dir} has no backward model and none was given "
            "(--backward-model DIR); pass --allow-other-model to leave that term out"
        )
    recorded = record.get("backward_model_sha256")
    if weights.backward_weight and recorded and recorded != model_fingerprint(backward_dir):
        raise WeightsFileError(
            f"{path}: tuned with the backward model {record.get('backward_model')}, but this run uses "
            f"{backward_dir}; tune again, or pass --allow-other-model if that is intended"
        )


def weights_for_model(model_dir: Path) -> tuple[Weights, Path | None, dict]:
    """A model directory's default weights: its ``weights.json`` when it has one, else the untuned default.

    Returns the weights, the file they came from (None for the untuned default) and that file's record.
    """
    path = Path(model_dir) / MODEL_WEIGHTS_FILE
    if path.is_file():
        weights, record = read_weights_file(path)
        log.info("weights from %s (tuned; --weights or options override them)", path)
        return weights, path, record
    read_config(model_dir)  # a missing or broken model directory is reported here, before anything else
    return untuned_weights(), None, {}


def untuned_weights() -> Weights:
    """The default when nothing was tuned: the LM added with weight 1, length-neutral (module docstring)."""
    return Weights(length_neutral=True)


def check_finite_options(**options: float | None) -> None:
    """Refuse NaN and infinite option values up front (Typer's float parser accepts 'nan' and 'inf')."""
    for name, value in options.items():
        if value is not None and not math.isfinite(value):
            raise UsageError(f"--{name.replace('_', '-')} must be a finite number, got {value}")
