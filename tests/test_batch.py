"""Tests for pipeline.batch: shards, chunked streaming, merging, and the all-or-nothing output file."""

from __future__ import annotations

import json

import pytest

from pipeline.batch import Shard, chunked, merge_shards, rescore_file
from pipeline.errors import UsageError
from pipeline.nbest import NbestFormatError, ReadReport, read_nbest
from pipeline.rescore import Rescorer, Weights


class Progress:
    """Records what rescore_file reports to a progress bar."""

    def __init__(self):
        self.totals, self.steps, self.first_total_before_step = [], [], None

    def total(self, n):
        self.totals.append(n)
        self.first_total_before_step = not self.steps

    def advance(self, n):
        self.steps.append(n)


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


def test_shard_selects_every_nth_entry_by_position():
    items = [(i, {"id": str(i)}) for i in range(7)]
    assert [u["id"] for u in Shard(1, 3).select(items)] == ["0", "3", "6"]
    assert [u["id"] for u in Shard(3, 3).select(items)] == ["2", "5"]
    with_a_gap = [pair for pair in items if pair[0] != 3]  # entry 3 was skipped: shard 2 keeps entry 4
    assert [u["id"] for u in Shard(2, 3).select(with_a_gap)] == ["1", "4"]
    assert [Shard(k, 3).size(7) for k in (1, 2, 3)] == [3, 2, 2]


def test_chunked():
    assert [len(c) for c in chunked(iter(range(7)), 3)] == [3, 3, 1]
    assert list(chunked([], 3)) == []


def test_rescore_file_keeps_order_and_reports_each_utterance(tmp_path):
    source = write_canonical(tmp_path / "in.json", utterances(5))
    out = tmp_path / "out.json"
    seen, progress = [], Progress()
    report = rescore_file(source, out, lambda: Rescorer(LengthScorer(), Weights()), chunk_utterances=2,
                          progress=progress, on_utterance=lambda u: seen.append(u["id"]))
    assert report.skipped == []
    written = json.loads(out.read_text())["utterances"]
    assert [u["id"] for u in written] == seen == [f"u{i}" for i in range(5)]
    assert progress.totals == [5] and sum(progress.steps) == 5
    for utterance in written:
        assert utterance["best"] == "a b"  # shorter: the stand-in LM prefers it by far
        assert [h["rank"] for h in utterance["hypotheses"]] == [2, 1]


@pytest.mark.parametrize("writer", [write_canonical, write_jsonl])
def test_progress_knows_the_total_before_the_first_utterance(tmp_path, writer):
    source = writer(tmp_path / ("in.json" if writer is write_canonical else "in.jsonl"), utterances(7))
    progress = Progress()
    rescore_file(source, tmp_path / "out.json", lambda: Rescorer(LengthScorer()), progress=progress,
                 shard=Shard(2, 3), on_utterance=lambda u: progress.steps.append(0))
    assert progress.totals == [2] and progress.first_total_before_step


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


def write_shards(tmp_path, source, count, suffix=".json", **kwargs) -> list:
    parts = []
    for k in range(1, count + 1):
        parts.append(tmp_path / f"part{k}{suffix}")
        rescore_file(source, parts[-1], lambda: Rescorer(LengthScorer()), shard=Shard(k, count), **kwargs)
    return parts


def test_shards_given_in_any_order_merge_in_input_order(tmp_path):
    """part10 sorts before part2 in a shell glob: merge orders by the K each shard records."""
    source = write_jsonl(tmp_path / "in.jsonl", utterances(23))
    rescore_file(source, tmp_path / "full.jsonl", lambda: Rescorer(LengthScorer()))
    parts = write_shards(tmp_path, source, 11, suffix=".jsonl")
    globbed = sorted(parts, key=str)  # part1, part10, part11, part2, ...
    assert globbed != parts
    assert merge_shards(globbed, tmp_path / "merged.jsonl") == 23
    assert (tmp_path / "merged.jsonl").read_bytes() == (tmp_path / "full.jsonl").read_bytes()


def test_a_missing_shard_is_refused_by_name(tmp_path):
    parts = write_shards(tmp_path, write_canonical(tmp_path / "in.json", utterances(7)), 3)
    with pytest.raises(NbestFormatError, match=r"missing 2/3 \(given: 1/3, 3/3\)"):
        merge_shards([parts[0], parts[2]], tmp_path / "merged.json")
    assert not (tmp_path / "merged.json").exists()


def test_a_shard_given_twice_is_refused(tmp_path):
    parts = write_shards(tmp_path, write_canonical(tmp_path / "in.json", utterances(7)), 2)
    with pytest.raises(NbestFormatError, match=r"part1.json: shard 1/2 is given twice"):
        merge_shards([parts[0], parts[1], parts[0]], None)


def test_a_shard_of_another_input_is_refused(tmp_path):
    ours = write_shards(tmp_path, write_canonical(tmp_path / "in.json", utterances(7)), 2)
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    theirs = write_shards(other_dir, write_canonical(other_dir / "in.json", utterances(8)), 2)
    with pytest.raises(NbestFormatError, match=r"other/part2.json: shard 2/2 of .*other/in.json.*another input"):
        merge_shards([ours[0], theirs[1]], None)


def test_a_file_that_is_no_shard_is_refused(tmp_path):
    source = write_canonical(tmp_path / "in.json", utterances(3))
    rescore_file(source, tmp_path / "whole.json", lambda: Rescorer(LengthScorer()))
    with pytest.raises(NbestFormatError, match=r"whole.json: not the output of 'rescore --shard K/N'"):
        merge_shards([tmp_path / "whole.json"], None)


def test_an_edited_shard_is_refused(tmp_path):
    parts = write_shards(tmp_path, write_jsonl(tmp_path / "in.jsonl", utterances(6)), 2, suffix=".jsonl")
    lines = parts[1].read_text().splitlines(keepends=True)
    parts[1].write_text(lines[0] + lines[-1])  # one utterance cut out, the record kept
    with pytest.raises(NbestFormatError, match=r"part2.jsonl: holds 1 utterances, its shard record says 3"):
        merge_shards(parts, None)


def test_shards_with_skipped_utterances_merge_in_input_order(tmp_path):
    items = [json.dumps(u) for u in utterances(7)]
    items[1] = items[1][:-3]  # entry 1 (shard 2 of 3) is bad
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join(items) + "\n")
    parts = write_shards(tmp_path, source, 3, suffix=".jsonl", skip_bad=True)
    merge_shards(parts, tmp_path / "merged.jsonl")
    ids = [json.loads(line)["id"] for line in (tmp_path / "merged.jsonl").read_text().splitlines()]
    assert ids == ["u0", "u2", "u3", "u4", "u5", "u6"]


@pytest.mark.parametrize(("name", "layout"), [("out.jsonl", "jsonl"), ("out.json", "json"), ("out.ndjson", "jsonl")])
@pytest.mark.parametrize("writer", [write_canonical, write_jsonl])
def test_the_output_layout_follows_the_output_name_and_reads_back(tmp_path, writer, name, layout):
    source = writer(tmp_path / ("in.json" if writer is write_canonical else "in.jsonl"), utterances(3))
    rescore_file(source, tmp_path / name, lambda: Rescorer(LengthScorer(), Weights()))
    text = (tmp_path / name).read_text()
    assert text.startswith('{"utterances": [') == (layout == "json")
    assert [u["best"] for u in read_nbest(tmp_path / name)] == ["a b"] * 3
