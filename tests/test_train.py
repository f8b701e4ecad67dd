"""Training: learning, clipping, seeds, resuming (Ctrl-C, crashes, SIGKILL), non-finite losses, time budget."""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import time
import types
from collections import Counter
from pathlib import Path

import pytest
import torch

import lm.device
import lm.metrics_log
import lm.train
from conftest import CORPUS, TINY_MODEL, tiny_train_config, write_lines
from lm.checkpoint import load_model_dir, load_weights
from lm.data import CorpusError, TokenizedCorpus, collate, load_tokenized, make_batches
from lm.perplexity import compute_perplexity
from lm.scorer import SentenceScorer
from lm.tokenizer import TokenizerConfig
from lm.launch import run
from lm.metrics_log import kept_loss
from lm.session import TrainConfig, TrainingError, TrainState

VOCAB_SIZE = 100


def small_config(**overrides) -> TrainConfig:
    """About 20 steps in 4 epochs on ``small_corpus``; a checkpoint after every step, kept at the end; a weight
    average (so that the resume tests cover it)."""
    return tiny_train_config(**{"epochs": 4, "batch_tokens": 128, "device": "cpu", "keep_checkpoint": True,
                                "average_power": 7.0, **overrides})


def train(out: Path, corpus: Path, config: TrainConfig | None = None, model: dict | None = None,
          **kwargs) -> TrainState:
    return run([corpus], out, model or TINY_MODEL, TokenizerConfig(vocab_size=VOCAB_SIZE), config or small_config(),
               show_progress=False, **kwargs)


def read_metrics(out: Path) -> list[dict]:
    """The validation rows of metrics.jsonl."""
    return lm.metrics_log.read_metrics(out, "valid")


def last_checkpoint(out: Path) -> dict:
    return torch.load(out / "train" / "last.pt", map_location="cpu", weights_only=True)


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def assert_loads_and_scores(out: Path) -> None:
    lm = load_model_dir(out)
    scores = SentenceScorer(lm).score(CORPUS[:4])
    assert all(math.isfinite(s) and s < 0 for s in scores)


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory) -> Path:
    return write_lines(tmp_path_factory.mktemp("small") / "corpus.txt", CORPUS, repeat=2)


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, small_corpus) -> Path:
    """An uninterrupted run of ``small_config``: what interrupted-and-resumed runs must reproduce exactly."""
    out = tmp_path_factory.mktemp("reference") / "lm"
    state = train(out, small_corpus)
    assert state.finished and state.epoch == 4
    return out


@pytest.fixture(scope="module")
def memorised_run(tmp_path_factory) -> Path:
    """Training sentences seen 4 times an epoch for 30 epochs, validated on the same sentences."""
    root = tmp_path_factory.mktemp("memorise")
    corpus, valid = write_lines(root / "corpus.txt", CORPUS, repeat=4), write_lines(root / "valid.txt", CORPUS)
    config = small_config(epochs=30, batch_tokens=256, lr=3e-2, min_lr_ratio=1.0, checkpoint_minutes=60.0)
    train(root / "lm", corpus, config, valid_paths=[valid])
    return root / "lm"


def test_validation_perplexity_falls(memorised_run):
    rows = read_metrics(memorised_run)
    assert [row["epoch"] for row in rows] == list(range(1, 31))
    assert all(row["complete_epoch"] for row in rows)
    assert rows[-1]["valid_ppl_token"] < rows[0]["valid_ppl_token"] / 10
    assert rows[-1]["step"] == 30 * rows[0]["step"]
    losses = [kept_loss(row) for row in rows]
    assert [row["best"] for row in rows] == [loss < min(losses[:i], default=math.inf) for i, loss in enumerate(losses)]


def test_memorisable_corpus_reaches_low_perplexity(memorised_run):
    lm = load_model_dir(memorised_run)
    report = compute_perplexity(SentenceScorer(lm), CORPUS)
    assert report.ppl_token < 3.0
    config = json.loads((memorised_run / "config.json").read_text())
    assert config["direction"] == "forward" and config["seed"] == 1234
    best_row = min(read_metrics(memorised_run), key=kept_loss)
    assert config["training"]["epochs_done"] == best_row["epoch"] > 20  # the saved model is the best epoch's
    assert config["valid_ppl_token"] == pytest.approx(math.exp(config["best_valid_loss"]))
    assert config["best_valid_loss"] == pytest.approx(kept_loss(best_row))


@pytest.mark.parametrize("cell", ["gru", "rnn"])
def test_other_cells_train(tmp_path, cell):
    corpus, valid = write_lines(tmp_path / "corpus.txt", CORPUS, repeat=4), write_lines(tmp_path / "valid.txt", CORPUS)
    config = small_config(epochs=10, batch_tokens=256, lr=3e-2, min_lr_ratio=1.0, checkpoint_minutes=60.0)
    train(tmp_path / "lm", corpus, config, model={**TINY_MODEL, "cell": cell}, valid_paths=[valid])
    rows = read_metrics(tmp_path / "lm")
    assert rows[-1]["valid_ppl_token"] < rows[0]["valid_ppl_token"] / 3
    assert load_model_dir(tmp_path / "lm").model.config.cell == cell


@pytest.mark.parametrize("clip, fraction", [(1e-6, 1.0), (0.0, 0.0)])
def test_clipping_is_applied(tmp_path, small_corpus, clip, fraction):
    state = train(tmp_path / "lm", small_corpus, small_config(epochs=1, clip=clip))
    assert state.step > 0
    assert state.clipped_steps == (state.step if clip else 0)
    assert read_metrics(tmp_path / "lm")[-1]["clipped_fraction"] == fraction


def test_weight_decay_shrinks_the_weights(tmp_path, small_corpus):
    """--weight-decay reaches the optimiser: the same run with a strong decay ends with smaller weights."""
    norms = {}
    for decay in (0.0, 10.0):
        train(tmp_path / str(decay), small_corpus, small_config(epochs=2, weight_decay=decay, average_power=0.0))
        weights = load_model_dir(tmp_path / str(decay)).model.state_dict()
        norms[decay] = torch.cat([w.flatten() for w in weights.values()]).norm().item()
    assert norms[10.0] < 0.8 * norms[0.0]


def test_same_seed_gives_identical_weights(tmp_path, small_corpus, reference_run):
    train(tmp_path / "again", small_corpus)
    assert_same_weights(load_weights(tmp_path / "again" / "model.pt"), load_weights(reference_run / "model.pt"))
    assert_same_weights(last_checkpoint(tmp_path / "again")["model"], last_checkpoint(reference_run)["model"])


def test_different_seed_gives_different_weights(tmp_path, small_corpus, reference_run):
    train(tmp_path / "other", small_corpus, small_config(seed=99))
    ours, theirs = load_weights(tmp_path / "other" / "model.pt"), load_weights(reference_run / "model.pt")
    assert ours.keys() == theirs.keys()
    assert not any(torch.equal(ours[k], theirs[k]) for k in ours if ours[k].shape == theirs[k].shape)


def test_new_run_into_a_directory_with_a_run_is_refused(reference_run, small_corpus):
    before = (reference_run / "model.pt").read_bytes()
    with pytest.raises(TrainingError, match="holds an earlier training run; pass --resume"):
        train(reference_run, small_corpus)
    assert (reference_run / "model.pt").read_bytes() == before


def test_sigint_saves_then_resume_matches_uninterrupted_run(tmp_path, small_corpus, reference_run, monkeypatch):
    out = tmp_path / "lm"
    real_step, calls = lm.train.optimizer_step, []

    def step_then_ctrl_c(*args):
        value = real_step(*args)
        calls.append(value)
        if len(calls) == 7:  # mid-way through the second epoch
            os.kill(os.getpid(), signal.SIGINT)
        return value

    monkeypatch.setattr(lm.train, "optimizer_step", step_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        train(out, small_corpus)
    monkeypatch.undo()
    saved = last_checkpoint(out)["state"]
    assert (saved["step"], saved["finished"]) == (7, False)
    assert 0 < saved["batch_index"] and saved["epoch"] == 1
    assert read_metrics(out)[-1]["complete_epoch"] is False
    assert_loads_and_scores(out)

    state = train(out, small_corpus, resume=True)
    assert state.finished and state.step == last_checkpoint(reference_run)["state"]["step"]
    assert_same_weights(last_checkpoint(out)["model"], last_checkpoint(reference_run)["model"])


@pytest.mark.parametrize("variant", ["plain", "dropout", "all regularisers + n-gram"])
def test_crash_mid_epoch_then_resume_matches_uninterrupted_run(tmp_path, small_corpus, reference_run, monkeypatch,
                                                               variant):
    """With dropout the random-number state must be restored too; with an n-gram, its fitted weight."""
    model, config = TINY_MODEL, small_config()
    if variant == "dropout":
        model = {**TINY_MODEL, "dropout": 0.3}
    elif variant != "plain":
        model = {**TINY_MODEL, "dropout": 0.3, "embedding_dropout": 0.1, "weight_dropout": 0.3}
        config = small_config(ngram_order=3)
    if variant == "plain":
        reference = reference_run
    else:
        reference = tmp_path / "reference"
        train(reference, small_corpus, config, model=model)
    out = tmp_path / "lm"
    real_loss, calls = lm.train.compute_loss, []

    def crash_on_ninth_batch(session, batch, train):
        if train:
            calls.append(1)
            if len(calls) == 9:
                raise KeyboardInterrupt  # not caught by the training loop: no saving on the way out
        return real_loss(session, batch, train)

    monkeypatch.setattr(lm.train, "compute_loss", crash_on_ninth_batch)
    with pytest.raises(KeyboardInterrupt):
        train(out, small_corpus, config, model=model)
    monkeypatch.undo()
    assert last_checkpoint(out)["state"]["step"] == 8  # the checkpoint written after the last finished step

    torch.manual_seed(12345)  # whatever the process did in between must not matter
    state = train(out, small_corpus, config, model=model, resume=True)
    assert state.finished
    assert_same_weights(last_checkpoint(out)["model"], last_checkpoint(reference)["model"])
    assert_same_weights(load_weights(out / "model.pt"), load_weights(reference / "model.pt"))
    if config.ngram_order:
        assert_same_weights(load_weights(out / "ngram.pt"), load_weights(reference / "ngram.pt"))
        ngram = json.loads((out / "config.json").read_text())["ngram"]
        assert ngram == json.loads((reference / "config.json").read_text())["ngram"]
        assert 0.0 < ngram["rnn_weight"] < 1.0


def test_resuming_a_finished_run_changes_nothing(tmp_path, small_corpus, reference_run):
    out = tmp_path / "lm"
    shutil.copytree(reference_run, out)
    files = [out / "train" / "last.pt", out / "model.pt", out / "config.json", out / "metrics.jsonl"]
    before = [path.read_bytes() for path in files]
    state = train(out, small_corpus, resume=True)
    assert state.finished and state.step == last_checkpoint(reference_run)["state"]["step"]
    assert [path.read_bytes() for path in files] == before


def test_corrupt_checkpoint_refuses_to_resume(tmp_path, small_corpus):
    out = tmp_path / "lm"
    train(out, small_corpus, small_config(epochs=1))
    path = out / "train" / "last.pt"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(TrainingError, match="last.pt: cannot resume from this checkpoint"):
        train(out, small_corpus, small_config(epochs=2), resume=True)


def nan_on_train_batches(monkeypatch, which) -> list[int]:
    """Make the training loss NaN on the train batches for which ``which(call_number)`` is true (from 1)."""
    real_loss, calls = lm.train.compute_loss, []

    def maybe_nan(session, batch, train):
        loss, tokens = real_loss(session, batch, train)
        if train:
            calls.append(1)
            if which(len(calls)):
                loss = loss * float("nan")
        return loss, tokens

    monkeypatch.setattr(lm.train, "compute_loss", maybe_nan)
    return calls


def test_nan_steps_are_skipped_and_counted(tmp_path, small_corpus, monkeypatch):
    calls = nan_on_train_batches(monkeypatch, lambda n: n in (2, 3, 9))
    state = train(tmp_path / "lm", small_corpus)
    assert state.finished and state.bad_steps == 3
    assert state.step == len(calls) - 3
    rows = read_metrics(tmp_path / "lm")
    assert rows[-1]["skipped_steps"] == 3 and rows[0]["skipped_steps"] == 2
    assert all(torch.isfinite(v).all() for v in load_weights(tmp_path / "lm" / "model.pt").values())
    assert_loads_and_scores(tmp_path / "lm")


def test_persistent_nan_stops_and_keeps_the_best_model(tmp_path, small_corpus, reference_run, monkeypatch):
    steps_per_epoch = read_metrics(reference_run)[0]["step"]
    calls = nan_on_train_batches(monkeypatch, lambda n: n > steps_per_epoch)
    with pytest.raises(TrainingError, match=r"non-finite in 3 steps .*The best model in .* intact"):
        train(tmp_path / "lm", small_corpus, small_config(max_bad_steps=2))
    assert len(calls) == steps_per_epoch + 3
    assert len(read_metrics(tmp_path / "lm")) == 1
    assert_loads_and_scores(tmp_path / "lm")
    assert last_checkpoint(tmp_path / "lm")["state"]["step"] == steps_per_epoch


def test_time_budget_stops_cleanly_with_a_loadable_model(tmp_path, small_corpus):
    started = time.monotonic()
    state = train(tmp_path / "lm", small_corpus, small_config(epochs=100000, max_minutes=0.02))
    assert time.monotonic() - started < 60
    assert state.finished and state.epoch < 100000
    assert state.elapsed_s >= 0.02 * 60
    assert read_metrics(tmp_path / "lm")[-1]["complete_epoch"] is False
    assert last_checkpoint(tmp_path / "lm")["state"]["finished"] is True
    assert_loads_and_scores(tmp_path / "lm")


# A training process that is SIGKILLed from outside. Every atomic write sleeps after writing its
# temporary file and before renaming it, so most of the run is spent mid-write: kills land there.
KILLED_TRAINER = """
import json, sys, time
import lm.atomic, lm.launch, lm.session
from lm.tokenizer import TokenizerConfig

args = json.loads(sys.argv[1])
real_write = lm.atomic.atomic_write_bytes

def slow_write(path, write):
    def write_slowly(f):
        write(f)
        f.flush()
        time.sleep(args["write_s"])
    real_write(path, write_slowly)

lm.atomic.atomic_write_bytes = slow_write
lm.launch.run([args["corpus"]], args["out"], args["model"], TokenizerConfig(vocab_size=args["vocab_size"]),
              lm.session.TrainConfig(**args["config"]), show_progress=False)
"""


def start_killable_training(out: Path, corpus: Path, config: TrainConfig) -> subprocess.Popen:
    args = dict(corpus=str(corpus), out=str(out), model=TINY_MODEL, vocab_size=VOCAB_SIZE, write_s=0.1,
                config=vars(config))
    return subprocess.Popen([sys.executable, "-c", KILLED_TRAINER, json.dumps(args)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@pytest.mark.slow
@pytest.mark.parametrize("delay_s", [0.0, 0.5, 1.2])
def test_sigkill_at_any_moment_then_resume(tmp_path, small_corpus, reference_run, delay_s):
    out = tmp_path / "lm"
    process = start_killable_training(out, small_corpus, small_config())
    try:
        deadline = time.monotonic() + 120
        while not (out / "train" / "last.pt").exists() and process.poll() is None:
            assert time.monotonic() < deadline, "training never wrote a checkpoint"
            time.sleep(0.01)
        time.sleep(delay_s)
        process.send_signal(signal.SIGKILL)
    finally:
        _, stderr = process.communicate(timeout=60)
    # the run lasts seconds (every write sleeps), so the kill lands mid-run, not after it
    assert process.returncode == -signal.SIGKILL, (process.returncode, stderr.decode())
    killed_at = last_checkpoint(out)["state"]
    assert not killed_at["finished"]
    state = train(out, small_corpus, resume=True)
    assert state.finished and state.step > killed_at["step"]  # the resume did train
    # Resuming from the last checkpoint reproduces the uninterrupted run exactly.
    assert_same_weights(last_checkpoint(out)["model"], last_checkpoint(reference_run)["model"])
    assert_same_weights(load_weights(out / "model.pt"), load_weights(reference_run / "model.pt"))
    assert_loads_and_scores(out)


def test_corpus_that_is_not_utf8_names_file_and_line(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(b"the earth\n\xff\xfe broken\nthe light\n")
    with pytest.raises(CorpusError, match=r"corpus.txt: line 2: not valid UTF-8"):
        train(tmp_path / "lm", corpus)


def test_missing_corpus_is_named(tmp_path):
    with pytest.raises(CorpusError, match="absent.txt: no such file"):
        train(tmp_path / "lm", tmp_path / "absent.txt")


def test_corpus_too_small_to_hold_out_validation(tmp_path):
    corpus = write_lines(tmp_path / "corpus.txt", ["the earth was without form"])
    with pytest.raises(CorpusError, match="corpus.txt: too few sentences for training and validation"):
        train(tmp_path / "lm", corpus)


def test_exclude_drops_evaluation_sentences_and_counts_them(tmp_path):
    corpus = write_lines(tmp_path / "corpus.txt", CORPUS, repeat=10)
    exclude = write_lines(tmp_path / "eval.txt", CORPUS[:2])
    train(tmp_path / "lm", corpus, small_config(epochs=1), exclude_paths=[exclude])
    statistics = json.loads((tmp_path / "lm" / "train" / "statistics.json").read_text())
    assert statistics["excluded_lines"] == 20
    kept = statistics["train"]["sentences"] + statistics["valid"]["sentences"]
    assert kept == (len(CORPUS) - 2) * 10


def test_target_counts_count_every_token_and_one_end_of_sentence_per_sentence(tmp_path):
    ids = torch.tensor([5, 6, 5, 7, 5, 5], dtype=torch.int32)
    corpus = TokenizedCorpus(ids=ids, offsets=torch.tensor([0, 3, 3, 6]))  # the middle sentence is empty
    expected = torch.zeros(10, dtype=torch.int64)
    expected[[3, 5, 6, 7]] = torch.tensor([3, 4, 1, 1])
    for chunk in (2, 4, 100):  # chunk boundaries inside and between sentences
        assert torch.equal(corpus.target_counts(10, eos_id=3, chunk=chunk), expected)


def test_batches_hold_every_sentence_once_padded_only_to_their_longest_within_the_token_budget():
    generator = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, 41, (300,), generator=generator)  # widths that are mostly not multiples of 8
    ids = torch.randint(4, 50, (int(lengths.sum()),), generator=generator, dtype=torch.int32)
    corpus = TokenizedCorpus(ids=ids, offsets=torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)]))
    special = types.SimpleNamespace(pad_id=0, bos_id=2, eos_id=3)
    batches = make_batches(corpus.lengths, 96, torch.Generator().manual_seed(1), max_length=32)
    assert sorted(torch.cat(batches).tolist()) == list(range(300))
    real = padded = 0
    for batch in batches:
        x, y, batch_lengths = collate(corpus, batch, special, max_length=32)
        assert torch.equal(batch_lengths, (lengths[batch] + 1).clamp(max=32))
        assert x.shape[1] == int(batch_lengths.max())  # no column that is padding in every row
        assert x.numel() <= 96 or len(batch) == 1
        real, padded = real + int(batch_lengths.sum()), padded + x.numel()
    assert real / padded > 0.9  # sorted by length: widths rounded up to 8 would waste about a sixth


def test_a_new_model_starts_at_the_unigram_cross_entropy_not_the_uniform(tmp_path, small_corpus):
    session = lm.train.build_session([small_corpus], tmp_path / "lm", TINY_MODEL, TokenizerConfig(vocab_size=VOCAB_SIZE),
                                     small_config(), None, ())
    sentences = [session.train_corpus.sentence(i).tolist() for i in range(len(session.train_corpus))]
    eos = session.tokenizer.eos_id
    counts = Counter(token for sentence in sentences for token in [*sentence, eos])
    total = sum(counts.values()) + 0.1 * VOCAB_SIZE
    unigram_entropy = -sum(n * math.log((n + 0.1) / total) for n in counts.values()) / sum(counts.values())
    model = session.model.eval()
    nll = 0.0
    with torch.no_grad():
        for sentence in sentences:
            x = torch.tensor([[session.tokenizer.bos_id, *sentence]])
            y = torch.tensor([[*sentence, eos]])
            nll += float(model(x, y, torch.tensor([x.shape[1]])).sum())
    nll /= sum(counts.values())
    assert unigram_entropy < math.log(VOCAB_SIZE) - 0.3
    assert nll == pytest.approx(unigram_entropy, abs=0.05)


@pytest.mark.parametrize(
    "capabilities, expected",
    [
        ({"avx512_f": True, "avx512_bf16": False, "amx_bf16": False}, "fp32"),  # oneDNN emulates bf16 here: slower
        ({"avx512_f": True, "avx512_bf16": True, "amx_bf16": False}, "bf16"),
        ({"avx512_f": True, "avx512_bf16": True, "amx_bf16": True}, "bf16"),
        ({"avx2": True}, "fp32"),
    ],
)
def test_auto_precision_uses_bf16_only_with_native_bf16_instructions(monkeypatch, capabilities, expected):
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: capabilities, raising=False)
    assert lm.device.resolve_precision("auto", torch.device("cpu")) == expected
    assert lm.device.resolve_precision("fp32", torch.device("cpu")) == "fp32"
    assert lm.device.resolve_precision("bf16", torch.device("cpu")) == "bf16"


def assert_backward_pair(out: Path) -> tuple:
    """Forward in ``out``, backward in ``out/backward``, on one tokenizer; returns their loaded models."""
    forward, backward = load_model_dir(out), load_model_dir(out / "backward")
    assert (forward.direction, backward.direction) == ("forward", "backward")
    assert (out / "tokenizer.model").read_bytes() == (out / "backward" / "tokenizer.model").read_bytes()
    # the backward run read every sentence right to left, on the same tokens
    first_forward = load_tokenized(out / "train" / "train").sentence(0).tolist()
    assert load_tokenized(out / "backward" / "train" / "train").sentence(0).tolist() == first_forward[::-1]
    assert_loads_and_scores(out / "backward")
    return forward, backward


@pytest.fixture
def cores(monkeypatch):
    """Pretend this machine has N usable cores (which decides between concurrent and in-turn training)."""
    import lm.bidirectional

    return lambda n: monkeypatch.setattr(lm.bidirectional, "usable_cores", lambda: n)


@pytest.mark.parametrize(("num_cores", "world_size", "expected"), [(1, "1", "forward"), (2, "1", "both"), (2, "2", "forward")])
def test_direction_auto_trains_both_only_where_they_can_train_at_once(cores, monkeypatch, num_cores, world_size,
                                                                      expected):
    from lm.bidirectional import choose_direction

    cores(num_cores)
    monkeypatch.setenv("WORLD_SIZE", world_size)  # under torchrun the ranks already share the cores
    assert choose_direction(small_config()) == expected


def test_both_directions_on_one_core_train_in_turn_sharing_the_time_budget(tmp_path, small_corpus, cores):
    cores(1)
    out = tmp_path / "lm"
    train(out, small_corpus, small_config(max_minutes=10.0), both_directions=True)
    forward, backward = assert_backward_pair(out)
    # the forward run had half of the 10 minutes, the backward run the rest
    assert forward.config["training"]["max_minutes"] == 5.0
    assert 5.0 <= backward.config["training"]["max_minutes"] <= 10.0
    assert not (out / "backward" / "train" / "log.txt").exists()


def test_both_directions_on_two_cores_train_at_once_each_with_the_whole_budget(tmp_path, small_corpus, cores, caplog):
    cores(2)
    caplog.set_level(logging.INFO)  # the backward process logs at this process's level
    out = tmp_path / "lm"
    state = train(out, small_corpus, small_config(max_minutes=10.0, threads=None), both_directions=True)
    forward, backward = assert_backward_pair(out)
    for model in (forward, backward):
        assert model.config["training"]["max_minutes"] == 10.0
        assert model.config["training"]["threads"] == 1  # half of the two cores each
    assert state.epoch == len([m for m in read_metrics(out) if m["complete_epoch"]])  # the forward run's state
    # the backward process logged its epochs to its own file, not over the forward run's progress
    log_text = (out / "backward" / "train" / "log.txt").read_text()
    assert log_text.count("valid ppl/token") == len(read_metrics(out / "backward"))


def test_a_failing_backward_process_fails_the_command_with_its_error(tmp_path, small_corpus, cores):
    cores(2)
    out = tmp_path / "lm"
    (out / "backward" / "config.json").mkdir(parents=True)  # the backward run cannot save its model
    with pytest.raises(OSError) as failure:
        train(out, small_corpus, small_config(max_minutes=10.0), both_directions=True)
    assert "config.json" in str(failure.value)
    assert "Traceback" in (out / "backward" / "train" / "log.txt").read_text()  # the details, kept for the user


@pytest.mark.parametrize("num_cores", [1, 2])
def test_both_directions_on_resume_skip_a_finished_forward_run(tmp_path, small_corpus, reference_run, cores, num_cores):
    cores(num_cores)
    out = tmp_path / "lm"
    train(out, small_corpus)  # forward only, finished: the same run as reference_run
    forward_weights = (out / "model.pt").read_bytes()
    train(out, small_corpus, resume=True, both_directions=True)
    assert (out / "model.pt").read_bytes() == forward_weights
    assert len(read_metrics(out)) == len(read_metrics(reference_run))  # no further forward epoch
    assert load_model_dir(out / "backward").direction == "backward"
    assert_same_weights(load_weights(out / "model.pt"), load_weights(reference_run / "model.pt"))


@pytest.mark.slow
@pytest.mark.skipif(__import__("lm.bidirectional").bidirectional.usable_cores() < 2, reason="needs two cores")
def test_ctrl_c_stops_both_concurrent_runs_with_a_checkpoint_and_resume_finishes_both(tmp_path):
    corpus, out, log_path = write_lines(tmp_path / "corpus.txt", CORPUS, repeat=20), tmp_path / "lm", tmp_path / "err"
    command = [sys.executable, "-m", "pipeline", "train", str(corpus), "-o", str(out), "--direction", "both",
               "--vocab-size", str(VOCAB_SIZE), "--embedding-dim", "32", "--hidden-dim", "32", "--num-layers", "1",
               "--batch-tokens", "128", "--threads", "1", "--no-progress"]
    with open(log_path, "w") as stderr:
        process = subprocess.Popen(command + ["--epochs", "1000"], stderr=stderr, start_new_session=True)
    backward_log = out / "backward" / "train" / "log.txt"
    try:
        deadline = time.monotonic() + 120
        while not all(path.exists() and "epoch 1:" in path.read_text() for path in (log_path, backward_log)):
            assert process.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.1)
        os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole process group
        process.wait(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    messages = log_path.read_text()
    assert process.returncode == 130 and "interrupted" in messages and "Traceback" not in messages, messages
    steps = [last_checkpoint(path)["state"]["step"] for path in (out, out / "backward")]
    assert all(step > 0 for step in steps)
    # --resume continues both from their checkpoints; a small time budget ends them at once
    subprocess.run(command + ["--resume", "--epochs", "1000", "--max-minutes", "0.01"], check=True,
                   stderr=subprocess.DEVNULL)
    for path, step in zip((out, out / "backward"), steps):
        finished = json.loads((path / "train" / "finished.json").read_text())
        assert finished["finished"] and finished["step"] > step  # each resumed and took steps
        assert (path / "model.pt").is_file()
        assert not (path / "train" / "last.pt").exists()  # removed once finished


def early_stopped_session(bad_epochs: int, elapsed_minutes: float, **model):
    """The parts of a Session that overfitting_note reads: 12 of 30 epochs done, a 50-minute budget."""
    from types import SimpleNamespace

    from lm.model import ModelConfig

    return SimpleNamespace(
        state=SimpleNamespace(bad_epochs=bad_epochs, epoch=12, elapsed_s=60 * elapsed_minutes),
        config=SimpleNamespace(patience=4, epochs=30, max_minutes=50),
        model=SimpleNamespace(config=ModelConfig(vocab_size=100, **model)),
        started_at=time.monotonic(),
    )


def test_an_early_stop_with_time_left_suggests_the_regularisation_that_is_still_missing():
    from lm.train import overfitting_note

    note = overfitting_note(early_stopped_session(bad_epochs=4, elapsed_minutes=20, weight_dropout=0.3))
    assert "after epoch 8 with 30 of the 50 minutes left" in note
    assert "--dropout 0.5" in note and "--embedding-dropout 0.1" in note and "--weight-dropout" not in note


@pytest.mark.parametrize("bad_epochs, elapsed_minutes, model", [
    (1, 20, {}),  # stopped by the budget or Ctrl-C, not by the patience
    (4, 49.5, {}),  # the patience ran out with no time to spare
    (4, 20, {"dropout": 0.5, "weight_dropout": 0.3, "embedding_dropout": 0.1}),  # regularised already
])
def test_no_overfitting_note_without_an_early_stop_time_left_and_weaker_regularisation(bad_epochs, elapsed_minutes,
                                                                                       model):
    from lm.train import overfitting_note

    assert overfitting_note(early_stopped_session(bad_epochs, elapsed_minutes, **model)) is None
