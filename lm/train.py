"""Training one LM on a text corpus, resumable at any moment and runnable under torchrun.

Layout of an output directory while training::

    MODEL_DIR/config.json, tokenizer.model, model.pt   the best model so far (a usable model directory)
    MODEL_DIR/ngram.pt                                 the interpolated n-gram (unless --ngram-order 0)
    MODEL_DIR/metrics.jsonl                            one JSON line per validation
    MODEL_DIR/train/run.json                           the options the run started with (checked on resume)
    MODEL_DIR/train/tokenizer.model, statistics.json   the tokenizer and corpus statistics, made once
    MODEL_DIR/train/budget.json                        the epochs the time budget allows, timed once (lm.budget)
    MODEL_DIR/train/{train,valid}.{ids,offsets}        the tokenised corpus, memory-mapped
    MODEL_DIR/train/last.pt                            the resumable state (removed when the run finishes)

Every file is replaced atomically (``metrics.jsonl`` is appended a line at a time), so a run killed at
any moment (SIGKILL included) resumes from the last checkpoint with ``resume=True``.

The parts: :mod:`lm.session` (settings and state), :mod:`lm.schedule` (learning rate),
:mod:`lm.validation`, :mod:`lm.metrics_log`, :mod:`lm.resume` (checkpoints and directory checks),
:mod:`lm.interrupt` (Ctrl-C); :mod:`lm.launch` starts one direction or both.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel

from lm import distributed
from lm.averaging import make_average
from lm.budget import planned_epochs, time_steps
from lm.checkpoint import save_model_dir
from lm.data import TokenizedCorpus, make_batches
from lm.device import resolve_device
from lm.interrupt import catch_sigint
from lm.metrics_log import append_metrics, perplexity_from_loss
from lm.model import ModelConfig, RnnLanguageModel
from lm.ngram import NgramModel
from lm.progress import TrainingProgress
from lm.regularisation import RAISED_FOR_SMALL_CORPUS, SMALL_CORPUS, resolve_regularisation
from lm.resume import (
    close_finished_run, finished_state, load_checkpoint, record_run_options, remove_stale_temporaries, save_checkpoint,
)
from lm.schedule import lr_at, plan_warmup
from lm.session import Session, TrainConfig, TrainingError, TrainState, elapsed_s, forward_batch
from lm.tokenizer import Tokenizer, TokenizerConfig
from lm.train_data import prepare_data
from lm.validation import Validation, validate

__all__ = ["TrainConfig", "TrainState", "TrainingError", "build_session", "train_model"]

log = logging.getLogger(__name__)
FUSED_ADAMW_DEVICES = ("cpu", "cuda")  # where torch.optim.AdamW(fused=True) runs


def compute_loss(session: Session, batch: torch.Tensor, train: bool) -> tuple[torch.Tensor, int]:
    """Summed NLL (nats) and token count of one batch of sentence indices."""
    nll, _, _, lengths = forward_batch(session, batch, train)
    return nll.sum(), int(lengths.sum())


def epoch_batches(session: Session) -> list[torch.Tensor]:
    """This rank's batches of the current epoch; the same on every run with the same seed."""
    config, world = session.config, session.world
    generator = torch.Generator().manual_seed(config.seed * 1000 + session.state.epoch)
    batches = make_batches(session.train_corpus.lengths, config.batch_tokens, generator, config.max_length)
    per_rank = len(batches) // world.size if world.distributed else len(batches)
    return batches[world.rank :: world.size][:per_rank]


def optimizer_step(session: Session, loss: torch.Tensor, tokens: int, lr: float) -> float | None:
    """Backward, clip, step. Returns the loss per token, or None when a non-finite step was skipped."""
    config, state = session.config, session.state
    for group in session.optimizer.param_groups:
        group["lr"] = lr
    session.optimizer.zero_grad(set_to_none=True)
    (loss / tokens).backward()
    parameters = session.model.parameters()
    if config.clip > 0:
        norm = torch.nn.utils.clip_grad_norm_(parameters, config.clip)
        state.clipped_steps += bool(norm > config.clip)
    else:
        norm = torch.nn.utils.get_total_norm([p.grad for p in session.model.parameters() if p.grad is not None])
    value = float(loss.detach()) / tokens
    if not (math.isfinite(value) and math.isfinite(float(norm))):
        state.bad_steps += 1
        session.optimizer.zero_grad(set_to_none=True)
        if state.bad_steps > config.max_bad_steps:
            raise TrainingError(
                f"loss or gradient became non-finite in {state.bad_steps} steps (last loss {value}); "
                f"stopped. The best model in {session.out_dir} and the checkpoint in {session.work_dir} are intact."
            )
        log.warning("step %d: non-finite loss or gradient, step skipped", state.step)
        return None
    session.optimizer.step()
    if session.average is not None:
        session.average.update_parameters(session.model)
    state.step += 1
    return value


def out_of_time(session: Session) -> bool:
    limit = session.config.max_minutes
    return bool(limit) and elapsed_s(session) >= 60 * limit


def should_stop(session: Session) -> bool:
    """Stop on Ctrl-C (or ``stop_event``) or the time budget, agreed by all ranks."""
    if session.stop_event is not None and session.stop_event.is_set():
        session.stop_requested = True
    flag = float(session.stop_requested or out_of_time(session))
    return distributed.all_reduce_sum([flag], session.world)[0] > 0


def train_one_epoch(session: Session, progress: TrainingProgress) -> bool:
    """Train from the saved position to the end of the epoch. Returns False if stopped early."""
    batches = epoch_batches(session)
    state = session.state
    last_checkpoint = time.monotonic()
    progress.start_epoch(state.epoch, len(batches), state.batch_index)
    while state.batch_index < len(batches):
        loss, tokens = compute_loss(session, batches[state.batch_index], train=True)
        value = optimizer_step(session, loss, tokens, lr_at(session))
        state.batch_index += 1
        progress.update(value, tokens * session.world.size, elapsed_s(session), session.config.max_minutes)
        record_train_loss(session, value)
        if should_stop(session):
            return False
        if time.monotonic() - last_checkpoint > 60 * session.config.checkpoint_minutes:
            save_checkpoint(session)
            last_checkpoint = time.monotonic()
    return True


TRAIN_LOSS_EVERY = 50  # steps between the training-loss rows of metrics.jsonl


def record_train_loss(session: Session, value: float | None) -> None:
    """Every ``TRAIN_LOSS_EVERY`` steps, a metrics row with the mean training loss since the last one."""
    if value is not None:
        session.train_loss_sum += value
        session.train_loss_steps += 1
    step = session.state.step
    if not session.world.is_main or session.train_loss_steps == 0 or step % TRAIN_LOSS_EVERY:
        return
    append_metrics(session.out_dir, {
        "event": "train", "step": step, "epoch": session.state.epoch + 1, "elapsed_s": round(elapsed_s(session), 1),
        "train_loss": session.train_loss_sum / session.train_loss_steps, "lr": session.optimizer.param_groups[0]["lr"],
    })
    session.train_loss_sum, session.train_loss_steps = 0.0, 0


def end_of_epoch(session: Session, epoch_done: bool) -> None:
    """Validate the network and its weight average, keep the better one if it is the best so far, log
    metrics, and move the position to the next epoch."""
    state = session.state
    validation = validate(session)
    averaged = validate(session, session.average.module) if session.average is not None else None
    use_average = averaged is not None and averaged.loss < validation.loss
    kept = averaged if use_average else validation
    if epoch_done:  # before saving, so that config.json counts this epoch in "epochs_done"
        state.epoch, state.batch_index = state.epoch + 1, 0
    improved = kept.loss < state.best_valid_loss
    if improved:
        state.best_valid_loss, state.rnn_weight, state.bad_epochs = kept.loss, kept.rnn_weight, 0
        state.best_is_average = use_average
        if session.world.is_main:
            model = session.average.module if use_average else session.model
            save_model_dir(session.out_dir, model, session.tokenizer, model_record(session), ngram=session.ngram)
    elif epoch_done:
        state.bad_epochs += 1
    write_metrics(session, validation, averaged, use_average, improved, epoch_done)


def model_record(session: Session) -> dict:
    """What ``config.json`` records besides the architecture."""
    record = {
        **session.record,
        "direction": "backward" if session.config.reverse else "forward",
        "training": {**asdict(session.config), "steps": session.state.step, "epochs_done": session.state.epoch,
                     "warmup_steps_used": session.state.warmup_steps},
        "best_valid_loss": session.state.best_valid_loss,
        "weights": "average" if session.state.best_is_average else "network",
        "valid_ppl_token": perplexity_from_loss(session.state.best_valid_loss),
    }
    if session.ngram is not None:
        record["ngram"] = {
            "order": session.ngram.order,
            "min_count": session.config.ngram_min_count,
            "num_ngrams": session.ngram.num_ngrams,
            "rnn_weight": session.state.rnn_weight,
        }
    return record


def write_metrics(session: Session, validation: Validation, averaged: Validation | None, use_average: bool,
                  improved: bool, epoch_done: bool) -> None:
    """One ``valid`` row of ``metrics.jsonl``: the network's validation, and its weight average's if any."""
    if not session.world.is_main:
        return
    state = session.state
    row = {
        "event": "valid",
        "epoch": state.epoch if epoch_done else state.epoch + 1,
        "complete_epoch": epoch_done,
        "step": state.step,
        "elapsed_s": round(elapsed_s(session), 1),
        "lr": session.optimizer.param_groups[0]["lr"],
        "valid_loss": validation.loss,
        "valid_ppl_token": perplexity_from_loss(validation.loss),
        "rnn_valid_loss": validation.rnn_loss,
        "rnn_weight": validation.rnn_weight,
        "best": improved,
        **({"average_valid_loss": averaged.loss, "average_rnn_valid_loss": averaged.rnn_loss,
            "average_rnn_weight": averaged.rnn_weight} if averaged is not None else {}),
        "kept": "average" if use_average else "network",
        "clipped_fraction": state.clipped_steps / max(state.step, 1),
        "skipped_steps": state.bad_steps,
    }
    append_metrics(session.out_dir, row)
    average = "" if averaged is None else (
        f"; weight average {perplexity_from_loss(averaged.loss):.2f} ({perplexity_from_loss(averaged.rnn_loss):.2f})")
    log.info(
        "epoch %s: valid ppl/token %.2f (network alone %.2f)%s%s", row["epoch"], row["valid_ppl_token"],
        perplexity_from_loss(validation.rnn_loss), average, " (best)" if improved else "",
    )


def build_session(
    corpus_paths: Sequence[Path],
    out_dir: Path,
    model_settings: dict,
    tokenizer_config: TokenizerConfig,
    config: TrainConfig,
    valid_paths: Sequence[Path] | None,
    exclude_paths: Sequence[Path],
    tokenizer_source: Path | None = None,
    provenance: dict | None = None,
) -> Session:
    """Set up device, process group, data, model and optimiser for a run."""
    device = resolve_device(config.device)
    world = distributed.init_world(device.type)
    if device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    if config.threads:
        torch.set_num_threads(config.threads)
    elif world.distributed and device.type == "cpu":
        torch.set_num_threads(distributed.threads_per_process(world))
    torch.manual_seed(config.seed)
    data = prepare_data(
        corpus_paths, out_dir / "train", tokenizer_config, config, valid_paths, exclude_paths, world, tokenizer_source
    )
    ngram = build_ngram(data.train, data.tokenizer, config)
    record = {**(provenance or {}), "seed": config.seed, "tokenizer": asdict(tokenizer_config), "corpus": data.statistics}

    def new_session(settings: dict) -> Session:
        model_config = ModelConfig(vocab_size=data.tokenizer.vocab_size, **settings)
        torch.manual_seed(config.seed)
        model = RnnLanguageModel(model_config)
        model.init_output_bias(data.train.target_counts(model_config.vocab_size, data.tokenizer.eos_id))
        model = model.to(device)
        optimizer = make_optimizer(model, config, device)
        average = make_average(model, config.average_power) if config.average_power else None
        return Session(
            model=model, optimizer=optimizer, tokenizer=data.tokenizer, train_corpus=data.train,
            valid_corpus=data.valid, config=config, device=device, world=world, out_dir=out_dir, record=record,
            ngram=ngram, average=average,
        )

    def budget_epochs(settings: dict) -> float:  # times a throwaway network with these settings when needed
        probe = new_session(settings)
        batches = epoch_batches(probe)
        step = lambda batch: optimizer_step(probe, *compute_loss(probe, batch, train=True), config.lr)  # noqa: E731
        return planned_epochs(probe.work_dir, lambda: time_steps(step, batches, world), len(batches), config,
                              world.is_main)

    model_settings, note = resolve_regularisation(model_settings, data.statistics["train"]["tokens"],
                                                  data.tokenizer.vocab_size, budget_epochs)
    if note and world.is_main:
        log.info(note)
    return new_session(model_settings)


def make_optimizer(model: torch.nn.Module, config: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW, fused into one kernel where torch has one (CPU and CUDA): the same update, and on a 2-core CPU
    it takes 6 ms of a 300 ms zh-rmrb step instead of 20 (``scripts/bench_train.py --variants``)."""
    fused = True if device.type in FUSED_ADAMW_DEVICES else None
    return torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay, fused=fused)


def build_ngram(corpus: TokenizedCorpus, tokenizer: Tokenizer, config: TrainConfig) -> NgramModel | None:
    """Count the training split into the Kneser-Ney n-gram (seconds; rebuilt identically on resume)."""
    if not config.ngram_order:
        return None
    ngram = NgramModel.build(
        corpus.ids, corpus.offsets, config.ngram_order, tokenizer.vocab_size, tokenizer.bos_id, tokenizer.eos_id,
        config.ngram_min_count,
    )
    log.info("Kneser-Ney %d-gram over the training tokens: %d n-grams", config.ngram_order, ngram.num_ngrams)
    return ngram


def run_options(corpus_paths, model_settings, tokenizer_config, config, valid_paths, exclude_paths,
                tokenizer_source) -> dict:
    """What decides the trained model, as ``train/run.json`` records it (compared on resume)."""
    absolute = lambda paths: [str(Path(p).resolve()) for p in paths or ()]  # noqa: E731
    return {
        "corpus": absolute(corpus_paths), "valid": absolute(valid_paths), "exclude": absolute(exclude_paths),
        "tokenizer": {k: v for k, v in asdict(tokenizer_config).items() if k != "character_coverage"},
        "tokenizer_source": str(Path(tokenizer_source).resolve()) if tokenizer_source else None,
        "model": dict(model_settings), **asdict(config),
    }


def train_model(
    out_dir: Path,
    corpus_paths: Sequence[Path],
    model_settings: dict,
    tokenizer_config: TokenizerConfig,
    config: TrainConfig,
    valid_paths: Sequence[Path] | None,
    exclude_paths: Sequence[Path],
    resume: bool,
    show_progress: bool,
    tokenizer_source: Path | None = None,
    stop_event: threading.Event | None = None,
    provenance: dict | None = None,
) -> TrainState:
    """Train (or resume) one model, in the direction ``config.reverse`` says, into ``out_dir``.

    The caller has checked ``out_dir`` (:func:`lm.resume.check_out_dir`).
    """
    work_dir = out_dir / "train"
    if resume and (done := finished_state(work_dir)) is not None:
        log.info("%s: the run has finished already (%d epochs); nothing to resume", out_dir, done.epoch)
        return done
    options = run_options(corpus_paths, model_settings, tokenizer_config, config, valid_paths, exclude_paths,
                          tokenizer_source)
    record_run_options(work_dir, options, resume)
    session = build_session(
        corpus_paths, out_dir, model_settings, tokenizer_config, config, valid_paths, exclude_paths, tokenizer_source,
        provenance,
    )
    session.stop_event = stop_event
    remove_stale_temporaries(session.work_dir, session.world)
    if resume and load_checkpoint(session):
        log.info("resuming at epoch %d, batch %d", session.state.epoch + 1, session.state.batch_index)
    if session.world.distributed:
        session.ddp_model = DistributedDataParallel(session.model)
    with catch_sigint(session), TrainingProgress(enabled=show_progress and session.world.is_main) as progress:
        train_loop(session, progress)
    finish_run(session)
    return session.state


def plan_steps(session: Session) -> None:
    """Fix the schedule's planned steps and warm-up at the start of a run (a resume keeps them)."""
    state, config = session.state, session.config
    if state.total_steps:
        return
    state.total_steps = config.epochs * len(epoch_batches(session))
    state.warmup_steps = plan_warmup(config.warmup_steps, state.total_steps)


def train_loop(session: Session, progress: TrainingProgress) -> None:
    state, config = session.state, session.config
    plan_steps(session)
    session.model.train()
    while not state.finished and state.epoch < config.epochs:
        epoch_done = train_one_epoch(session, progress)
        end_of_epoch(session, epoch_done)
        stop = not epoch_done or state.bad_epochs >= config.patience
        state.finished = (stop and not session.stop_requested) or state.epoch >= config.epochs
        save_checkpoint(session)
        if stop:
            break
    if session.stop_requested:
        raise KeyboardInterrupt
    if session.world.is_main and (note := overfitting_note(session)):
        log.warning(note)


def overfitting_note(session: Session) -> str | None:
    """A hint when validation stopped improving (the patience ran out) with training time to spare and
    weaker regularisation than a small corpus gets with enough epochs (:mod:`lm.regularisation`)."""
    state, config, model = session.state, session.config, session.model.config
    if state.bad_epochs < config.patience or state.epoch >= config.epochs:
        return None
    left = 60 * config.max_minutes - elapsed_s(session) if config.max_minutes else None
    weaker = [name for name in RAISED_FOR_SMALL_CORPUS if getattr(model, name) < SMALL_CORPUS[name]]
    if not weaker or (left is not None and left < 60):
        return None
    spare = f" with {left / 60:.0f} of the {config.max_minutes:g} minutes left" if left is not None else ""
    options = " ".join(f"--{name.replace('_', '-')} {SMALL_CORPUS[name]}" for name in weaker)
    return (f"validation stopped improving after epoch {state.epoch - state.bad_epochs}{spare}: the network "
            f"overfits this corpus. Stronger regularisation uses the time better: {options} (what a small "
            f"corpus gets with enough epochs; on zh-rmrb, dev CER 8.42% -> 7.97%)")


def finish_run(session: Session) -> None:
    """After the last epoch: record the final state and drop the resumable checkpoint."""
    if session.state.finished:
        close_finished_run(session)
