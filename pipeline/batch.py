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

from pipeline.errors import UsageError
from pipeline.nbest import NbestWriter, ReadReport, detect_layout, iter_utterances
from pipeline.rescore import Rescorer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` (1-based) of ``count``: utterances index-1, index-1+count, ... of the file."""

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

    def select(self, utterances: Iterable[dict]) -> Iterator[dict]:
        return itertools.islice(utterances, self.index - 1, None, self.count)


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
        progress(len(chunk))
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
) -> ReadReport:
    """Read, rescore and write one file; the output appears only when everything succeeded."""
    report = ReadReport()
    layout = detect_layout(input_path)
    utterances = shard.select(iter_utterances(input_path, skip_bad=skip_bad, report=report))
    if layout == "json":
        # A JSON file is in memory anyway: validate all of it before the first byte of output
        # (JSON Lines streams, so on stdout an error there can only stop the stream).
        utterances = list(utterances)
    with NbestWriter(output_path, layout) as writer:
        for utterance in rescore_stream(utterances, rescorer_factory, jobs, chunk_utterances, progress):
            writer.write(utterance)
            if on_utterance:
                on_utterance(utterance)
    return report


def merge_shards(shard_paths: list[Path], output_path: Path | None) -> int:
    """Interleave the outputs of ``--shard 1/N .. N/N`` back into input order. Returns utterances written."""
    layout = detect_layout(shard_paths[0])
    streams = [iter_utterances(p) for p in shard_paths]
    written = 0
    with NbestWriter(output_path, layout) as writer:
        for group in itertools.zip_longest(*streams):
            for utterance in group:
                if utterance is not None:
                    writer.write(utterance)
                    written += 1
    return written
