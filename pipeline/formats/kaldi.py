"""Kaldi n-best lists as ``lattice-to-nbest`` + ``nbest-to-linear`` (+ ``int2sym.pl``) leave them.

A directory of text archives keyed ``UTTID-N`` (N = 1-based rank; utterance ids may hold hyphens, so
the rank is after the last one): a words file (``words_text``, else ``text``) of ``UTTID-N word ...``
and cost files of ``UTTID-N cost`` (``acwt``, ``lmwt.nolm``, ``lmwt.withlm``, ``lmwt.lmonly``, ...).
Costs are negated natural-log scores; each file becomes a first-pass field with the sign turned and a
name ending in ``_score`` (``acwt`` -> ``ac_score``, ``lmwt.nolm`` -> ``lm_nolm_score``). A Kaldi list
has no total ``score``: tuning weighs these fields, and untuned rescoring uses :data:`UNTUNED_FIELDS`.
"""

from __future__ import annotations

import re
from pathlib import Path

from pipeline.formats.archive import is_number_archive, read_number_archive, read_text_archive
from pipeline.nbest import NbestFormatError

WORDS_FILES = ("words_text", "text")
NOT_COSTS = frozenset({"words", "words_text", "text", "ali", "num_hyps"})
# Untuned: the acoustic cost at Kaldi's usual acoustic scale (0.1, i.e. --lmwt 10) and the graph cost
# without the old LM (lexicon and transitions); our LM takes the old one's place, as rnnlmrescore.sh does.
UNTUNED_FIELDS = {"ac_score": 0.1, "lm_nolm_score": 1.0}


def field_name(file_name: str) -> str:
    """The field a cost file becomes: ``acwt`` -> ``ac_score``, ``lmwt.withlm`` -> ``lm_withlm_score``."""
    parts = [p for p in re.split(r"[^0-9A-Za-z]+", file_name.lower()) if p]
    first = re.sub(r"(wt|cost)$", "", parts[0]) or parts[0]
    rest = [p for p in parts[1:] if p != "cost"]
    return "_".join([first, *rest]) + "_score"


def split_rank(key: str, path: Path) -> tuple[str, int]:
    """``UTT-ID-3`` -> (``UTT-ID``, 3): the rank is after the last hyphen."""
    utt_id, hyphen, rank = key.rpartition("-")
    if not hyphen or not utt_id or not rank.isdigit() or int(rank) < 1:
        raise NbestFormatError(f"{path}: key {key!r} is not UTTID-N (N the 1-based rank after the last hyphen)")
    return utt_id, int(rank)


def looks_like_kaldi(path: Path) -> bool:
    return path.is_dir() and any((path / name).is_file() for name in WORDS_FILES)


def read_kaldi(directory: Path) -> list[dict]:
    """The utterances of a Kaldi n-best directory, in the words file's order, hypotheses by rank."""
    directory = Path(directory)
    words_path = next((directory / n for n in WORDS_FILES if (directory / n).is_file()), None)
    if words_path is None:
        raise NbestFormatError(f"{directory}: no words file ({' or '.join(WORDS_FILES)}) of UTTID-N word... lines")
    texts = read_text_archive(words_path)
    costs = {}
    for path in sorted(directory.iterdir()):
        if path.is_file() and path.name not in NOT_COSTS and not path.name.startswith(".") and is_number_archive(path):
            costs[field_name(path.name)] = (path, read_number_archive(path))
    if not costs:
        raise NbestFormatError(f"{directory}: no cost files (UTTID-N cost lines, e.g. acwt, lmwt.nolm) beside {words_path.name}")
    utterances: dict[str, dict[int, dict]] = {}
    for key, text in texts.items():
        utt_id, rank = split_rank(key, words_path)
        hypothesis = {"text": text}
        for name, (path, values) in costs.items():
            if key not in values:
                raise NbestFormatError(f"{path}: no cost for {key!r} (it is in {words_path.name})")
            hypothesis[name] = -values[key]
        utterances.setdefault(utt_id, {})[rank] = hypothesis
    for name, (path, values) in costs.items():
        extra = next((key for key in values if key not in texts), None)
        if extra is not None:
            raise NbestFormatError(f"{path}: key {extra!r} has no words in {words_path.name}")
    return [{"id": utt_id, "hypotheses": [ranks[r] for r in sorted(ranks)]} for utt_id, ranks in utterances.items()]
