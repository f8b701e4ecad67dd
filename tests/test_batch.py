"""Tests for pipeline.batch: shards, chunked streaming, merging, and the all-or-nothing output file."""

from __future__ import annotations

import json

import pytest

from pipeline.batch import Shard, chunked, merge_shards, rescore_file
from pipeline.errors import UsageError
from pipeline.nbest import NbestFormatError, ReadReport
from pipeline.rescore import Rescorer


class LengthScorer:
    """A deterministic stand-in LM: log P = -(characters + 1). Enough to rank, exact in any batch."""

    def __init__(self):
        self.batches: list[int] = []

    def score(self, texts):
        self.batches.append(len(texts))
        return [-(len(text) + 1.0) for text in texts]


def utterances(n: int) -> list[dict]:
    return [
        {
            "id": f"u{i}",
            "reference": "a b",
            "hypotheses": [{"text": "a b c" + " d" * (i % 3), "score": -float(i)}, {"text": "a b", "score": -float(i) - 0.5}],
        }
        for i in range(n)
    ]


def write_canonical(path, items):
    path.write_text(json.dumps({"utterances": items}), encoding="utf-8")
    return path


def write_jsonl(path, items):
    path.write_text("".join(json.dumps(u) + "\n" for u in items), encoding="utf-8")
    return path


@pytest.mark.parametrize(("text", "shard"), [(None, Shard(1, 1)), ("", Shard(1, 1)), ("2/3", Shard(2, 3)), ("1/1", Shard(1, 1))])
def test_shard_parse(text, shard):
    assert Shard.parse(text) == shard


@pytest.mark.parametrize("text", ["3/2", "0/2", "1", "a/b", "1/2/3", "-1/2", "1/0"])
def test_bad_shard(text):
    with pytest.raises(UsageError, match="--shard"):
        Shard.parse(text)


def test_shard_selects_every_nth():
    items = [{"id": str(i)} for i in range(7)]
    assert [u["id"] for u in Shard(1, 3).select(items)] == ["0", "3", "6"]
    assert [u["id"] for u in Shard(3, 3).select(items)] == ["2", "5"]


def test_chunked():
    assert [len(c) for c in chunked(iter(range(7)), 3)] == [3, 3, 1]
    assert list(chunked([], 3)) == []


def test_rescore_file_keeps_order_and_reports_each_utterance(tmp_path):
    source = write_canonical(tmp_path / "in.json", utterances(5))
    out = tmp_path / "out.json"
    seen, progress = [], []
    report = rescore_file(source, out, lambda: Rescorer(LengthScorer()), chunk_utterances=2,
                          progress=progress.append, on_utterance=lambda u: seen.append(u["id"]))
    assert report.skipped == []
    written = json.loads(out.read_text())["utterances"]
    assert [u["id"] for u in written] == seen == [f"u{i}" for i in range(5)]
    assert sum(progress) == 5
    for utterance in written:
        assert utterance["best"] == "a b"  # shorter: the stand-in LM prefers it by far
        assert [h["rank"] for h in utterance["hypotheses"]] in ([1, 2], [2, 1])


@pytest.mark.parametrize("count", [2, 3])
@pytest.mark.parametrize("writer", [write_canonical, write_jsonl])
def test_shards_merge_back_to_the_unsharded_output(tmp_path, count, writer):
    suffix = ".json" if writer is write_canonical else ".jsonl"
    source = writer(tmp_path / f"in{suffix}", utterances(7))
    factory = lambda: Rescorer(LengthScorer())  # noqa: E731
    rescore_file(source, tmp_path / f"full{suffix}", factory)
    parts = []
    for k in range(1, count + 1):
        parts.append(tmp_path / f"part{k}{suffix}")
        rescore_file(source, parts[-1], factory, shard=Shard(k, count))
    assert merge_shards(parts, tmp_path / f"merged{suffix}") == 7
    assert (tmp_path / f"merged{suffix}").read_bytes() == (tmp_path / f"full{suffix}").read_bytes()


def test_small_chunks_give_the_same_file(tmp_path):
    source = write_jsonl(tmp_path / "in.jsonl", utterances(9))
    scorers = []

    def factory():
        scorers.append(LengthScorer())
        return Rescorer(scorers[-1], chunk_hypotheses=3)

    rescore_file(source, tmp_path / "a.jsonl", factory)
    assert scorers[0].batches == [4, 4, 4, 4, 2]  # chunks of 2 utterances (4 hypotheses), then the rest
    rescore_file(source, tmp_path / "b.jsonl", lambda: Rescorer(LengthScorer()))
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()


def test_failed_run_leaves_the_old_output_and_no_temporary_file(tmp_path):
    items = utterances(3)
    items[2]["hypotheses"][0]["text"] = 7  # the third utterance is bad: two were already written
    source = write_canonical(tmp_path / "in.json", items)
    out = tmp_path / "out.json"
    out.write_bytes(b"precious\n")
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(NbestFormatError, match="utterance 'u2', hypothesis 1: field 'text' must be a string"):
        rescore_file(source, out, lambda: Rescorer(LengthScorer()), chunk_utterances=1)
    assert out.read_bytes() == b"precious\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_skip_bad_reports_and_continues(tmp_path):
    source = tmp_path / "in.jsonl"
    lines = [json.dumps(u) for u in utterances(3)]
    lines[1] = lines[1][:-5]
    source.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out.jsonl"
    report = rescore_file(source, out, lambda: Rescorer(LengthScorer()), skip_bad=True)
    assert isinstance(report, ReadReport)
    assert len(report.skipped) == 1 and "line 2" in report.skipped[0]
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == ["u0", "u2"]
