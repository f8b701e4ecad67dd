"""Kaldi-style text archives: one ``KEY value...`` line per entry (``ark,t:`` files, ``text`` files)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from pipeline.nbest import NbestFormatError

NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?|[-+]?(inf|nan)", re.IGNORECASE)


def read_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, line without its newline) of a UTF-8 text file; blank lines skipped."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise NbestFormatError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise NbestFormatError(f"{path}: is a directory, expected a text file") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise NbestFormatError(f"{path}: line {line}: not valid UTF-8") from None
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            yield number, line.rstrip("\r")


def split_key(line: str) -> tuple[str, str]:
    """``KEY rest of the line`` -> (KEY, rest); the rest may be empty (an empty transcript)."""
    parts = line.strip().split(maxsplit=1)
    return parts[0], parts[1] if len(parts) > 1 else ""


def read_archive(path: Path, value) -> dict:
    """{KEY: value(rest of the line, path, line number)} of a ``KEY ...`` file; a key may not repeat."""
    entries: dict = {}
    for number, line in read_lines(path):
        key, rest = split_key(line)
        if key in entries:
            raise NbestFormatError(f"{path}: line {number}: key {key!r} appears twice")
        entries[key] = value(rest, path, number)
    return entries


def read_text_archive(path: Path) -> dict[str, str]:
    """``KEY words...`` lines (a Kaldi ``text`` or ``words_text`` file) as {KEY: text}."""
    return read_archive(path, lambda rest, _path, _number: " ".join(rest.split()))


def parse_number(text: str, path: Path, number: int) -> float:
    """The first number of a value (``-12.5``, ``tensor(-12.5)``, ``tensor(-12.5, device='cuda:0')``)."""
    match = NUMBER.search(text)
    if match is None:
        raise NbestFormatError(f"{path}: line {number}: expected a number after the key, got {text.strip()!r}")
    value = float(match.group(0))
    if value != value or value in (float("inf"), float("-inf")):
        raise NbestFormatError(f"{path}: line {number}: the score must be a finite number, got {match.group(0)}")
    return value


def read_number_archive(path: Path) -> dict[str, float]:
    """``KEY number`` lines as {KEY: number}."""
    return read_archive(path, parse_number)


def is_number_archive(path: Path) -> bool:
    """True when every line of the file is ``KEY number`` and nothing else (a cost file)."""
    try:
        for _, line in read_lines(path):
            key, rest = split_key(line)
            if not NUMBER.fullmatch(rest.strip()):
                return False
    except NbestFormatError:
        return False
    return True
