"""The recurrent LM: per-token NLL with zero padding, scores by hand, weight tying, cells, bad settings."""

from __future__ import annotations

import pytest
import torch

from lm.model import (
    CELLS, ModelConfig, RnnLanguageModel, concat_states, drop_connect, locked_dropout, select_state, zero_state,
)

BOS, EOS, PAD = 2, 3, 0


def sharp_model(cell: str = "lstm", seed: int = 0, **sizes) -> RnnLanguageModel:
    """A small model with large random weights, so that contexts change the scores a lot."""
    settings = dict(vocab_size=17, embedding_dim=8, hidden_dim=8, num_layers=2, dropout=0.0, cell=cell)
    settings.update(sizes)
    model = RnnLanguageModel(ModelConfig(**settings))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator))
    return model.eval()


def padded_batch(sentences: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    L = max(len(s) for s in sentences) + 1
    x = torch.full((len(sentences), L), PAD)
    y = torch.full((len(sentences), L), PAD)
    for row, s in enumerate(sentences):
        x[row, : len(s) + 1] = torch.tensor([BOS, *s])
        y[row, : len(s) + 1] = torch.tensor([*s, EOS])
    return x, y, torch.tensor([len(s) + 1 for s in sentences])


def score_by_hand(model: RnnLanguageModel, sentence: list[int]) -> float:
    """log P(sentence, </s>) from the log-softmax of the full output layer, one position at a time."""
    inputs = [BOS, *sentence]
    targets = [*sentence, EOS]
    total, state = 0.0, None
    for token, target in zip(inputs, targets):
        hidden, state = model.hidden_states(torch.tensor([[token]]), state)
        logprobs = torch.log_softmax(model.output_linear(hidden[0, 0]), dim=-1)
        total += float(logprobs[target])
    return total


SENTENCES = [[5, 6, 7, 8, 9], [5], [10, 11, 12], [], [16, 4, 4, 4, 4, 4, 4, 1]]


@pytest.mark.parametrize("cell", list(CELLS))
def test_forward_returns_nll_with_zero_padding(cell):
    model = sharp_model(cell)
    x, y, lengths = padded_batch(SENTENCES)
    with torch.no_grad():
        nll = model(x, y, lengths)
    assert nll.shape == x.shape and nll.dtype == torch.float32
    positions = torch.arange(x.shape[1])[None, :]
    padding = positions >= lengths[:, None]
    assert padding.any()
    assert torch.all(nll[padding] == 0.0)
    assert torch.all(nll[~padding] > 0.0)


@pytest.mark.parametrize("cell", list(CELLS))
def test_sentence_score_equals_sum_of_token_logprobs_by_hand(cell):
    model = sharp_model(cell)
    x, y, lengths = padded_batch(SENTENCES)
    with torch.no_grad():
        scores = -model(x, y, lengths).double().sum(dim=1)
        expected = [score_by_hand(model, s) for s in SENTENCES]
    assert scores.tolist() == pytest.approx(expected, abs=1e-4)
    # Large random weights make each context matter: the scores are far from uniform guessing.
    uniform = [-(len(s) + 1) * torch.log(torch.tensor(17.0)).item() for s in SENTENCES]
    assert max(abs(a - b) for a, b in zip(expected, uniform)) > 1.0


def test_padding_does_not_change_scores():
    model = sharp_model()
    with torch.no_grad():
        alone = -model(*padded_batch([SENTENCES[1]])).sum()
        batched = -model(*padded_batch(SENTENCES)).sum(dim=1)
    assert float(batched[1]) == pytest.approx(float(alone), abs=1e-5)


def test_token_logprobs_match_log_softmax():
    model = sharp_model()
    hidden = torch.randn(6, 8, generator=torch.Generator().manual_seed(1))
    targets = torch.tensor([0, 3, 5, 16, 2, 9])
    with torch.no_grad():
        expected = torch.log_softmax(model.output_linear(hidden), dim=-1)[torch.arange(6), targets]
        assert torch.allclose(model.token_logprobs(hidden, targets), expected, atol=1e-5)


def test_under_bf16_autocast_only_training_takes_the_log_softmax_in_bf16():
    """Scoring and validation keep a float32 log-softmax; a training step's loss and gradient stay close to it."""
    model = sharp_model(vocab_size=300)
    generator = torch.Generator().manual_seed(2)
    targets = torch.randint(0, 300, (40,), generator=generator)
    hidden = torch.randn(40, 8, generator=generator)

    def logprobs_and_gradient(training: bool, exact: bool) -> tuple[torch.Tensor, torch.Tensor]:
        model.train(training)
        leaf = hidden.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            if exact:
                logits = model.output_linear(leaf).float()
                values = torch.log_softmax(logits, dim=-1)[torch.arange(40), targets]
            else:
                values = model.token_logprobs(leaf, targets)
        values.sum().backward()
        return values.detach(), leaf.grad

    exact, exact_gradient = logprobs_and_gradient(False, exact=True)
    scored, _ = logprobs_and_gradient(False, exact=False)
    trained, trained_gradient = logprobs_and_gradient(True, exact=False)
    assert torch.equal(scored, exact)
    assert trained.dtype == torch.float32 and not torch.equal(trained, exact)  # the bf16 path did run
    assert (trained - exact).abs().max() < 0.1  # bf16's resolution at these log-probabilities
    assert (trained_gradient - exact_gradient).norm() < 0.02 * exact_gradient.norm()


def test_tied_weights_share_one_tensor():
    model = RnnLanguageModel(ModelConfig(vocab_size=20, embedding_dim=8, hidden_dim=8, num_layers=1))
    assert model.output_linear.weight is model.input_embedding.weight
    assert model.output_projection is None


def test_tied_weights_with_hidden_wider_than_embedding_use_a_projection():
    model = RnnLanguageModel(ModelConfig(vocab_size=20, embedding_dim=8, hidden_dim=12, num_layers=1))
    assert model.output_linear.weight is model.input_embedding.weight
    assert isinstance(model.output_projection, torch.nn.Linear)
    assert (model.output_projection.in_features, model.output_projection.out_features) == (12, 8)
    with torch.no_grad():
        hidden, _ = model.hidden_states(torch.tensor([[BOS, 5, 6]]))
    assert hidden.shape == (1, 3, 8)


def test_untied_weights_are_separate():
    model = RnnLanguageModel(ModelConfig(vocab_size=20, embedding_dim=8, hidden_dim=12, tie_weights=False))
    assert model.output_linear.weight is not model.input_embedding.weight
    assert model.output_projection is None
    assert model.output_linear.weight.shape == (20, 12)


@pytest.mark.parametrize("cell, module", [("lstm", torch.nn.LSTM), ("gru", torch.nn.GRU), ("rnn", torch.nn.RNN)])
def test_cells_build_and_carry_state(cell, module):
    model = sharp_model(cell)
    assert type(model.rnn) is module
    tokens = torch.tensor([[BOS, 5, 6, 7]])
    with torch.no_grad():
        whole, _ = model.hidden_states(tokens)
        first, state = model.hidden_states(tokens[:, :2])
        rest, _ = model.hidden_states(tokens[:, 2:], state)
        from_zero, _ = model.hidden_states(tokens, zero_state(model.config, 1, torch.device("cpu")))
    assert torch.allclose(torch.cat([first, rest], dim=1), whole, atol=1e-6)
    assert torch.allclose(from_zero, whole, atol=1e-6)


@pytest.mark.parametrize("cell", list(CELLS))
def test_select_and_concat_states_pick_batch_rows(cell):
    model = sharp_model(cell)
    tokens = torch.tensor([[BOS, 5], [BOS, 6], [BOS, 7]])
    with torch.no_grad():
        _, state = model.hidden_states(tokens)
    picked = select_state(state, torch.tensor([2, 0]))
    joined = concat_states([select_state(state, torch.tensor([2])), select_state(state, torch.tensor([0]))])
    parts = picked if isinstance(picked, tuple) else (picked,)
    full = state if isinstance(state, tuple) else (state,)
    for part, joined_part, whole in zip(parts, joined if isinstance(joined, tuple) else (joined,), full):
        assert torch.equal(part, whole[:, [2, 0]])
        assert torch.equal(joined_part, part)


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(cell="transformer"), "cell must be one of"),
        (dict(vocab_size=0), "vocab_size must be positive"),
        (dict(hidden_dim=-1), "hidden_dim must be positive"),
        (dict(embedding_dim=0), "embedding_dim must be positive"),
        (dict(num_layers=0), "num_layers must be positive"),
        (dict(dropout=1.0), r"dropout must be in \[0, 1\)"),
        (dict(dropout=-0.1), "dropout must be in"),
        (dict(embedding_dropout=1.0), "embedding_dropout must be in"),
        (dict(weight_dropout=-0.5), "weight_dropout must be in"),
        (dict(layer_dropout=1.0), "layer_dropout must be in"),
    ],
)
def test_bad_config_raises_value_error(settings, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(**{"vocab_size": 10, **settings})


def test_gather_logprobs_reuses_one_row_per_state():
    model = sharp_model()
    hidden = torch.randn(3, 8, generator=torch.Generator().manual_seed(2))
    rows, targets = torch.tensor([0, 0, 2, 1, 2]), torch.tensor([4, 9, 9, 3, 16])
    with torch.no_grad():
        expected = torch.log_softmax(model.output_linear(hidden), dim=-1)[rows, targets]
        assert torch.allclose(model.gather_logprobs(hidden, rows, targets), expected, atol=1e-5)
        assert torch.allclose(model.token_logprobs(hidden[rows], targets), expected, atol=1e-5)


def test_output_bias_starts_an_untrained_model_at_the_unigram_distribution():
    model = RnnLanguageModel(ModelConfig(vocab_size=17, embedding_dim=8, hidden_dim=8, dropout=0.0)).eval()
    counts = torch.zeros(17, dtype=torch.int64)
    counts[[3, 5, 9]] = torch.tensor([500, 300, 200])
    model.init_output_bias(counts)
    x, y, lengths = padded_batch(SENTENCES)
    with torch.no_grad():
        hidden, _ = model.hidden_states(x)
        probs = torch.softmax(model.output_linear(hidden), dim=-1)  # every position, whatever the context
    expected = (counts + 0.1) / (counts.sum() + 1.7)
    assert torch.allclose(probs, expected.float().expand_as(probs), atol=0.02)
    assert probs[..., 3].min() > 0.45 and probs[..., 1].max() < 0.01  # frequent high, unseen near zero but not zero
    assert probs[..., 1].min() > 0


def test_locked_dropout_uses_one_mask_for_all_time_steps():
    torch.manual_seed(0)
    x = torch.ones(4, 6, 32)
    dropped = locked_dropout(x, 0.5, training=True)
    assert torch.equal(dropped, dropped[:, :1].expand_as(dropped))  # every step the same as the first
    assert {float(v) for v in dropped.unique()} == {0.0, 2.0}  # kept units are scaled by 1 / (1 - p)
    assert not torch.equal(dropped[0], dropped[1])  # each sequence draws its own mask
    assert torch.equal(locked_dropout(x, 0.5, training=False), x)


def test_embedding_dropout_removes_every_occurrence_of_a_dropped_type():
    torch.manual_seed(1)
    model = sharp_model(embedding_dropout=0.5).train()
    x = torch.tensor([[5, 6, 5, 6, 7, 5, 7, 6]] * 3)
    embedded = model.embed(x)
    zero = embedded.abs().sum(-1) == 0
    for token in (5, 6, 7):  # a type is dropped everywhere in the batch or nowhere
        assert zero[x == token].all() or not zero[x == token].any()
    assert zero.any() and not zero.all()
    assert torch.equal(model.eval().embed(x), model.input_embedding(x))


def test_drop_connect_zeroes_the_given_share_and_rescales_the_rest():
    torch.manual_seed(0)
    weight = torch.rand(400, 500) + 0.5  # no zeros of its own
    dropped = drop_connect(weight, 0.3)
    kept = dropped != 0
    assert abs(1 - kept.float().mean().item() - 0.3) < 0.005  # 200,000 draws: 5 standard deviations
    assert torch.allclose(dropped[kept], weight[kept] / 0.7)
    assert abs(dropped.mean().item() / weight.mean().item() - 1) < 0.01  # the expected weight is unchanged
    # the mask's integers come four to a 64-bit draw: each of the four positions drops its share
    lanes = (drop_connect(weight, 0.5) != 0).view(-1, 4).float().mean(dim=0)
    assert torch.allclose(lanes, torch.full((4,), 0.5), atol=0.011)  # 50,000 draws each: 5 standard deviations


def test_layer_dropout_acts_between_the_layers_alone_and_an_older_model_drops_its_dropout_there():
    base = dict(vocab_size=50, embedding_dim=8, hidden_dim=16, num_layers=2, dropout=0.0)
    x = torch.randint(0, 50, (4, 6), generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    between = RnnLanguageModel(ModelConfig(**base, layer_dropout=0.5)).train()
    assert not torch.allclose(between.hidden_states(x)[0], between.hidden_states(x)[0])  # a new mask each call
    plain = RnnLanguageModel(ModelConfig(**base, layer_dropout=0.0)).train()
    assert torch.equal(plain.hidden_states(x)[0], plain.hidden_states(x)[0])  # dropout 0 elsewhere: no noise
    between.load_state_dict(plain.state_dict())  # the same weights: only training differs
    with torch.no_grad():
        assert torch.equal(between.eval().hidden_states(x)[0], plain.eval().hidden_states(x)[0])
    # a config.json written before layer_dropout existed: its dropout acted between the layers too
    assert RnnLanguageModel(ModelConfig(**{**base, "dropout": 0.3})).rnn.dropout == 0.3
    assert RnnLanguageModel(ModelConfig(**{**base, "dropout": 0.3, "layer_dropout": 0.1})).rnn.dropout == 0.1


@pytest.mark.parametrize("cell", list(CELLS))
def test_weight_dropout_acts_in_training_only_and_keeps_the_weights(cell):
    model = sharp_model(cell, weight_dropout=0.5)
    x = torch.tensor([[2, 5, 6, 7, 8]])
    weights_before = model.rnn.weight_hh_l0.detach().clone()
    with torch.no_grad():
        evaluated = model.hidden_states(x)[0]
        assert torch.equal(evaluated, model.hidden_states(x)[0])  # no noise at scoring time
        torch.manual_seed(3)
        trained = model.train().hidden_states(x)[0]
    assert not torch.allclose(trained, evaluated)
    assert torch.equal(model.rnn.weight_hh_l0, weights_before)
    # gradients reach the recurrent weights through the dropped copy
    model.zero_grad()
    model.hidden_states(x)[0].sum().backward()
    assert model.rnn.weight_hh_l0.grad is not None and model.rnn.weight_hh_l0.grad.abs().sum() > 0
