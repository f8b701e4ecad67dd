"""Writing n-best output: canonical JSON, JSON Lines, or a transcript (Kaldi ``text``, sclite ``trn``).

Written to a temporary file beside the target and renamed into place only when the run succeeded, so
a failed run never leaves a half-written or clobbered file (see NBEST_FORMAT.md for the layouts).
"""

from __future__ import annotations

import json
import logging
import os
import stat
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

from pipeline.nbest import JSONL_SUFFIXES, NbestFormatError

logger = logging.getLogger(__name__)

LAYOUTS = ("json", "jsonl", "text", "trn")  # the last two: one line of the best text per utterance


def output_layout(path: str | os.PathLike | None, input_layout: str, explicit: str | None = None) -> str:
    """The layout to write: ``explicit``, else by the output's name, else the input's.

    ``.jsonl``/``.ndjson``: JSON Lines; ``.json``: canonical; ``.trn``: sclite's ``best text (UTTID)``;
    ``.txt`` or a file named ``text``: a Kaldi transcript ``UTTID best text``.
    """
    if explicit:
        if explicit not in LAYOUTS:
            raise ValueError(f"--output-format must be one of {', '.join(LAYOUTS)}, got {explicit!r}")
        return explicit
    if path is not None:
        name = Path(path).name.lower()
        suffix = Path(path).suffix.lower()
        if suffix in JSONL_SUFFIXES:
            return "jsonl"
        if suffix == ".json":
            return "json"
        if suffix == ".trn":
            return "trn"
        if suffix == ".txt" or name == "text":
            return "text"
    return input_layout


class NbestWriter:
    """Context manager writing utterances one at a time, canonical JSON or JSON Lines.

    With a path the output goes to a temporary file beside it that replaces the path
    only when the ``with`` block ends without an exception, so a failed run never
    leaves a half-written or clobbered file. With ``path=None`` it streams to stdout.
    """

    def __init__(self, path: str | os.PathLike | None, layout: str = "json", trailer=None) -> None:
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        self.path = None if path is None else Path(path)
        self.layout = layout
        self.trailer = trailer  # a callable returning {"shard": ...}, written after the last utterance
        self._out: IO[str] | None = None
        self._count = 0

    @property
    def count(self) -> int:
        """Utterances written so far."""
        return self._count

    @property
    def _name(self) -> str:
        return "<stdout>" if self.path is None else str(self.path)

    def __enter__(self) -> NbestWriter:
        if self.path is None:
            self._out = sys.stdout
        else:
            self._out = tempfile.NamedTemporaryFile(
                "w", encoding="utf-8", newline="\n", dir=self.path.parent,
                prefix=f".{self.path.name}.", suffix=".tmp", delete=False,
            )
        if self.layout == "json":
            self._out.write('{"utterances": [')
        return self

    def write(self, utt: dict) -> None:
        """Append one utterance; raise NbestFormatError if it cannot be written as JSON."""
        if self._out is None:
            raise RuntimeError("NbestWriter.write() called outside its 'with' block")
        try:
            if self.layout in ("text", "trn"):
                self._out.write(transcript_line(utt, self.layout))
                self._count += 1
                return
            line = json.dumps(utt, ensure_ascii=False, allow_nan=False)
            if self.layout == "jsonl":
                self._out.write(line + "\n")
            else:
                self._out.write(("\n" if self._count == 0 else ",\n") + line)
        except ValueError as e:  # non-finite floats, or text the output encoding cannot hold
            raise NbestFormatError(f"{self._name}: cannot write utterance {utt.get('id')!r}: {e}") from None
        self._count += 1

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: Any) -> None:
        try:
            if exc_type is None:
                self._finish()
        finally:
            self._discard()
            self._out = None

    def _finish(self) -> None:
        """Close the JSON list and, for a file, fsync it and move it into place."""
        assert self._out is not None, "NbestWriter used outside its 'with' block"
        trailer = self.trailer() if self.trailer and self.layout in ("json", "jsonl") else {}
        if self.layout == "json":
            extra = "".join(f", {json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}" for k, v in trailer.items())
            self._out.write(f"\n]{extra}}}\n")
        elif trailer:
            self._out.write(json.dumps(trailer, ensure_ascii=False) + "\n")
        self._out.flush()
        if self.path is None:
            return
        os.fsync(self._out.fileno())
        self._out.close()
        os.chmod(self._out.name, _output_mode(self.path))
        os.replace(self._out.name, self.path)
        self._out = None  # moved into place: nothing left to discard
        logger.info("wrote %d utterances to %s", self._count, self.path)

    def _discard(self) -> None:
        """Close and delete the temporary file if it was not moved into place."""
        if self.path is None or self._out is None:
            return
        self._out.close()  # idempotent
        Path(self._out.name).unlink(missing_ok=True)


def transcript_line(utt: dict, layout: str) -> str:
    """One utterance's best text as a Kaldi ``text`` line or an sclite ``trn`` line.

    An id with whitespace is refused: read back, its first word would become the id and the rest text."""
    if any(character.isspace() for character in str(utt["id"])):
        raise ValueError(f"its id has whitespace, which a {'Kaldi text' if layout == 'text' else 'trn'} file cannot hold")
    text = " ".join(str(utt.get("best", "")).split())
    if layout == "text":
        return f"{utt['id']} {text}".rstrip() + "\n"
    return f"{text} ({utt['id']})\n".lstrip()


def _output_mode(path: Path) -> int:
    """Permissions for the output: keep an existing file's, else the umask default (not 0600)."""
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def write_nbest(path: str | os.PathLike | None, utterances: Iterable[dict], layout: str = "json") -> None:
    """Write utterances to path (stdout if None) as canonical JSON or JSON Lines."""
    with NbestWriter(path, layout) as writer:
        for utt in utterances:
            writer.write(utt)
