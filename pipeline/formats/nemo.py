"""NeMo beam-search output (``eval_beamsearch_ngram_*.py --preds_output_folder``): a TSV of
``text<TAB>score`` lines with no ids, each utterance's candidates consecutive and best first, a fixed
beam size per utterance (given by the user), in the order of a JSON-lines manifest. Ids come from the
manifest (the stem of ``audio_filepath``, else the line number); see :mod:`.references`.
An empty text stays an empty string.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.formats.archive import parse_number
from pipeline.nbest import NbestFormatError


def read_nemo_beams(path: Path, beam_size: int, ids: list[str]) -> list[dict]:
    """The utterances of a NeMo beams TSV: ``beam_size`` lines per id of the manifest, in its order."""
    if beam_size < 1:
        raise NbestFormatError(f"{path}: a NeMo beams file needs --beam-size N (N >= 1), got {beam_size}")
    rows = []
    try:
        lines = Path(path).read_text(encoding="utf-8-sig").splitlines()
    except FileNotFoundError:
        raise NbestFormatError(f"{path}: no such file") from None
    except UnicodeDecodeError:
        raise NbestFormatError(f"{path}: not valid UTF-8") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        text, tab, score = line.rstrip("\r").rpartition("\t")
        if not tab:
            raise NbestFormatError(f"{path}: line {number}: expected text<TAB>score, got {line[:60]!r}")
        rows.append({"text": " ".join(text.split()), "score": parse_number(score, path, number)})
    if len(rows) != beam_size * len(ids):
        raise NbestFormatError(
            f"{path}: {len(rows)} lines, but {len(ids)} utterances in the manifest x --beam-size {beam_size} "
            f"= {beam_size * len(ids)}"
        )
    return [{"id": utt_id, "hypotheses": rows[i * beam_size:(i + 1) * beam_size]} for i, utt_id in enumerate(ids)]
