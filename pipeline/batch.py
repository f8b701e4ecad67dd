"""Rescoring a whole n-best file: stream in, shard, score (in worker processes if asked), stream out.

Memory stays bounded for JSON Lines input: utterances flow through in chunks, and with ``jobs > 1``
at most ``2 * jobs`` chunks are in flight. Output order is input order.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from lm.atomic import file_sha256
from pipeline.errors import UsageError
from pipeline.nbest import NbestFormatError, ReadReport, count_lines, detect_layout, iter_positioned, iter_utterances
from pipeline.nbest_writer import NbestWriter, output_layout
from pipeline.rescore import Rescorer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` (1-based) of ``count``: entries index-1, index-1+count, ... of the file."""

    index: int = 1
    count: int = 1

    @classmethod
    def parse(cls, text: str | None) -> Shard:
        if not text:
            return cls()
        try:
            index, count = (int(part) for part in text.split("/"))
        except ValueError:
            raise UsageError(f"--shard must look like K/N (e.g. 1/4), got {text!r}") from None
        if not 1 <= index <= count:
            raise UsageError(f"--shard K/N needs 1 <= K <= N, got {text!r}")
        return cls(index, count)

    def holds(self, position: int) -> bool:
        """Whether the entry at this 0-based position of the input belongs to this shard."""
        return position % self.count == self.index - 1

    def select(self, positioned: Iterable[tuple[int, dict]]) -> Iterator[dict]:
        """The utterances of this shard, chosen by their position in the input (skipped entries count)."""
        return (utt for position, utt in positioned if self.holds(position))

    def size(self, entries: int) -> int:
        """How many of ``entries`` input entries fall in this shard."""
        return len(range(self.index - 1, entries, self.count))


def chunked(items: Iterable[dict], size: int) -> Iterator[list[dict]]:
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


# Worker processes each build their own Rescorer once (the model is loaded per process).
_worker_rescorer: Rescorer | None = None


def _init_worker(factory, threads: int) -> None:
    import torch

    global _worker_rescorer
    torch.set_num_threads(threads)
    _worker_rescorer = factory()


def _rescore_chunk(chunk: list[dict]) -> list[dict]:
    assert _worker_rescorer is not None
    return list(_worker_rescorer.rescore_utterances(chunk))


def rescore_stream(
    utterances: Iterable[dict], rescorer_factory, jobs: int, chunk_utterances: int, progress=None
) -> Iterator[dict]:
    """Rescored utterances in input order, computed here or in ``jobs`` worker processes."""
    if jobs <= 1:
        yield from rescorer_factory().rescore_utterances(utterances, progress)
        return
    with ProcessPoolExecutor(jobs, initializer=_init_worker, initargs=(rescorer_factory, 1)) as pool:
        pending: list[Future] = []
        for chunk in chunked(utterances, chunk_utterances):
            pending.append(pool.submit(_rescore_chunk, chunk))
            if len(pending) >= 2 * jobs:
                yield from finish(pending.pop(0), progress)
        for future in pending:
            yield from finish(future, progress)


def finish(future: Future, progress) -> list[dict]:
    chunk = future.result()
    if progress:
        progress.advance(len(chunk))
    return chunk


def rescore_file(
    input_path: Path,
    output_path: Path | None,
    rescorer_factory,
    jobs: int = 1,
    shard: Shard = Shard(),
    skip_bad: bool = False,
    chunk_utterances: int = 400,
    progress=None,
    on_utterance=None,
    check=None,
    output_format: str | None = None,
    nbest_out: int | None = None,
) -> ReadReport:
    """Read, rescore and write one file; the output appears only when everything succeeded.

    The output's layout follows its name (:func:`output_layout`). ``check(utterance, where)`` runs on
    every utterance as it is read, in this process. ``progress`` has ``total(n)`` and ``advance(n)``.
    A shard's output ends with a record of what it is (:func:`shard_record`), which ``merge`` checks.
    """
    report = ReadReport()
    layout = detect_layout(input_path)
    try:
        out_layout = output_layout(output_path, layout, output_format)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if shard.count > 1 and out_layout not in ("json", "jsonl"):
        raise UsageError(f"--shard writes JSON or JSON Lines (merge needs their shard record), not {out_layout}: "
                         "merge the shards, then write the transcript")
    if nbest_out is not None and nbest_out < 1:
        raise UsageError(f"--nbest-out must be at least 1, got {nbest_out}")
    positioned = iter_positioned(input_path, skip_bad=skip_bad, report=report)
    utterances = shard.select(positioned)
    if check is not None:
        utterances = checked(utterances, check, str(input_path))
    if layout == "json":
        # A JSON file is in memory anyway: validate all of it before the first byte of output.
        utterances = list(utterances)
        total = len(utterances)
    else:
        total = shard.size(count_lines(input_path))
        if output_path is None:  # stdout cannot be taken back: read the stream through once to validate it
            validate_stream(input_path, shard, skip_bad, check)
    if progress:
        progress.total(total)
    trailer = (lambda: shard_record(input_path, shard, report, writer.count)) if shard.count > 1 else None
    with NbestWriter(output_path, out_layout, trailer=trailer) as writer:
        for utterance in rescore_stream(utterances, rescorer_factory, jobs, chunk_utterances, progress):
            if on_utterance:
                on_utterance(utterance)
            writer.write(keep_top(utterance, nbest_out) if nbest_out else utterance)
    return report


def keep_top(utterance: dict, count: int) -> dict:
    """The utterance with its hypotheses sorted by rank and cut to the best ``count`` (``--nbest-out``)."""
    ranked = sorted(utterance["hypotheses"], key=lambda h: h["rank"])
    return {**utterance, "hypotheses": ranked[:count]}


def validate_stream(input_path: Path, shard: Shard, skip_bad: bool, check) -> None:
    """Read (and check) every utterance of a JSON Lines file without keeping any, so errors come first."""
    utterances = shard.select(iter_positioned(input_path, skip_bad=skip_bad, report=ReadReport(quiet=True)))
    for utterance in utterances:
        if check is not None:
            check(utterance, str(input_path))


def checked(utterances: Iterable[dict], check, where: str) -> Iterator[dict]:
    for utterance in utterances:
        check(utterance, where)
        yield utterance


def shard_record(input_path: Path, shard: Shard, report: ReadReport, written: int) -> dict:
    """What a shard's output says about itself, so that ``merge`` can refuse a wrong set of shards."""
    return {"shard": {
        "index": shard.index,
        "count": shard.count,
        "input": str(Path(input_path).resolve()),
        "input_sha256": file_sha256(input_path),
        "input_entries": report.entries,
        "utterances": written,
        "skipped_positions": [p for p in report.skipped_positions if shard.holds(p)],
    }}


def merge_shards(shard_paths: list[Path], output_path: Path | None) -> int:
    """Recombine the outputs of ``--shard 1/N .. N/N`` in input order. Returns utterances written.

    The shards may be given in any order; a missing, repeated or foreign shard is refused by name.
    """
    records = [read_shard_record(path) for path in shard_paths]
    ordered = check_shard_set(shard_paths, records)
    first_path, first = ordered[0]
    count, entries = first["count"], first["input_entries"]
    skipped = {index: set(record["skipped_positions"]) for index, (_, record) in enumerate(ordered)}
    streams = [iter_utterances(path) for path, _ in ordered]
    written = 0
    with NbestWriter(output_path, output_layout(output_path, detect_layout(first_path))) as writer:
        for position in range(entries):
            index = position % count
            if position in skipped[index]:
                continue
            utterance = next(streams[index], None)
            if utterance is None:
                raise NbestFormatError(f"{ordered[index][0]}: has fewer utterances than its shard record says")
            writer.write(utterance)
            written += 1
        for (path, _), stream in zip(ordered, streams):
            if next(stream, None) is not None:
                raise NbestFormatError(f"{path}: has more utterances than its shard record says")
    return written


def read_shard_record(path: Path) -> dict:
    """The shard record at the end of a ``rescore --shard K/N`` output (reading the whole file)."""
    report = ReadReport()
    for _ in iter_positioned(path, report=report):
        pass
    record = report.shard
    if not isinstance(record, dict) or not SHARD_FIELDS <= set(record):
        raise NbestFormatError(f"{path}: not the output of 'rescore --shard K/N' (no shard record at its end)")
    if report.entries != record["utterances"]:
        raise NbestFormatError(f"{path}: holds {report.entries} utterances, its shard record says {record['utterances']}")
    return record


SHARD_FIELDS = frozenset({"index", "count", "input", "input_sha256", "input_entries", "utterances", "skipped_positions"})


def check_shard_set(paths: list[Path], records: list[dict]) -> list[tuple[Path, dict]]:
    """The shards ordered by K, after checking they are exactly 1/N .. N/N of one input."""
    first_path, first = paths[0], records[0]
    by_index: dict[int, Path] = {}
    for path, record in zip(paths, records):
        if (record["input_sha256"], record["count"]) != (first["input_sha256"], first["count"]):
            raise NbestFormatError(
                f"{path}: shard {record['index']}/{record['count']} of {record['input']}, but {first_path} is "
                f"shard {first['index']}/{first['count']} of {first['input']} (another input or shard count)"
            )
        if record["index"] in by_index:
            raise NbestFormatError(f"{path}: shard {record['index']}/{record['count']} is given twice (also {by_index[record['index']]})")
        by_index[record["index"]] = path
    count = first["count"]
    missing = [f"{k}/{count}" for k in range(1, count + 1) if k not in by_index]
    if missing:
        given = ", ".join(f"{k}/{count}" for k in sorted(by_index))
        raise NbestFormatError(f"shards of {first['input']}: missing {', '.join(missing)} (given: {given})")
    ordered = sorted(zip(paths, records), key=lambda pair: pair[1]["index"])
    for path, record in ordered:
        expected = Shard(record["index"], record["count"]).size(record["input_entries"]) - len(record["skipped_positions"])
        if record["utterances"] != expected:
            raise NbestFormatError(f"{path}: holds {record['utterances']} utterances, shard {record['index']}/{record['count']} of its input has {expected}")
    return ordered
