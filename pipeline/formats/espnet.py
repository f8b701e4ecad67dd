"""ESPnet2 decoding with ``--nbest N``: ``1best_recog/`` ... ``Nbest_recog/``, each holding ``text``
(``UTTID words``) and ``score`` (``UTTID value``; the value may be written ``tensor(-12.3456)``, even
with a device suffix: the first number is read). The directory gives the rank; an utterance may be
missing from the higher ranks. The score becomes the hypothesis's ``score``.
"""

from __future__ import annotations

import re
from pathlib import Path

from pipeline.formats.archive import read_number_archive, read_text_archive
from pipeline.nbest import NbestFormatError

RANK_DIR = re.compile(r"(\d+)best_recog")


def rank_dirs(directory: Path) -> list[tuple[int, Path]]:
    """The ``Kbest_recog`` folders of a decode directory, by rank."""
    found = []
    for path in Path(directory).iterdir():
        match = RANK_DIR.fullmatch(path.name)
        if match and path.is_dir():
            found.append((int(match.group(1)), path))
    return sorted(found)


def looks_like_espnet(path: Path) -> bool:
    return path.is_dir() and bool(rank_dirs(path))


def read_espnet(directory: Path) -> list[dict]:
    """The utterances of an ESPnet2 decode directory, in ``1best_recog/text`` order, by rank."""
    ranks = rank_dirs(directory)
    if not ranks:
        raise NbestFormatError(f"{directory}: no 1best_recog/ ... Nbest_recog/ folders")
    utterances: dict[str, list[dict]] = {}
    for rank, folder in ranks:
        texts = read_text_archive(folder / "text")
        scores = read_number_archive(folder / "score")
        for utt_id, text in texts.items():
            if utt_id not in scores:
                raise NbestFormatError(f"{folder / 'score'}: no score for {utt_id!r} (it is in {folder.name}/text)")
            if rank > 1 and utt_id not in utterances:
                raise NbestFormatError(f"{folder / 'text'}: {utt_id!r} is not in the 1best_recog/text file")
            utterances.setdefault(utt_id, []).append({"text": text, "score": scores[utt_id]})
        extra = next((u for u in scores if u not in texts), None)
        if extra is not None:
            raise NbestFormatError(f"{folder / 'score'}: {extra!r} has no line in {folder.name}/text")
    return [{"id": utt_id, "hypotheses": hyps} for utt_id, hyps in utterances.items()]
