"""Training a forward and a backward model on one tokenizer (``train --direction both``, and ``auto``
where they can train at once).

Rescoring adds the backward model's score when it finds one in ``MODEL_DIR/backward``: the two read a
hypothesis from opposite ends, so they make different mistakes. Where two processes can train at once
(two or more CPU cores, or a GPU) the directions train concurrently, each with the whole time budget:
the forward model in this process, the backward one in a spawned process that logs to
``MODEL_DIR/backward/train/log.txt``. On one core they train in turn and share the budget.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import sys
import threading
from dataclasses import replace
from pathlib import Path

from lm import distributed
from lm.checkpoint import BACKWARD_DIR
from lm.device import resolve_device
from lm.metrics_log import perplexity_from_loss
from lm.session import TrainConfig, TrainingError, TrainState
from lm.train import train_model
from lm.train_data import prepare_data

log = logging.getLogger(__name__)

LOG_NAME = "log.txt"


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the platform has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def concurrent_threads(config: TrainConfig) -> int | None:
    """Intra-op threads for each of two concurrent training processes, or None to train in turn.

    Concurrent training needs a second core (or a GPU) and a single-process run (not torchrun).
    Each process gets ``--threads`` when given, else half of the cores.
    """
    if distributed.launched_world_size() > 1:
        return None
    cores = usable_cores()
    if cores < 2 and resolve_device(config.device).type != "cuda":
        return None
    return config.threads or max(1, cores // 2)


def choose_direction(config: TrainConfig) -> str:
    """What ``--direction auto`` trains: both where the two can train at once, else forward only.

    In turn, the two would share the time budget, and each then gets too few epochs to pay.
    """
    if concurrent_threads(config) is None:
        log.info("--direction auto: one process at a time here, so a forward model only")
        return "forward"
    return "both"


def train_both_directions(out_dir: Path, config: TrainConfig, **options) -> TrainState:
    """A forward model in ``out_dir`` and a backward one in ``out_dir/backward``; returns the forward run's state."""
    threads = concurrent_threads(config)
    if threads is None:
        return train_in_turn(out_dir, config, **options)
    return train_concurrently(out_dir, replace(config, threads=threads), **options)


def train_in_turn(out_dir: Path, config: TrainConfig, **options) -> TrainState:
    """Forward, then backward: the forward run gets half of the budget, the backward run what it left.

    A resumed run skips a finished forward run.
    """
    budget = config.max_minutes
    forward = train_model(out_dir, config=replace(config, reverse=False, max_minutes=budget / 2 if budget else None),
                          **options)
    remaining = max(budget - forward.elapsed_s / 60, budget / 2) if budget else None
    log.info("forward model done (%d complete epochs, %.1f min); training the backward model into %s",
             forward.epoch, forward.elapsed_s / 60, out_dir / BACKWARD_DIR)
    backward = train_model(out_dir / BACKWARD_DIR, config=replace(config, reverse=True, max_minutes=remaining),
                           tokenizer_source=out_dir / "train" / "tokenizer.model", **options)
    log_backward_done(backward)
    return forward


def train_concurrently(out_dir: Path, config: TrainConfig, **options) -> TrainState:
    """Forward here, backward in a spawned process, both with the whole budget; errors in either stop both."""
    backward_dir = out_dir / BACKWARD_DIR
    forward_config = replace(config, reverse=False)
    # The tokenizer is trained here first: the backward process copies it.
    prepare_data(options["corpus_paths"], out_dir / "train", options["tokenizer_config"], forward_config,
                 options["valid_paths"], options["exclude_paths"], distributed.World())
    log_path = backward_dir / "train" / LOG_NAME
    log_path.parent.mkdir(parents=True, exist_ok=True)
    backward = BackwardProcess(log_path, dict(
        out_dir=backward_dir, config=replace(config, reverse=True),
        tokenizer_source=out_dir / "train" / "tokenizer.model", **options,
    ))
    log.info("training the forward and backward models at once (%d thread%s each, %s); the backward run logs to %s",
             config.threads, "s" if config.threads > 1 else "",
             f"{config.max_minutes:g} min each" if config.max_minutes else "no time limit", log_path)
    try:
        forward = train_model(out_dir, config=forward_config, stop_event=backward.failed, **options)
    except BaseException:
        backward.stop()
        failure = backward.wait_for_failure()
        if failure is not None:
            raise failure from None  # the backward run failed, which stopped this one
        raise
    log.info("forward model done (%d complete epochs, %.1f min); waiting for the backward model",
             forward.epoch, forward.elapsed_s / 60)
    log_backward_done(backward.result())
    return forward


def log_backward_done(state: TrainState) -> None:
    log.info("backward model done: %d complete epochs in %.1f min, best validation perplexity per token %.2f",
             state.epoch, state.elapsed_s / 60, perplexity_from_loss(state.best_valid_loss))


class BackwardProcess:
    """The backward run in a spawned process; its outcome (a state or an exception) comes back through a pipe.

    A failure there sets ``failed``, which stops the forward run as Ctrl-C would (a checkpoint, then stop).
    """

    def __init__(self, log_path: Path, train_options: dict):
        context = multiprocessing.get_context("spawn")
        receiver, sender = context.Pipe(duplex=False)
        self.process = context.Process(
            target=train_in_child, args=(sender, log_path, logging.getLogger().getEffectiveLevel(), train_options),
            name="backward-lm",
        )
        self.process.start()
        sender.close()
        self.receiver = receiver
        self.outcome: tuple[str, object] | None = None
        self.failed = threading.Event()
        self.watcher = threading.Thread(target=self.watch, daemon=True)
        self.watcher.start()

    def watch(self) -> None:
        try:
            self.outcome = self.receiver.recv()
        except EOFError:
            self.outcome = ("error", TrainingError(
                f"the backward training process ended without a result (exit code {self.process.exitcode}; "
                "killed, or out of memory?); run again with --resume to continue"))
        kind, value = self.outcome
        if kind == "error" and not isinstance(value, KeyboardInterrupt):
            log.error("the backward run failed: %s", value)
            self.failed.set()

    def stop(self) -> None:
        """Ask the backward run to checkpoint and stop."""
        if self.process.is_alive():
            os.kill(self.process.pid, signal.SIGINT)

    def wait(self) -> tuple[str, object]:
        self.watcher.join()
        self.process.join()
        return self.outcome

    def wait_for_failure(self) -> BaseException | None:
        """The backward run's exception, once it has stopped (None when it did not fail on its own)."""
        self.wait()
        return self.outcome[1] if self.failed.is_set() else None

    def result(self) -> TrainState:
        kind, value = self.wait()
        if kind == "error":
            raise value
        return value


def train_in_child(sender, log_path: Path, log_level: int, train_options: dict) -> None:
    """Entry point of the backward process: train, then send back the final state or the exception."""
    stream = open(log_path, "a", buffering=1, encoding="utf-8")
    os.dup2(stream.fileno(), 2)  # native warnings too
    sys.stderr = stream
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s: %(message)s", stream=stream, force=True)
    try:
        sender.send(("done", train_model(**train_options)))
    except BaseException as error:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # stopping already; a second Ctrl-C must not cut the reply
        if not isinstance(error, (KeyboardInterrupt, TrainingError)):
            log.exception("backward training failed")
        try:
            sender.send(("error", error))
        except Exception:  # an exception that cannot be pickled (pickling fails before anything is sent)
            sender.send(("error", TrainingError(f"backward training: {error}")))
    finally:
        sender.close()
