"""References from a separate file, for any layout: a Kaldi ``text`` file (``UTTID words...``) or a
NeMo JSON-lines manifest (``{"audio_filepath": ..., "text": ...}`` per line, ids from the file stem)."""

from __future__ import annotations

import json
from pathlib import Path, PurePath

from pipeline.formats.archive import read_lines, read_text_archive
from pipeline.nbest import NbestFormatError


def is_manifest(path: Path) -> bool:
    """True when the first non-blank line is a JSON object (a manifest), not ``UTTID words``."""
    for _, line in read_lines(path):
        return line.lstrip().startswith("{")
    return False


def read_manifest(path: Path) -> list[tuple[str, str | None]]:
    """(id, reference) per manifest line: the ``audio_filepath`` stem (else the line number) and ``text``."""
    entries, seen = [], {}
    for index, (number, line) in enumerate(read_lines(path), 1):
        try:
            item = json.loads(line)
        except json.JSONDecodeError as e:
            raise NbestFormatError(f"{path}: line {number}: invalid JSON ({e.msg})") from None
        if not isinstance(item, dict):
            raise NbestFormatError(f"{path}: line {number}: expected an object")
        audio = item.get("audio_filepath")
        utt_id = PurePath(audio).stem if isinstance(audio, str) and audio else str(index)
        if utt_id in seen:
            raise NbestFormatError(f"{path}: line {number}: id {utt_id!r} (from audio_filepath) repeats line {seen[utt_id]}")
        seen[utt_id] = number
        text = item.get("text")
        if text is not None and not isinstance(text, str):
            raise NbestFormatError(f"{path}: line {number}: field 'text' must be a string")
        entries.append((utt_id, " ".join(text.split()) if isinstance(text, str) else None))
    return entries


def read_references(path: Path) -> dict[str, str]:
    """{id: reference} from a Kaldi ``text`` file or a manifest."""
    if is_manifest(path):
        return {utt_id: text for utt_id, text in read_manifest(path) if text is not None}
    return read_text_archive(path)


def attach_references(utterances: list[dict], references: dict[str, str], path: Path) -> list[dict]:
    """Set each utterance's ``reference`` from the file (it replaces one the n-best file carried)."""
    missing = [u["id"] for u in utterances if u["id"] not in references]
    if missing and len(missing) == len(utterances):
        raise NbestFormatError(f"{path}: none of the n-best ids has a reference here (first id {missing[0]!r})")
    for utterance in utterances:
        if utterance["id"] in references:
            utterance["reference"] = references[utterance["id"]]
    return utterances
