"""The recurrent language model: embedding, a stack of LSTM/GRU/RNN layers, a tied output layer."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

CELLS = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}

# The dropout settings of ModelConfig, each in [0, 1) (lm.regularisation chooses them by the corpus).
DROPOUTS = ("dropout", "weight_dropout", "embedding_dropout", "layer_dropout")

# LSTM state is a (h, c) tuple of (num_layers, N, H) tensors; GRU and RNN states are one such tensor.
State = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


@dataclass
class ModelConfig:
    """Architecture of :class:`RnnLanguageModel`; stored in ``config.json``."""

    vocab_size: int
    embedding_dim: int = 256
    hidden_dim: int = 512
    num_layers: int = 1  # one beat two in perplexity in the same budget, error rates level or better (docs/training.md)
    cell: str = "lstm"
    dropout: float = 0.2
    tie_weights: bool = True
    embedding_dropout: float = 0.0
    weight_dropout: float = 0.0
    layer_dropout: float | None = None  # between stacked layers; None: ``dropout`` (models trained before it)

    def __post_init__(self) -> None:
        if self.cell not in CELLS:
            raise ValueError(f"cell must be one of {', '.join(CELLS)}, got {self.cell!r}")
        for name in ("vocab_size", "embedding_dim", "hidden_dim", "num_layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in DROPOUTS:
            value = getattr(self, name)
            if value is not None and not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {value}")

    @property
    def stacked(self) -> bool:
        """Whether the network has layers to drop out between (``layer_dropout`` acts only then)."""
        return self.num_layers > 1

    @property
    def between_layers(self) -> float:
        """The dropout on the outputs of each stacked layer but the last (0 for one layer: none to drop)."""
        if not self.stacked:
            return 0.0
        return self.dropout if self.layer_dropout is None else self.layer_dropout


class RnnLanguageModel(nn.Module):
    """Left-to-right recurrent LM over token ids.

    With ``tie_weights`` the output layer shares the embedding matrix (Press & Wolf 2017, "Using the
    Output Embedding to Improve Language Models"); when ``hidden_dim != embedding_dim`` a linear
    projection maps the recurrent output down to the embedding size first.

    Regularisation follows Merity et al. 2018 ("Regularizing and Optimizing LSTM Language Models"),
    which matters on corpora of a few hundred thousand tokens: ``dropout`` uses one mask per sequence
    on the embeddings and the outputs, ``layer_dropout`` is ordinary dropout between stacked layers,
    ``embedding_dropout`` drops whole token types from a batch, ``weight_dropout`` drops recurrent
    (hidden-to-hidden) weights. All act in training only.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.input_embedding = nn.Embedding(config.vocab_size, config.embedding_dim)
        self.rnn = CELLS[config.cell](
            config.embedding_dim,
            config.hidden_dim,
            num_layers=config.num_layers,
            dropout=config.between_layers,
            batch_first=True,
        )
        output_dim = config.hidden_dim
        self.output_projection: nn.Linear | None = None
        if config.tie_weights and config.hidden_dim != config.embedding_dim:
            self.output_projection = nn.Linear(config.hidden_dim, config.embedding_dim)
            output_dim = config.embedding_dim
        self.output_linear = nn.Linear(output_dim, config.vocab_size)
        if config.tie_weights:
            self.output_linear.weight = self.input_embedding.weight
        nn.init.uniform_(self.input_embedding.weight, -0.05, 0.05)
        nn.init.zeros_(self.output_linear.bias)

    def init_output_bias(self, target_counts: torch.Tensor) -> None:
        """Start the output bias at the training corpus's log unigram distribution (add-0.1 smoothed).

        With a zero bias and small tied weights the untrained model predicts a uniform distribution, and
        on a large vocabulary the first epochs go to learning token frequencies through the recurrent
        stack (on zh-rmrb, 8000 pieces, two epochs of a 50-minute budget); starting at the unigram skips that.
        """
        counts = target_counts.to(torch.float64) + 0.1
        with torch.no_grad():
            self.output_linear.bias.copy_((counts / counts.sum()).log())

    def hidden_states(self, x: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """Run the recurrent stack.

        x: (N, L) int64 token ids. Returns the (N, L, D) outputs that feed the output layer and the
        final recurrent state.
        """
        embedded = self.embed(x)
        output, state = self.run_rnn(locked_dropout(embedded, self.config.dropout, self.training), state)
        output = locked_dropout(output, self.config.dropout, self.training)
        if self.output_projection is not None:
            output = self.output_projection(output)
        return output, state

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Look up embeddings; in training, zero every occurrence of a random ``embedding_dropout`` share of types."""
        embedded = self.input_embedding(x)
        p = self.config.embedding_dropout
        if not self.training or p == 0.0:
            return embedded
        keep = torch.empty(self.config.vocab_size, device=x.device).bernoulli_(1 - p) / (1 - p)
        return embedded * keep[x].unsqueeze(-1).to(embedded.dtype)

    def run_rnn(self, embedded: torch.Tensor, state: State | None) -> tuple[torch.Tensor, State]:
        """The recurrent stack; in training, with DropConnect on its hidden-to-hidden weights."""
        p = self.config.weight_dropout
        if not self.training or p == 0.0:
            return self.rnn(embedded, state)
        dropped = {
            name: drop_connect(getattr(self.rnn, name), p)
            for name in self.rnn._flat_weights_names
            if name.startswith("weight_hh")
        }
        return torch.func.functional_call(self.rnn, dropped, (embedded, state))

    def token_logprobs(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """log P(target | hidden) for M positions: hidden (M, D), targets (M,) -> (M,) float32.

        The log-softmax normaliser is a logsumexp over the vocabulary, computed only for the rows given.
        """
        logits = self.output_linear(hidden)
        if self.training and logits.dtype == torch.bfloat16:
            # Under bf16 autocast, which would copy the logits to float32 for the loss, training takes
            # the log-softmax in bf16 (its sums in float32): a CPU step 1.15x as fast, the gradient
            # within 0.5% (docs/results.md). Scoring and validation stay in float32.
            with torch.autocast(logits.device.type, enabled=False):
                return -F.cross_entropy(logits, targets, reduction="none").float()
        return -F.cross_entropy(logits.float(), targets, reduction="none")

    def gather_logprobs(self, hidden: torch.Tensor, rows: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """log P(targets[m] | hidden[rows[m]]): one output-layer row per state however many targets it has.

        hidden (N, D), rows (M,) and targets (M,) int64 -> (M,) float32. The prefix-trie scorer uses this:
        a trie node with several children pays for its logsumexp once.
        """
        logits = self.output_linear(hidden).float()
        normaliser = torch.logsumexp(logits, dim=-1)
        return logits[rows, targets] - normaliser[rows]

    def forward(self, x: torch.Tensor, y: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Per-token negative log-likelihood, the one function behind training and scoring.

        x: (N, L) int64, each row ``<s> w1 .. wn`` then padding; y: (N, L) int64, ``w1 .. wn </s>``
        then padding; lengths: (N,) number of real positions (n + 1). Returns (N, L) float32 NLL in
        nats with padding positions set to 0. The output layer runs only on real positions.
        """
        output, _ = self.hidden_states(x)
        mask = torch.arange(x.shape[1], device=x.device)[None, :] < lengths.to(x.device)[:, None]
        nll = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
        nll[mask] = -self.token_logprobs(output[mask], y[mask])
        return nll


def locked_dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Dropout with one mask per sequence, shared by all its time steps (Gal & Ghahramani 2016).

    x: (N, L, D). An RNN sees the same units dropped at every step instead of fresh noise each step.
    """
    if not training or p == 0.0:
        return x
    mask = torch.empty(x.shape[0], 1, x.shape[2], device=x.device).bernoulli_(1 - p) / (1 - p)
    return x * mask.to(x.dtype)


def drop_connect(weight: torch.Tensor, p: float) -> torch.Tensor:
    """Zero each element of ``weight`` with probability ``p`` and scale the rest by 1 / (1 - p).

    The mask compares 16-bit random integers, four cut from each 64-bit draw, with a threshold, so ``p``
    is rounded to a multiple of 1/65,536: on a CPU the default network's two 1M-element masks cost 10 ms
    a step, forward and backward, against 15 ms from uniform floats and 19 ms with ``F.dropout``.
    """
    count = weight.numel()
    # the whole int64 range: random_()'s default range leaves every fourth 16-bit lane non-negative
    words = torch.empty(-(-count // 4), dtype=torch.int64, device=weight.device).random_(-(2**63), 2**63 - 1)
    bits = words.view(torch.int16)[:count].view(weight.shape)
    keep = bits >= min(round(p * 65536), 65535) - 32768
    return weight * (keep.to(weight.dtype) * (1 / (1 - p)))


def select_state(state: State, index: torch.Tensor) -> State:
    """Rows ``index`` of a batched recurrent state (the batch is dimension 1)."""
    if isinstance(state, tuple):
        return tuple(s.index_select(1, index) for s in state)  # type: ignore[return-value]
    return state.index_select(1, index)


def concat_states(states: list[State]) -> State:
    """Concatenate recurrent states along the batch dimension."""
    if isinstance(states[0], tuple):
        return tuple(torch.cat(parts, dim=1) for parts in zip(*states))  # type: ignore[return-value]
    return torch.cat(states, dim=1)  # type: ignore[arg-type]


def zero_state(config: ModelConfig, batch: int, device: torch.device, dtype=torch.float32) -> State:
    """The initial all-zero state for ``batch`` sequences (what the RNN uses when given None)."""
    h = torch.zeros(config.num_layers, batch, config.hidden_dim, device=device, dtype=dtype)
    return (h, h.clone()) if config.cell == "lstm" else h
