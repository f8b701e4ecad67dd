"""Choosing the reader for an input: by ``--format``, else by what the path is (NBEST_FORMAT.md)."""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
import tempfile
from pathlib import Path

from pipeline.formats.espnet import looks_like_espnet, read_espnet
from pipeline.formats.kaldi import looks_like_kaldi, read_kaldi
from pipeline.formats.nemo import read_nemo_beams
from pipeline.formats.references import attach_references, is_manifest, read_manifest, read_references
from pipeline.nbest import KNOWN_LAYOUTS, NbestFormatError, read_nbest

FORMATS = ("auto", "json", "kaldi", "espnet", "nemo")


def detect_format(path: Path) -> str:
    """``espnet`` or ``kaldi`` for a directory that is one, ``nemo`` for a .tsv file, else ``json``."""
    if path.is_dir():
        if looks_like_espnet(path):
            return "espnet"
        if looks_like_kaldi(path):
            return "kaldi"
        raise NbestFormatError(f"{path}: a directory that is neither a Kaldi n-best directory (words_text or text "
                               f"with cost files) nor an ESPnet2 decode directory; the reader knows {KNOWN_LAYOUTS}")
    if path.suffix.lower() == ".tsv":
        return "nemo"
    return "json"


def read_toolkit(path: Path, fmt: str, references: Path | None, beam_size: int | None) -> list[dict]:
    """The utterances of a toolkit layout, references attached when a file of them is given."""
    if fmt == "kaldi":
        utterances = read_kaldi(path)
    elif fmt == "espnet":
        utterances = read_espnet(path)
    elif fmt == "nemo":
        if references is None or not is_manifest(references):
            raise NbestFormatError(f"{path}: a NeMo beams file has no ids: give its manifest with --references MANIFEST.json")
        if beam_size is None:
            raise NbestFormatError(f"{path}: a NeMo beams file needs --beam-size N (candidates per utterance)")
        manifest = read_manifest(references)
        utterances = read_nemo_beams(path, beam_size, [utt_id for utt_id, _ in manifest])
        for utterance, (_, text) in zip(utterances, manifest):
            if text is not None:
                utterance["reference"] = text
        return utterances
    else:
        utterances = read_nbest(path)
    if references is not None:
        attach_references(utterances, read_references(references), references)
    return utterances


@contextlib.contextmanager
def canonical_input(path: Path, fmt: str = "auto", references: Path | None = None, beam_size: int | None = None):
    """The path of our JSON for any input: itself, or a temporary canonical file made from the toolkit's layout.

    ``-`` is standard input (copied to a temporary file, since layouts need a second look). A JSON input
    without ``--references`` is passed through untouched, so JSON Lines still streams.
    """
    if fmt not in FORMATS:
        from pipeline.errors import UsageError

        raise UsageError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    with tempfile.TemporaryDirectory(prefix="asr-rescore-input-") as folder:
        if str(path) == "-":
            spooled = Path(folder) / "stdin"
            with open(spooled, "wb") as f:
                shutil.copyfileobj(sys.stdin.buffer, f)
            path = spooled
        fmt = detect_format(path) if fmt == "auto" else fmt
        if fmt == "json" and references is None:
            yield path
            return
        utterances = read_toolkit(path, fmt, references, beam_size)
        canonical = Path(folder) / "input.json"
        canonical.write_text(json.dumps({"utterances": utterances}, ensure_ascii=False), encoding="utf-8")
        yield canonical
