"""Drawing sentences from a trained LM, token by token (a check of what the model has learnt).

All ``num`` samples advance together: one recurrent step per token, the state carried between steps,
so a step costs one (num, 1) call of the network, as in pytorch/examples ``word_language_model/generate.py``.
Randomness comes from a local ``torch.Generator``: the same seed gives the same sentences, and the
global RNG is left untouched.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from lm.checkpoint import LanguageModel
from lm.model import State
from lm.ngram import history_windows

GREEDY_TEMPERATURE = 1e-6  # at or below this temperature, sampling is argmax


@dataclass
class SamplingConfig:
    """How to draw sentences.

    ``temperature`` divides the logits (<= 1e-6 means greedy argmax); ``top_k`` > 0 keeps only the k
    most probable tokens at each step; ``max_tokens`` caps the tokens drawn after the prefix
    (``</s>`` ends a sentence earlier). ``prefix`` is text every sentence starts with; for a backward
    model it is the text every sentence *ends* with, since that model reads sentences right to left.
    """

    num: int = 5
    temperature: float = 1.0
    top_k: int = 0
    max_tokens: int = 100
    seed: int = 0
    prefix: str = ""

    def __post_init__(self) -> None:
        for name in ("num", "max_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise ValueError(f"--temperature must be a finite number >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"--top-k must be >= 0 (0 keeps every token), got {self.top_k}")


def sample_sentences(lm: LanguageModel, config: SamplingConfig) -> list[str]:
    """Draw ``config.num`` sentences (prefix included) as text, in left-to-right order.

    A backward model generates right to left, so its token sequences are reversed before decoding.
    """
    sequences = sample_token_ids(lm, config)
    if lm.direction == "backward":
        sequences = [sequence[::-1] for sequence in sequences]
    return [lm.tokenizer.decode(sequence) for sequence in sequences]


def sample_token_ids(lm: LanguageModel, config: SamplingConfig) -> list[list[int]]:
    """Token ids of ``config.num`` samples in the model's reading order: prefix ids, then drawn ids.

    Neither ``<s>`` nor ``</s>`` is included. Pad, unk and bos are never drawn (a prefix with
    characters the tokenizer does not know may still hold unk). The model is put in eval mode and
    returned to its previous mode afterwards.
    """
    model = lm.model
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            return draw(lm, config)
    finally:
        model.train(was_training)


def draw(lm: LanguageModel, config: SamplingConfig) -> list[list[int]]:
    """The sampling loop behind :func:`sample_token_ids` (model already in eval and inference mode)."""
    prefix = initial_ids(lm, config.prefix)
    generator = torch.Generator(device=lm.device).manual_seed(config.seed)
    x = torch.tensor([prefix] * config.num, dtype=torch.int64, device=lm.device)  # (N, P + 1), <s> first
    histories = initial_histories(lm, prefix, config.num)
    logits, state = next_token_logits(lm, x, None, histories)
    eos = lm.tokenizer.eos_id
    drawn: list[torch.Tensor] = []
    finished = torch.zeros(config.num, dtype=torch.bool, device=lm.device)
    for _ in range(config.max_tokens):
        tokens = choose_tokens(logits, config, generator)  # (N,)
        tokens = tokens.masked_fill(finished, eos)  # a finished row only repeats </s>
        drawn.append(tokens)
        finished |= tokens == eos
        if bool(finished.all()):
            break
        if histories is not None:
            histories = torch.cat([histories[:, 1:], tokens[:, None].cpu()], dim=1)
        logits, state = next_token_logits(lm, tokens[:, None], state, histories)
    rows = torch.stack(drawn, dim=1).tolist()  # (N, T)
    return [prefix[1:] + until_eos(row, eos) for row in rows]


def initial_ids(lm: LanguageModel, prefix: str) -> list[int]:
    """``<s>`` then the prefix ids in the model's reading order (reversed for a backward model)."""
    ids = lm.tokenizer.encode([prefix])[0] if prefix else []
    if lm.direction == "backward":
        ids.reverse()
    return [lm.tokenizer.bos_id, *ids]


def initial_histories(lm: LanguageModel, prefix: list[int], num: int) -> torch.Tensor | None:
    """(N, n-1) n-gram histories after ``<s>`` and the prefix; None for a model without an n-gram."""
    if lm.ngram is None:
        return None
    window = history_windows(torch.tensor(prefix), lm.ngram.history_width)[-1]
    return window.repeat(num, 1)


def next_token_logits(
    lm: LanguageModel, x: torch.Tensor, state: State | None, histories: torch.Tensor | None = None
) -> tuple[torch.Tensor, State]:
    """Feed x (N, L) int64; return the (N, V) float32 logits after its last token and the new state.

    With an n-gram, the "logits" are the mixture's log-probabilities given ``histories`` (N, n-1).
    Pad, unk and bos logits are set to -inf so they are never drawn; ``</s>`` stays allowed.
    """
    output, state = lm.model.hidden_states(x, state)  # output: (N, L, D)
    logits = lm.model.output_linear(output[:, -1]).float()  # (N, V)
    if histories is not None:
        network = torch.log_softmax(logits, dim=-1).cpu()
        mixed = [lm.mix_next(network[row], histories[row]) for row in range(network.shape[0])]
        logits = torch.stack(mixed).float().to(logits.device)
    tokenizer = lm.tokenizer
    banned = torch.tensor([tokenizer.pad_id, tokenizer.unk_id, tokenizer.bos_id], device=logits.device)
    logits[:, banned] = -torch.inf
    return logits, state


def choose_tokens(logits: torch.Tensor, config: SamplingConfig, generator: torch.Generator) -> torch.Tensor:
    """One token per row of logits (N, V): argmax when greedy, else a draw from the tempered softmax."""
    if config.temperature <= GREEDY_TEMPERATURE:
        return logits.argmax(dim=-1)
    candidates = None
    if config.top_k > 0:
        logits, candidates = logits.topk(min(config.top_k, logits.shape[-1]), dim=-1)  # (N, k) each
    probs = torch.softmax(logits / config.temperature, dim=-1)
    choice = torch.multinomial(probs, 1, generator=generator)  # (N, 1) column index
    if candidates is not None:
        choice = candidates.gather(-1, choice)
    return choice[:, 0]


def until_eos(ids: list[int], eos_id: int) -> list[int]:
    """The ids before the first ``</s>`` (all of them if there is none)."""
    return ids[: ids.index(eos_id)] if eos_id in ids else ids
