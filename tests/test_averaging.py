"""The weight average: its update rule, and training keeping whichever of it and the network validates better."""

import json

import pytest
import torch

import lm.metrics_log
from conftest import CORPUS, TINY_MODEL, tiny_train_config, write_lines
from lm.averaging import make_average
from lm.checkpoint import load_weights
from lm.model import ModelConfig, RnnLanguageModel
from lm.resume import load_checkpoint, save_checkpoint
from lm.tokenizer import TokenizerConfig
from lm.train import build_session, end_of_epoch


@pytest.mark.parametrize("power", [0.0, 3.0, 7.0])
def test_after_t_updates_step_s_has_the_power_ema_share(power):
    """avg_T = sum_s (s^k - (s-1)^k) / T^k x_s with k = power + 1: step s weighs in proportion to s^power."""
    model = torch.nn.Linear(1, 1, bias=False)
    average = make_average(model, power)
    values = torch.randn(25, generator=torch.Generator().manual_seed(0))
    for value in values:
        model.weight.data.fill_(float(value))
        average.update_parameters(model)
    k, steps = power + 1, torch.arange(1, len(values) + 1, dtype=torch.float64)
    shares = (steps**k - (steps - 1) ** k) / len(values) ** k
    assert average.module.weight.detach().item() == pytest.approx(float((shares * values.double()).sum()), rel=1e-5, abs=1e-6)


def test_the_average_keeps_the_embedding_and_output_layer_tied():
    model = RnnLanguageModel(ModelConfig(vocab_size=20, embedding_dim=8, hidden_dim=8, num_layers=1))
    average = make_average(model, 7.0).module
    assert average.output_linear.weight is average.input_embedding.weight


@pytest.fixture
def session(tmp_path):
    """A tiny model after a few training steps, its average a copy of it, nothing saved yet."""
    corpus = write_lines(tmp_path / "corpus.txt", CORPUS, repeat=2)
    config = tiny_train_config(batch_tokens=128, device="cpu", average_power=7.0)
    session = build_session([corpus], tmp_path / "lm", TINY_MODEL, TokenizerConfig(vocab_size=100), config, None, ())
    session.average.update_parameters(session.model)
    return session


def spoil(model: torch.nn.Module) -> None:
    """Add noise large enough to make any language model much worse."""
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 3)


def saved_weights(session) -> dict[str, torch.Tensor]:
    return load_weights(session.out_dir / "model.pt")


@pytest.mark.parametrize("spoiled", ["network", "average"])
def test_training_keeps_whichever_of_the_network_and_the_average_validates_better(session, spoiled):
    spoil(session.model if spoiled == "network" else session.average.module)
    kept = session.average.module if spoiled == "network" else session.model
    end_of_epoch(session, epoch_done=True)
    saved = saved_weights(session)
    expected = kept.state_dict()
    assert saved and all(torch.equal(value, expected[name]) for name, value in saved.items())
    config = json.loads((session.out_dir / "config.json").read_text())
    assert config["weights"] == ("average" if spoiled == "network" else "network")
    row = lm.metrics_log.read_metrics(session.out_dir, "valid")[-1]
    network, average = row["valid_loss"], row["average_valid_loss"]
    assert (average < network) == (spoiled == "network")
    assert config["best_valid_loss"] == pytest.approx(min(network, average))


def test_a_checkpoint_carries_the_average(session):
    spoil(session.average.module)
    session.average.update_parameters(session.model)
    save_checkpoint(session)
    expected = {name: value.clone() for name, value in session.average.state_dict().items()}
    spoil(session.average.module)
    assert load_checkpoint(session)
    for name, value in session.average.state_dict().items():
        assert torch.equal(value, expected[name]), name
    assert int(session.average.n_averaged) == 2
