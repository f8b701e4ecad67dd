"""What a run leaves to be resumed, and the checks before a run starts or resumes.

``DIR/train/run.json`` records the options a run started with; ``--resume`` refuses other options
that would change what is trained (the corpus, the tokenizer, the model, the direction, the
optimiser), and a fresh run refuses a ``DIR/train`` left by an earlier one. ``DIR/train/last.pt``
is the resumable state, written atomically; it is removed when a run finishes (unless
``keep_checkpoint``), and ``DIR/train/finished.json`` then records the final state.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict
from pathlib import Path

import torch

from lm import atomic, distributed
from lm.checkpoint import FORMAT_VERSION
from lm.session import Session, TrainingError, TrainState, elapsed_s

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "last.pt"
RUN_FILE = "run.json"
FINISHED_FILE = "finished.json"
# Options that may change between a run and its resume: they do not change what is being trained.
RESUMABLE_CHANGES = frozenset({"epochs", "max_minutes", "patience", "threads", "device", "checkpoint_minutes",
                               "keep_checkpoint", "max_bad_steps", "show_progress"})
# Options added since runs started recording run.json, with the value that does what older runs did.
ADDED_OPTIONS = {"average_power": 0.0}
# Model settings added since, and what a run recorded before them counts as having given: None, the rule's
# choice (so a run started before ``layer_dropout`` resumes with the rule's value between the layers).
ADDED_MODEL_SETTINGS = {"layer_dropout": None}


def with_added_options(options: dict) -> dict:
    """Run options with each option and model setting added since in place where they lack it."""
    model = options.get("model")
    added = {"model": {**ADDED_MODEL_SETTINGS, **model}} if isinstance(model, dict) else {}
    return {**ADDED_OPTIONS, **options, **added}


def check_out_dir(out_dir: Path, resume: bool) -> None:
    """Refuse to train over an earlier run, finished or not, unless resuming it (checked by rank 0)."""
    if resume or distributed.launched_rank() != 0:
        return
    work_dir = out_dir / "train"
    if (out_dir / "model.pt").exists() or (work_dir / CHECKPOINT_FILE).exists():
        raise TrainingError(f"{out_dir}: holds an earlier training run; pass --resume to continue it or choose a new directory")
    if work_dir.is_dir() and any(work_dir.iterdir()):
        raise TrainingError(
            f"{work_dir}: left by an earlier run that stopped before its first checkpoint (its corpus, tokenizer "
            "and options would be reused); remove that folder to start afresh, or pass --resume to continue it"
        )


def record_run_options(work_dir: Path, options: dict, resume: bool) -> None:
    """Write the run's options at its start; on resume, refuse options that differ from them (rank 0)."""
    if distributed.launched_rank() != 0:
        return
    path = work_dir / RUN_FILE
    options = with_added_options(options)
    if resume and path.is_file():
        saved = with_added_options(json.loads(path.read_text(encoding="utf-8")))
        changed = sorted(k for k in set(saved) | set(options)
                         if k not in RESUMABLE_CHANGES and saved.get(k) != options.get(k))
        if changed:
            details = "; ".join(f"{k}: {saved.get(k)!r} then, {options.get(k)!r} now" for k in changed)
            raise TrainingError(f"{work_dir}: --resume with other options than the run started with ({details}); "
                                "give the same options, or train into a new directory")
    atomic.atomic_write_json(path, options)


def save_checkpoint(session: Session) -> None:
    """Write ``last.pt`` atomically (rank 0 only); a kill during the write leaves the old one intact."""
    if not session.world.is_main:
        return
    state = session.state
    state.elapsed_s = elapsed_s(session)
    session.started_at = time.monotonic()
    payload = {
        "format_version": FORMAT_VERSION,
        "model": session.model.state_dict(),
        "optimizer": session.optimizer.state_dict(),
        **({"average": session.average.state_dict()} if session.average is not None else {}),
        "state": asdict(state),
        "rng": torch.get_rng_state(),
        "config": json.dumps(asdict(session.config)),
    }
    atomic.atomic_write_bytes(session.work_dir / CHECKPOINT_FILE, lambda f: torch.save(payload, f))


def load_checkpoint(session: Session) -> bool:
    """Restore ``last.pt`` if it exists (weights-only unpickling). Returns True if one was loaded."""
    path = session.work_dir / CHECKPOINT_FILE
    if not path.is_file():
        return False
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        session.model.load_state_dict(payload["model"])
        session.optimizer.load_state_dict(payload["optimizer"])
        if session.average is not None and "average" in payload:
            session.average.load_state_dict(payload["average"])
        state = TrainState(**payload["state"])
    except Exception as e:
        raise TrainingError(f"{path}: cannot resume from this checkpoint ({str(e).splitlines()[0][:200]})") from e
    session.state = state
    torch.set_rng_state(payload["rng"])
    return True


def finished_state(work_dir: Path) -> TrainState | None:
    """The final state of a finished run whose checkpoint was removed, or None."""
    path = work_dir / FINISHED_FILE
    if (work_dir / CHECKPOINT_FILE).is_file() or not path.is_file():
        return None
    try:
        return TrainState(**json.loads(path.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, TypeError) as e:
        raise TrainingError(f"{path}: unreadable ({e}); remove it to train again") from e


def close_finished_run(session: Session) -> None:
    """Record the final state and, unless asked to keep it, remove the resumable checkpoint."""
    if not session.world.is_main:
        return
    atomic.atomic_write_json(session.work_dir / FINISHED_FILE, asdict(session.state))
    checkpoint = session.work_dir / CHECKPOINT_FILE
    if session.config.keep_checkpoint or not checkpoint.is_file():
        return
    size_mb = checkpoint.stat().st_size / 1e6
    checkpoint.unlink()
    log.info("removed the resumable checkpoint %s (%.0f MB; --keep-checkpoint keeps it)", checkpoint, size_mb)


def remove_stale_temporaries(work_dir: Path, world: distributed.World) -> None:
    """Delete temporary files left by a run killed in the middle of a write."""
    if world.is_main:
        for stale in list(work_dir.glob(".*.tmp")) + list(work_dir.parent.glob(".*.tmp")):
            stale.unlink(missing_ok=True)
