"""Training the LM on a text corpus, resumable at any moment and runnable under torchrun.

Layout of an output directory while training::

    MODEL_DIR/config.json, tokenizer.model, model.pt   the best model so far (a usable model directory)
    MODEL_DIR/ngram.pt                                 the interpolated n-gram (unless --ngram-order 0)
    MODEL_DIR/metrics.jsonl                            one JSON line per validation
    MODEL_DIR/train/tokenizer.model                    the tokenizer, trained once
    MODEL_DIR/train/{train,valid}.{ids,offsets}        the tokenised corpus, memory-mapped
    MODEL_DIR/train/last.pt                            the resumable state (weights, optimiser, position)

Every file is replaced atomically, so a run killed at any moment (SIGKILL included) resumes from the
last checkpoint with ``resume=True``.
"""

from __future__ import annotations

import json
import logging
import math
import signal
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel

from lm import distributed
from lm.checkpoint import FORMAT_VERSION, atomic_write_bytes, save_model_dir
from lm.data import TokenizedCorpus, collate, make_batches
from lm.model import ModelConfig, RnnLanguageModel
from lm.ngram import NgramModel, fit_mixture_weight, history_windows, mix_logprobs
from lm.progress import TrainingProgress
from lm.tokenizer import Tokenizer, TokenizerConfig
from lm.train_data import prepare_data

log = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    """Training cannot start or continue; the message says why and what is kept."""


@dataclass
class TrainConfig:
    """Optimisation settings; CLI options map onto these fields one to one."""

    epochs: int = 30
    max_minutes: float | None = 50.0
    batch_tokens: int = 2048
    lr: float = 3e-3
    min_lr_ratio: float = 0.02
    warmup_steps: int = 100
    weight_decay: float = 0.01
    clip: float = 1.0  # gradient-norm clipping threshold; 0 disables it
    seed: int = 1234
    device: str = "auto"
    precision: str = "auto"  # auto | fp32 | bf16
    threads: int | None = None
    valid_fraction: float = 0.02
    patience: int = 4
    max_length: int = 256
    reverse: bool = False
    checkpoint_minutes: float = 5.0
    max_bad_steps: int = 20
    ngram_order: int = 4  # Kneser-Ney n-gram interpolated with the network; 0: none
    ngram_min_count: int = 1  # drop n-grams (order 2+) seen fewer times, for a smaller model


@dataclass
class TrainState:
    """Where training stands; saved in ``last.pt`` next to the weights and optimiser state."""

    epoch: int = 0
    batch_index: int = 0
    step: int = 0
    elapsed_s: float = 0.0
    best_valid_loss: float = math.inf
    rnn_weight: float = 1.0  # the network's share in the n-gram mixture of the best model
    bad_epochs: int = 0
    bad_steps: int = 0
    clipped_steps: int = 0
    finished: bool = False


@dataclass
class Session:
    """Everything one training run passes between its parts."""

    model: RnnLanguageModel
    optimizer: torch.optim.Optimizer
    tokenizer: Tokenizer
    train_corpus: TokenizedCorpus
    valid_corpus: TokenizedCorpus
    config: TrainConfig
    device: torch.device
    world: distributed.World
    out_dir: Path
    record: dict
    state: TrainState = field(default_factory=TrainState)
    ddp_model: torch.nn.Module | None = None
    ngram: NgramModel | None = None
    valid_ngram_logprobs: torch.Tensor | None = None  # the n-gram's validation scores, computed once
    stop_requested: bool = False
    stop_event: threading.Event | None = None  # set by another thread to stop as Ctrl-C would
    started_at: float = field(default_factory=time.monotonic)

    @property
    def work_dir(self) -> Path:
        return self.out_dir / "train"

    @property
    def use_bf16(self) -> bool:
        return resolve_precision(self.config.precision, self.device) == "bf16"


def resolve_device(name: str) -> torch.device:
    """The one place where ``auto`` becomes a device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise TrainingError("--device cuda was asked for, but CUDA is not available")
    return torch.device(name)


def resolve_precision(name: str, device: torch.device) -> str:
    """bf16 autocast on CUDA and on CPUs with native bf16 matrix units, float32 elsewhere."""
    if name != "auto":
        return name
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_native_bf16() else "fp32"


def cpu_has_native_bf16() -> bool:
    """True on CPUs with bf16 matrix instructions (AMX or AVX512-BF16).

    oneDNN reports bf16 as "supported" on any AVX-512 CPU, where it is emulated: bf16 autocast there
    measured 3.6x slower than float32 (LSTM 2x512 training, one thread, Xeon without AMX).
    """
    capabilities = getattr(torch.cpu, "get_capabilities", None)
    if capabilities is None:
        return False
    found = capabilities()
    return bool(found.get("amx_bf16") or found.get("avx512_bf16"))


def perplexity_from_loss(loss: float) -> float:
    """exp(loss), capped so that a diverged or not-yet-validated run (inf) still prints a number."""
    return math.exp(min(loss, 50))


def lr_at(session: Session, total_steps: int) -> float:
    """Linear warm-up, then cosine decay over training progress (steps or minutes, whichever is ahead)."""
    config, state = session.config, session.state
    if state.step < config.warmup_steps:
        return config.lr * (state.step + 1) / config.warmup_steps
    progress = state.step / max(total_steps, 1)
    if config.max_minutes:
        progress = max(progress, elapsed_s(session) / (60 * config.max_minutes))
    cosine = 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return config.lr * (config.min_lr_ratio + (1 - config.min_lr_ratio) * cosine)


def elapsed_s(session: Session) -> float:
    return session.state.elapsed_s + time.monotonic() - session.started_at


def forward_batch(session: Session, batch: torch.Tensor, train: bool):
    """Run one batch of sentence indices: (N, L) NLL (padding 0) and the batch's x, y, lengths on the CPU."""
    corpus = session.train_corpus if train else session.valid_corpus
    x, y, lengths = collate(corpus, batch, session.tokenizer, session.config.max_length)
    non_blocking = session.device.type == "cuda"
    inputs, targets = (x.pin_memory(), y.pin_memory()) if non_blocking else (x, y)
    inputs = inputs.to(session.device, non_blocking=non_blocking)
    targets = targets.to(session.device, non_blocking=non_blocking)
    model = session.ddp_model if train and session.ddp_model is not None else session.model
    with torch.autocast(session.device.type, dtype=torch.bfloat16, enabled=session.use_bf16):
        nll = model(inputs, targets, lengths)
    return nll, x, y, lengths


def compute_loss(session: Session, batch: torch.Tensor, train: bool) -> tuple[torch.Tensor, int]:
    """Summed NLL (nats) and token count of one batch of sentence indices."""
    nll, _, _, lengths = forward_batch(session, batch, train)
    return nll.sum(), int(lengths.sum())


@dataclass
class Validation:
    """Mean NLL per token on the validation set: the network's, and the model's (mixed with the n-gram)."""

    rnn_loss: float
    loss: float
    rnn_weight: float = 1.0


def validate(session: Session) -> Validation:
    """Score the validation set (all ranks), fitting the n-gram mixture weight on it when there is one."""
    session.model.eval()
    rnn, ngram = [], []
    with torch.inference_mode():
        for batch in validation_batches(session):
            nll, x, y, lengths = forward_batch(session, batch, train=False)
            real = torch.arange(x.shape[1])[None, :] < lengths[:, None]
            rnn.append(-nll.double().cpu()[real])
            if session.ngram is not None and session.valid_ngram_logprobs is None:
                histories = history_windows(x, session.ngram.history_width)[real]
                ngram.append(session.ngram.logprobs(histories, y[real]))
    session.model.train()
    rnn_logprobs = torch.cat(rnn) if rnn else torch.zeros(0, dtype=torch.float64)
    total, tokens = distributed.all_reduce_sum([-float(rnn_logprobs.sum()), float(rnn_logprobs.numel())], session.world)
    rnn_loss = total / max(tokens, 1.0)
    if session.ngram is None:
        return Validation(rnn_loss, rnn_loss)
    if session.valid_ngram_logprobs is None:  # the same batches every time: the n-gram's part is counted once
        session.valid_ngram_logprobs = torch.cat(ngram) if ngram else torch.zeros(0, dtype=torch.float64)
    ngram_logprobs = session.valid_ngram_logprobs
    weight = fit_mixture_weight(
        rnn_logprobs, ngram_logprobs, reduce=lambda values: distributed.all_reduce_sum(values, session.world)
    )
    mixed = -float(mix_logprobs(rnn_logprobs, ngram_logprobs, weight).sum())
    return Validation(rnn_loss, distributed.all_reduce_sum([mixed], session.world)[0] / max(tokens, 1.0), weight)


def validation_batches(session: Session) -> list[torch.Tensor]:
    """This rank's validation batches: fixed, the same at every validation."""
    generator = torch.Generator().manual_seed(0)
    lengths = session.valid_corpus.lengths
    batches = make_batches(lengths, session.config.batch_tokens, generator, session.config.max_length)
    return batches[session.world.rank :: session.world.size]


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


def train_one_epoch(session: Session, progress: TrainingProgress, total_steps: int) -> bool:
    """Train from the saved position to the end of the epoch. Returns False if stopped early."""
    batches = epoch_batches(session)
    state = session.state
    last_checkpoint = time.monotonic()
    progress.start_epoch(state.epoch, len(batches), state.batch_index)
    while state.batch_index < len(batches):
        loss, tokens = compute_loss(session, batches[state.batch_index], train=True)
        value = optimizer_step(session, loss, tokens, lr_at(session, total_steps))
        state.batch_index += 1
        progress.update(value, tokens * session.world.size, elapsed_s(session), session.config.max_minutes)
        if should_stop(session):
            return False
        if time.monotonic() - last_checkpoint > 60 * session.config.checkpoint_minutes:
            save_checkpoint(session)
            last_checkpoint = time.monotonic()
    return True


def end_of_epoch(session: Session, epoch_done: bool) -> None:
    """Validate, keep the best model, log metrics, and move the position to the next epoch."""
    state = session.state
    validation = validate(session)
    if epoch_done:  # before saving, so that config.json counts this epoch in "epochs_done"
        state.epoch, state.batch_index = state.epoch + 1, 0
    improved = validation.loss < state.best_valid_loss
    if improved:
        state.best_valid_loss, state.rnn_weight, state.bad_epochs = validation.loss, validation.rnn_weight, 0
        if session.world.is_main:
            save_model_dir(session.out_dir, session.model, session.tokenizer, model_record(session), ngram=session.ngram)
    elif epoch_done:
        state.bad_epochs += 1
    write_metrics(session, validation, improved, epoch_done)


def model_record(session: Session) -> dict:
    """What ``config.json`` records besides the architecture."""
    record = {
        **session.record,
        "direction": "backward" if session.config.reverse else "forward",
        "training": {**asdict(session.config), "steps": session.state.step, "epochs_done": session.state.epoch},
        "best_valid_loss": session.state.best_valid_loss,
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


def write_metrics(session: Session, validation: Validation, improved: bool, epoch_done: bool) -> None:
    if not session.world.is_main:
        return
    state = session.state
    row = {
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
        "clipped_fraction": state.clipped_steps / max(state.step, 1),
        "skipped_steps": state.bad_steps,
    }
    with open(session.out_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")
    log.info(
        "epoch %s: valid ppl/token %.2f (network alone %.2f)%s", row["epoch"], row["valid_ppl_token"],
        perplexity_from_loss(validation.rnn_loss), " (best)" if improved else "",
    )


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
        "state": asdict(state),
        "rng": torch.get_rng_state(),
        "config": json.dumps(asdict(session.config)),
    }
    atomic_write_bytes(session.work_dir / "last.pt", lambda f: torch.save(payload, f))


def load_checkpoint(session: Session) -> bool:
    """Restore ``last.pt`` if it exists (weights-only unpickling). Returns True if one was loaded."""
    path = session.work_dir / "last.pt"
    if not path.is_file():
        return False
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        session.model.load_state_dict(payload["model"])
        session.optimizer.load_state_dict(payload["optimizer"])
    except Exception as e:
        raise TrainingError(f"{path}: cannot resume from this checkpoint ({str(e).splitlines()[0][:200]})") from e
    session.state = TrainState(**payload["state"])
    torch.set_rng_state(payload["rng"])
    return True


def build_session(
    corpus_paths: Sequence[Path],
    out_dir: Path,
    model_settings: dict,
    tokenizer_config: TokenizerConfig,
    config: TrainConfig,
    valid_paths: Sequence[Path] | None,
    exclude_paths: Sequence[Path],
    tokenizer_source: Path | None = None,
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
    model_config = ModelConfig(vocab_size=data.tokenizer.vocab_size, **model_settings)
    torch.manual_seed(config.seed)
    model = RnnLanguageModel(model_config)
    model.init_output_bias(data.train.target_counts(model_config.vocab_size, data.tokenizer.eos_id))
    model = model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    record = {"seed": config.seed, "tokenizer": asdict(tokenizer_config), "corpus": data.statistics}
    return Session(
        model=model, optimizer=optimizer, tokenizer=data.tokenizer, train_corpus=data.train, valid_corpus=data.valid,
        config=config, device=device, world=world, out_dir=out_dir, record=record, ngram=ngram,
    )


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
) -> TrainState:
    """Train (or resume) and leave the best model in ``out_dir``. Returns the final state.

    With ``both_directions``, a forward model in ``out_dir`` and a backward one in ``out_dir/backward``
    (:mod:`lm.bidirectional`); the state returned is the forward run's.
    """
    options = dict(
        corpus_paths=corpus_paths, model_settings=model_settings or {},
        tokenizer_config=tokenizer_config or TokenizerConfig(), config=config or TrainConfig(),
        valid_paths=valid_paths, exclude_paths=exclude_paths, resume=resume, show_progress=show_progress,
    )
    try:
        if both_directions:
            from lm.bidirectional import train_both_directions  # it builds on this module

            return train_both_directions(Path(out_dir), **options)
        return train_model(Path(out_dir), **options)
    finally:
        distributed.shutdown()


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
) -> TrainState:
    """Train (or resume) one model, in the direction ``config.reverse`` says, into ``out_dir``."""
    check_out_dir(out_dir, resume)
    session = build_session(
        corpus_paths, out_dir, model_settings, tokenizer_config, config, valid_paths, exclude_paths, tokenizer_source
    )
    session.stop_event = stop_event
    remove_stale_temporaries(session.work_dir, session.world)
    if resume and load_checkpoint(session):
        log.info("resuming at epoch %d, batch %d", session.state.epoch + 1, session.state.batch_index)
    if session.world.distributed:
        session.ddp_model = DistributedDataParallel(session.model)
    with catch_sigint(session), TrainingProgress(enabled=show_progress and session.world.is_main) as progress:
        train_loop(session, progress)
    return session.state


def train_loop(session: Session, progress: TrainingProgress) -> None:
    state, config = session.state, session.config
    total_steps = config.epochs * len(epoch_batches(session))
    session.model.train()
    while not state.finished and state.epoch < config.epochs:
        epoch_done = train_one_epoch(session, progress, total_steps)
        end_of_epoch(session, epoch_done)
        stop = not epoch_done or state.bad_epochs >= config.patience
        state.finished = (stop and not session.stop_requested) or state.epoch >= config.epochs
        save_checkpoint(session)
        if stop:
            break
    if session.stop_requested:
        raise KeyboardInterrupt


def remove_stale_temporaries(work_dir: Path, world: distributed.World) -> None:
    """Delete temporary files left by a run killed in the middle of a write."""
    if world.is_main:
        for stale in list(work_dir.glob(".*.tmp")) + list(work_dir.parent.glob(".*.tmp")):
            stale.unlink(missing_ok=True)


def check_out_dir(out_dir: Path, resume: bool) -> None:
    """Refuse to overwrite an earlier run unless resuming it."""
    if resume:
        return
    if (out_dir / "train" / "last.pt").exists() or (out_dir / "model.pt").exists():
        raise TrainingError(f"{out_dir}: holds an earlier training run; pass --resume to continue it or choose a new directory")


class catch_sigint:
    """Turn Ctrl-C into a request to stop after the current step, save, and exit."""

    def __init__(self, session: Session):
        self.session = session

    def __enter__(self):
        try:
            self.previous = signal.signal(signal.SIGINT, self.handle)
        except ValueError:  # not the main thread
            self.previous = None
        return self

    def handle(self, signum, frame) -> None:
        self.session.stop_requested = True
        log.warning("interrupted: saving a checkpoint, then stopping (run again with --resume to continue)")

    def __exit__(self, *exc) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
