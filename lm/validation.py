"""Validation: the network's and the mixture's loss per token on the held-out sentences.

With an n-gram the mixture weight is fitted on the validation set (EM) at every validation; the
n-gram's own scores never change, so they are computed once and kept in the session.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lm import distributed
from lm.data import make_batches
from lm.ngram import fit_mixture_weight, history_windows, mix_logprobs
from lm.session import Session, forward_batch


@dataclass
class Validation:
    """Mean NLL per token on the validation set: the network's, and the model's (mixed with the n-gram)."""

    rnn_loss: float
    loss: float
    rnn_weight: float = 1.0


def validate(session: Session, model: torch.nn.Module | None = None) -> Validation:
    """Score the validation set (all ranks) with ``model`` (the network being trained unless given),
    fitting the n-gram mixture weight on it when there is one."""
    model = session.model if model is None else model
    model.eval()
    rnn, ngram = [], []
    with torch.inference_mode():
        for batch in validation_batches(session):
            nll, x, y, lengths = forward_batch(session, batch, train=False, model=model)
            real = torch.arange(x.shape[1])[None, :] < lengths[:, None]
            rnn.append(-nll.double().cpu()[real])
            if session.ngram is not None and session.valid_ngram_logprobs is None:
                histories = history_windows(x, session.ngram.history_width)[real]
                ngram.append(session.ngram.logprobs(histories, y[real]))
    model.train()
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
