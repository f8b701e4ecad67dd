"""What ``asr-rescore perplexity`` measures once the CLI has gathered its options.

The top-level figures are the model's: with a backward direction in the model directory (the default
``--direction auto`` then means ``both``), each sentence's probability is the equal mixture of the two
directions' (:func:`lm.perplexity.mix_directions`), and ``forward`` and ``backward`` give each direction
alone. ``network`` and ``ngram`` are the parts of the first direction measured (the forward one unless
``--direction backward``), each scored alone, so anyone can see which part carries the model.
"""

from __future__ import annotations

from pathlib import Path

from lm.checkpoint import BACKWARD_DIR, ModelDirError, backward_model_dir
from lm.data import CorpusError, iter_corpus_lines
from lm.perplexity import compute_perplexity, mix_directions, score_sentences
from lm.scorer import SentenceScorer
from pipeline.errors import UsageError
from pipeline.models import default_model_dir, load_scorer

DIRECTIONS = ("auto", "forward", "backward", "both")


def direction_dirs(direction: str, model_dir: Path) -> dict[str, Path]:
    """The model directory of each direction to measure, forward first.

    ``auto`` is both where the model has a backward direction, else the forward one alone.
    """
    if direction not in DIRECTIONS:
        raise UsageError(f"--direction must be auto, forward, backward or both, got {direction!r}")
    dirs = {"forward": model_dir, "backward": backward_model_dir(model_dir)}
    if direction == "auto":
        direction = "forward" if dirs["backward"] is None else "both"
    if direction != "forward" and dirs["backward"] is None:
        raise ModelDirError(f"{model_dir}: no backward model in {model_dir / BACKWARD_DIR}; --direction {direction} needs one")
    return dirs if direction == "both" else {direction: dirs[direction]}


def measure_perplexity(model_dir: Path | None, text: Path, direction: str, threads: int, device: str) -> dict:
    """The JSON report of ``asr-rescore perplexity``: the model's figures first, then each direction and part."""
    if threads < 1:
        raise UsageError(f"--threads must be at least 1, got {threads}")
    dirs = direction_dirs(direction, model_dir or default_model_dir())
    sentences = list(iter_corpus_lines([text]))
    if not sentences:
        raise CorpusError(f"{text}: no sentences (empty lines only); nothing to measure")
    scorers = {name: load_scorer(path, threads=threads, device=device) for name, path in dirs.items()}
    scores = {name: score_sentences(scorer, sentences) for name, scorer in scorers.items()}
    if len(scores) == 2:
        result = {"direction": "both", **mix_directions(sentences, scores["forward"], scores["backward"]).as_dict()}
        result.update({name: s.report(sentences).as_dict() for name, s in scores.items()})
    else:
        (name, alone), = scores.items()
        result = {"direction": name, **alone.report(sentences).as_dict()}
    first = next(iter(scorers.values()))
    if first.lm.ngram is not None:
        for part in ("network", "ngram"):
            part_scorer = SentenceScorer(first.lm.part(part), batch_tokens=first.batch_tokens, threads=threads)
            result[part] = compute_perplexity(part_scorer, sentences).as_dict()
    return result
