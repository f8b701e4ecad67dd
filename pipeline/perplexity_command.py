"""What ``asr-rescore perplexity`` measures once the CLI has gathered its options.

The top-level figures are the model's: with a backward direction in the model directory (the default
``--direction auto`` then means ``both``), each sentence's probability is the equal mixture of the two
directions' (:func:`lm.perplexity.mix_directions`), and ``forward`` and ``backward`` give each direction
alone. ``network`` and ``ngram`` are the parts of the first direction measured (the forward one unless
``--direction backward``), each scored alone, so anyone can see which part carries the model.
"""

from __future__ import annotations

from pathlib import Path

from lm.checkpoint import ModelDirError, backward_model_dir
from lm.data import CorpusError, iter_corpus_lines
from lm.perplexity import mix_directions, score_sentences
from lm.scorer import SentenceScorer
from pipeline.errors import UsageError
from pipeline.models import default_model_dir, load_scorer

DIRECTIONS = ("auto", "forward", "backward", "both")


def resolve_direction(direction: str, model_dir: Path) -> str:
    """``auto`` is ``both`` where the model has a backward direction, else ``forward``."""
    if direction not in DIRECTIONS:
        raise UsageError(f"--direction must be auto, forward, backward or both, got {direction!r}")
    has_backward = backward_model_dir(model_dir) is not None
    if direction == "auto":
        return "both" if has_backward else "forward"
    if direction != "forward" and not has_backward:
        raise ModelDirError(f"{model_dir}: no backward model in {model_dir / 'backward'}; --direction {direction} needs one")
    return direction


def measure_perplexity(model_dir: Path | None, text: Path, direction: str, threads: int, device: str) -> dict:
    """The JSON report of ``asr-rescore perplexity``: the model's figures first, then each direction and part."""
    if threads < 1:
        raise UsageError(f"--threads must be at least 1, got {threads}")
    model_dir = model_dir or default_model_dir()
    direction = resolve_direction(direction, model_dir)
    sentences = list(iter_corpus_lines([text]))
    if not sentences:
        raise CorpusError(f"{text}: no sentences (empty lines only); nothing to measure")
    names = ["forward", "backward"] if direction == "both" else [direction]
    scorers = {name: load_scorer(model_dir if name == "forward" else backward_model_dir(model_dir), threads=threads, device=device)
               for name in names}
    scores = {name: score_sentences(scorer, sentences) for name, scorer in scorers.items()}
    alone = {name: s.report(sentences).as_dict() for name, s in scores.items()}
    if direction == "both":
        result = {"direction": direction, **mix_directions(sentences, scores["forward"], scores["backward"]).as_dict(), **alone}
    else:
        result = {"direction": direction, **alone[direction]}
    first = scorers[names[0]]
    if first.lm.ngram is not None:
        for part in ("network", "ngram"):
            part_scorer = SentenceScorer(first.lm.part(part), batch_tokens=first.batch_tokens, threads=threads)
            result[part] = score_sentences(part_scorer, sentences).report(sentences).as_dict()
    return result
