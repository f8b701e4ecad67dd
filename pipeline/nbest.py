"""Read, validate and write n-best lists (see shared/NBEST_FORMAT.md).

An utterance is a plain dict, so fields this module does not know (``am_score``,
``condition``, ...) pass through untouched. Reading takes four layouts:

- canonical JSON: ``{"utterances": [utterance, ...]}``
- JSON Lines: one utterance object per line, read as a stream
- a bare top-level JSON list of utterance objects
- the mlm-scoring dict: ``{"utt-id": {"hyp_1": {"score": s, "text": t}, ..., "ref": r}}``

Writing is :mod:`pipeline.nbest_writer`.
"""

from __future__ import annotations

import codecs
import json
import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Iterable, Iterator

logger = logging.getLogger(__name__)

KNOWN_LAYOUTS = (
    "our JSON (canonical, JSON Lines, a bare list or the mlm dict), a Kaldi n-best directory (--format kaldi), "
    "an ESPnet2 decode directory with 1best_recog/ (--format espnet), a NeMo beams TSV "
    "(--format nemo --beam-size N --references MANIFEST)"
)
JSONL_SUFFIXES = (".jsonl", ".ndjson")
_MLM_HYP_KEY = re.compile(r"hyp_(\d+)")
_JSON_TYPE_NAMES = {dict: "object", list: "list", str: "string", bool: "bool", type(None): "null"}


class NbestFormatError(ValueError):
    """An n-best file is missing, unreadable or not in a layout we accept.

    The message is one line naming the file, the place (utterance id, ``line N`` of a
    JSON Lines file, or line and column of bad JSON), the field and what was expected.
    """


@dataclass
class ReadReport:
    """What a read dropped or found besides utterances, for the caller to report."""

    skipped: list[str] = field(default_factory=list)  # one message per skipped utterance/line
    skipped_positions: list[int] = field(default_factory=list)  # their 0-based entry positions
    shard: dict | None = None  # the record a 'rescore --shard K/N' output carries (see pipeline.batch)
    entries: int = 0  # entries read so far, skipped ones included
    quiet: bool = False  # record skipped entries without logging them


class _Invalid(Exception):
    """One utterance (or JSON Lines line) is bad; the caller decides to raise or skip."""

    def __init__(self, where: str, what: str) -> None:
        super().__init__(f"{where}: {what}")
        self.where = where
        self.what = what


class _DuplicateKey(Exception):
    """A JSON object repeats a key, which json.loads would silently collapse."""


# --------------------------------------------------------------------------- reading


def detect_layout(path: str | os.PathLike) -> str:
    """Return "jsonl" or "json": by suffix, else by whether line 1 alone is an utterance."""
    path = Path(path)
    if path.suffix.lower() in JSONL_SUFFIXES:
        return "jsonl"
    with _open_binary(path) as f:
        first = next((line for line in f if line.strip()), b"")
    try:
        obj = json.loads(_decode_utf8(first))
    except (UnicodeDecodeError, ValueError):
        return "json"
    return "jsonl" if isinstance(obj, dict) and "hypotheses" in obj else "json"


def iter_utterances(
    path: str | os.PathLike, *, skip_bad: bool = False, report: ReadReport | None = None
) -> Iterator[dict]:
    """Yield the validated utterances of an n-best file in file order, any layout.

    A hypothesis's "score", when present, is a finite number; whether every hypothesis has
    one is checked where the scores are combined (:mod:`pipeline.fields`), never filled in.
    With ``skip_bad`` an invalid utterance, or an invalid JSON Lines line, is described in
    ``report.skipped`` instead of raising; errors in the file's overall structure always
    raise ``NbestFormatError``.
    """
    for _, utt in iter_positioned(path, skip_bad=skip_bad, report=report):
        yield utt


def iter_positioned(
    path: str | os.PathLike, *, skip_bad: bool = False, report: ReadReport | None = None
) -> Iterator[tuple[int, dict]]:
    """Like iter_utterances, with each utterance's 0-based entry position in the file.

    An entry is a top-level utterance of a JSON file or a non-blank line of a JSON Lines file,
    skipped ones included, so positions do not move when ``skip_bad`` drops an entry.
    ``report.quiet`` skips without logging (a first pass whose second pass will log).
    """
    path = Path(path)
    report = report if report is not None else ReadReport()
    reader = _iter_jsonl if detect_layout(path) == "jsonl" else _iter_json
    yield from reader(path, skip_bad, report)


def count_lines(path: str | os.PathLike) -> int:
    """Non-blank lines of a file without parsing them: a JSON Lines file's entries, for a progress total."""
    with _open_binary(Path(path)) as f:
        return sum(1 for line in f if line.strip())


def is_shard_record(obj: Any) -> bool:
    """The trailer of a shard's output: an object whose only key is "shard"."""
    return isinstance(obj, dict) and set(obj) == {"shard"}


def read_nbest(path: str | os.PathLike, **kwargs: Any) -> list[dict]:
    """Read a whole n-best file into a list; see iter_utterances for the keywords."""
    return list(iter_utterances(path, **kwargs))


def _open_binary(path: Path) -> IO[bytes]:
    """Open a file for reading, turning OS errors into one-line NbestFormatErrors."""
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise NbestFormatError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise NbestFormatError(f"{path}: is a directory, expected an n-best file") from None
    except OSError as e:
        raise NbestFormatError(f"{path}: cannot read: {e.strerror}") from None


def _iter_jsonl(path: Path, skip_bad: bool, report: ReadReport) -> Iterator[tuple[int, dict]]:
    """Stream a JSON Lines file line by line, so memory stays bounded."""
    seen: dict[str, str] = {}
    position = -1
    with _open_binary(path) as f:
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                utt = _parse_jsonl_line(raw, lineno)
            except _Invalid as err:
                position += 1
                report.entries = position + 1
                _reject(path, err, skip_bad, report, position)
                continue
            if is_shard_record(utt):
                report.shard = utt["shard"]
                continue
            position += 1
            report.entries = position + 1
            try:
                if report.shard is not None:
                    raise _Invalid(f"line {lineno}", "an utterance after the shard record, which must be the last line")
                _check_utterance(utt, f"line {lineno}", seen, with_position=True)
            except _Invalid as err:
                _reject(path, err, skip_bad, report, position)
                continue
            yield position, utt


def _parse_jsonl_line(raw: bytes, lineno: int) -> Any:
    """Decode and parse one JSON Lines line, naming the line in any error."""
    where = f"line {lineno}"
    try:
        return _loads(_decode_utf8(raw.rstrip(b"\r\n")))  # columns then count within the line
    except UnicodeDecodeError as e:
        raise _Invalid(where, f"invalid UTF-8 at byte offset {e.start} of the line") from None
    except json.JSONDecodeError as e:
        raise _Invalid(where, f"invalid JSON at column {e.colno}: {e.msg}") from None
    except _DuplicateKey as e:
        raise _Invalid(where, f"key {e.args[0]!r} appears twice in one object") from None


def _iter_json(path: Path, skip_bad: bool, report: ReadReport) -> Iterator[tuple[int, dict]]:
    """Load a whole JSON file (canonical, bare list or mlm dict) and yield its utterances."""
    seen: dict[str, str] = {}
    data = _load_json(path)
    if isinstance(data, dict) and "utterances" in data and isinstance(data.get("shard"), dict):
        report.shard = data["shard"]
    for index, (mlm_key, raw) in enumerate(_top_level_entries(path, data), 1):
        position = f"utterance #{index}"
        report.entries = index
        try:
            utt = raw if mlm_key is None else _from_mlm(mlm_key, raw, position)
            _check_utterance(utt, position, seen, with_position=False)
        except _Invalid as err:
            _reject(path, err, skip_bad, report, index - 1)
            continue
        yield index - 1, utt


def _load_json(path: Path) -> Any:
    """Read, decode and parse a whole JSON file, with line/column in any error."""
    with _open_binary(path) as f:
        data = f.read()
    if not data.strip():
        raise NbestFormatError(f"{path}: file is empty, expected an n-best list")
    try:
        return _loads(_decode_utf8(data))
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        message = f"invalid UTF-8 at line {line} (byte offset {e.start})"
    except json.JSONDecodeError as e:
        message = f"invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}"
        if (e.lineno, e.colno) == (1, 1):
            message += f" (not JSON at all: the reader knows {KNOWN_LAYOUTS})"
    except _DuplicateKey as e:
        message = f"key {e.args[0]!r} appears twice in one object (ids and field names must be unique)"
    raise NbestFormatError(f"{path}: {message}")


def _decode_utf8(data: bytes) -> str:
    """Decode UTF-8, dropping a leading byte-order mark; error offsets still count the mark."""
    bom = codecs.BOM_UTF8 if data.startswith(codecs.BOM_UTF8) else b""
    try:
        return data[len(bom):].decode("utf-8")
    except UnicodeDecodeError as e:
        raise UnicodeDecodeError(e.encoding, data, e.start + len(bom), e.end + len(bom), e.reason) from None


def _loads(text: str) -> Any:
    """json.loads that refuses repeated keys instead of keeping the last one."""
    return json.loads(text, object_pairs_hook=_dict_without_duplicates)


def _dict_without_duplicates(pairs: list[tuple[str, Any]]) -> dict:
    """Build a dict from JSON object pairs, raising _DuplicateKey on a repeated key."""
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return result


def _top_level_entries(path: Path, data: Any) -> Iterator[tuple[str | None, Any]]:
    """Yield (mlm key or None, raw utterance) for each utterance of a loaded JSON file."""
    if isinstance(data, list):
        entries: Iterable[tuple[str | None, Any]] = ((None, item) for item in data)
    elif isinstance(data, dict) and "utterances" in data:
        if not isinstance(data["utterances"], list):
            got = _type_name(data["utterances"])
            raise NbestFormatError(f"{path}: field 'utterances' must be a list, got {got}")
        entries = ((None, item) for item in data["utterances"])
    elif isinstance(data, dict):
        entries = data.items()  # mlm-scoring layout: {utt_id: {"hyp_1": ..., "ref": ...}}
    else:
        raise NbestFormatError(
            f"{path}: top level must be an object or a list of utterances, got {_type_name(data)}"
        )
    yield from entries


def _from_mlm(key: str, value: Any, position: str) -> dict:
    """Turn one mlm-scoring entry into a canonical utterance, hypotheses by hyp_N order."""
    if not isinstance(value, dict):
        where = f"utterance {key!r}" if key else position
        raise _Invalid(where, f"expected an object of hyp_N entries, got {_type_name(value)}")
    numbered, others = [], {}
    for name, item in value.items():
        match = _MLM_HYP_KEY.fullmatch(name)
        if match:
            numbered.append((int(match.group(1)), item))
        elif name != "ref":
            others[name] = item
    utt: dict[str, Any] = {"id": key}
    if "ref" in value:
        utt["reference"] = value["ref"]
    for name, item in others.items():
        utt.setdefault(name, item)
    numbered.sort(key=lambda pair: pair[0])
    utt["hypotheses"] = [item for _, item in numbered]
    return utt


def _check_utterance(utt: Any, position: str, seen: dict[str, str], *, with_position: bool) -> None:
    """Validate one utterance and record its id in seen.

    ``position`` is "line N" (JSON Lines) or "utterance #N"; messages name the id once
    known, and keep the position too when ``with_position`` (JSON Lines).
    """
    if not isinstance(utt, dict):
        raise _Invalid(position, f"an utterance must be an object, got {_type_name(utt)}")
    utt_id = _required(utt, "id", str, position)
    if not utt_id:
        raise _Invalid(position, "field 'id' must be a non-empty string")
    where = f"{position}, utterance {utt_id!r}" if with_position else f"utterance {utt_id!r}"
    if utt_id in seen:
        raise _Invalid(where, f"duplicate id: {position} repeats {seen[utt_id]}")
    hypotheses = _required(utt, "hypotheses", list, where)
    if "reference" in utt and not isinstance(utt["reference"], str):
        raise _Invalid(where, f"field 'reference' must be a string, got {_type_name(utt['reference'])}")
    for name, value in utt.items():
        if name != "hypotheses":
            _check_finite(value, where, name)
    for i, hyp in enumerate(hypotheses, 1):
        _check_hypothesis(hyp, f"{where}, hypothesis {i}")
    seen[utt_id] = position


def _check_hypothesis(hyp: Any, where: str) -> None:
    """Validate one hypothesis: an object with a string text and, if present, a numeric score."""
    if not isinstance(hyp, dict):
        raise _Invalid(where, f"a hypothesis must be an object, got {_type_name(hyp)}")
    _required(hyp, "text", str, where)
    if "score" in hyp and (isinstance(hyp["score"], bool) or not isinstance(hyp["score"], (int, float))):
        raise _Invalid(where, f"field 'score' must be a number, got {_type_name(hyp['score'])}")
    for name, value in hyp.items():
        _check_finite(value, where, name)


def _required(obj: dict, name: str, expected: type, where: str) -> Any:
    """Return obj[name], raising _Invalid if it is missing or not of the expected type."""
    wanted = _JSON_TYPE_NAMES.get(expected, expected.__name__)
    if name not in obj:
        raise _Invalid(where, f"field {name!r} is missing, expected a {wanted}")
    value = obj[name]
    if not isinstance(value, expected):
        raise _Invalid(where, f"field {name!r} must be a {wanted}, got {_type_name(value)}")
    return value


def _check_finite(value: Any, where: str, name: str) -> None:
    """Reject NaN/Infinity anywhere in a field: Python's json reads them, but they are not JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        raise _Invalid(where, f"field {name!r} must be a finite number, got {json.dumps(value)}")
    if isinstance(value, list):
        for item in value:
            _check_finite(item, where, name)
    elif isinstance(value, dict):
        for item in value.values():
            _check_finite(item, where, name)


def _reject(path: Path, err: _Invalid, skip_bad: bool, report: ReadReport, position: int) -> None:
    """Raise NbestFormatError for a bad utterance, or record and log it when skipping."""
    message = f"{path}: {err.where}: {err.what}"
    if not skip_bad:
        raise NbestFormatError(message) from None
    report.skipped.append(message)
    report.skipped_positions.append(position)
    if not report.quiet:
        logger.warning("skipping %s", message)


def _type_name(value: Any) -> str:
    """Name a parsed JSON value's type the way error messages say it (int, string, object...)."""
    return _JSON_TYPE_NAMES.get(type(value), type(value).__name__)
