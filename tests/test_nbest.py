"""Tests for pipeline.nbest: every input layout, validation messages, and the atomic writer."""

from __future__ import annotations

import json
import os
import stat

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.nbest import (
    NbestFormatError,
    ReadReport,
    detect_layout,
    iter_utterances,
    read_nbest,
)
from pipeline.nbest_writer import NbestWriter, write_nbest

UTTERANCES = [
    {
        "id": "u1",
        "reference": "in the beginning",
        "hypotheses": [
            {"text": "in the beginning", "score": -10.5},
            {"text": "in a beginning", "score": -11.25},
        ],
    },
    {
        "id": "u2",
        "reference": "历史总是不断重演",
        "hypotheses": [{"text": "力使总事不断虫眼", "score": -21.4}],
    },
]


def _mlm_layout(utterances: list[dict]) -> dict:
    """The mlm-scoring dict layout of canonical utterances."""
    return {
        utt["id"]: {"ref": utt["reference"], **{f"hyp_{i}": hyp for i, hyp in enumerate(utt["hypotheses"], 1)}}
        for utt in utterances
    }


LAYOUT_FILES = {
    "canonical": ("in.json", json.dumps({"utterances": UTTERANCES}, ensure_ascii=False)),
    "canonical-indented": ("in.json", json.dumps({"utterances": UTTERANCES}, indent=2)),
    "jsonl": ("in.jsonl", "\n".join(json.dumps(u, ensure_ascii=False) for u in UTTERANCES) + "\n"),
    "jsonl-named-json": ("in.json", "\n".join(json.dumps(u) for u in UTTERANCES)),
    "ndjson": ("in.ndjson", "\n".join(json.dumps(u) for u in UTTERANCES)),
    "bare-list": ("in.json", json.dumps(UTTERANCES)),
    "mlm-dict": ("in.json", json.dumps(_mlm_layout(UTTERANCES), indent=1)),
}


@pytest.fixture
def write_file(tmp_path):
    """Write text (or bytes) to a file in tmp_path and return its path."""

    def write(name: str, content: str | bytes):
        path = tmp_path / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        return path

    return write


def _canonical_file(write_file, utterances, name="bad.json"):
    return write_file(name, json.dumps({"utterances": utterances}))


def _jsonl_file(write_file, lines, name="bad.jsonl"):
    return write_file(name, "\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")


# --------------------------------------------------------------------------- layouts


@pytest.mark.parametrize("layout", sorted(LAYOUT_FILES))
def test_every_layout_reads_to_same_utterances(write_file, layout):
    name, content = LAYOUT_FILES[layout]
    assert read_nbest(write_file(name, content)) == UTTERANCES


@pytest.mark.parametrize(
    ("layout", "expected"),
    [
        ("canonical", "json"),
        ("canonical-indented", "json"),
        ("jsonl", "jsonl"),
        ("jsonl-named-json", "jsonl"),
        ("ndjson", "jsonl"),
        ("bare-list", "json"),
        ("mlm-dict", "json"),
    ],
)
def test_detect_layout(write_file, layout, expected):
    name, content = LAYOUT_FILES[layout]
    assert detect_layout(write_file(name, content)) == expected


def test_detect_layout_skips_leading_blank_lines(write_file):
    path = write_file("in.json", "\n\n" + json.dumps(UTTERANCES[0]) + "\n")
    assert detect_layout(path) == "jsonl"


def test_detect_layout_missing_file_raises(tmp_path):
    with pytest.raises(NbestFormatError, match="nothere.json: no such file"):
        detect_layout(tmp_path / "nothere.json")


def test_mlm_hypotheses_ordered_by_numeric_suffix(write_file):
    entry = {
        "hyp_10": {"text": "ten", "score": -10},
        "hyp_2": {"text": "two", "score": -2, "am_score": -1.5},
        "ref": "one",
        "hyp_1": {"text": "one", "score": -1},
        "speaker": "s7",
    }
    [utt] = read_nbest(write_file("mlm.json", json.dumps({"utt-a": entry})))
    assert [h["text"] for h in utt["hypotheses"]] == ["one", "two", "ten"]
    assert utt["hypotheses"][1]["am_score"] == -1.5
    assert (utt["id"], utt["reference"], utt["speaker"]) == ("utt-a", "one", "s7")


def test_mlm_entry_without_ref_has_no_reference(write_file):
    [utt] = read_nbest(write_file("mlm.json", json.dumps({"x": {"hyp_1": {"text": "a", "score": 0}}})))
    assert "reference" not in utt


def test_mlm_entry_not_an_object_names_the_id(write_file):
    path = write_file("bad.json", json.dumps({"x": ["hyp"]}))
    with pytest.raises(NbestFormatError, match=r"bad\.json: utterance 'x': expected an object of hyp_N"):
        read_nbest(path)


def test_mlm_repeated_utterance_id_raises(write_file):
    path = write_file("bad.json", '{"x": {"hyp_1": {"text": "a"}}, "x": {"hyp_1": {"text": "b"}}}')
    with pytest.raises(NbestFormatError, match=r"bad\.json: key 'x' appears twice"):
        read_nbest(path)


@pytest.mark.parametrize("name", ["keep.json", "keep.jsonl"])
def test_unknown_fields_kept_on_utterance_and_hypothesis(tmp_path, name):
    utt = {
        "id": "u1",
        "condition": "flite-rms|tempo=1.1",
        "words": [{"w": "a", "start": 0.25}],
        "hypotheses": [{"text": "a", "score": -1.0, "am_score": -3.5, "lm_score": -2.0, "meta": {"k": [1, 2]}}],
    }
    path = tmp_path / name
    write_nbest(path, [utt], layout="jsonl" if name.endswith("jsonl") else "json")
    assert read_nbest(path) == [utt]


def test_other_top_level_keys_of_canonical_file_are_ignored(write_file):
    path = write_file("in.json", json.dumps({"version": 2, "utterances": UTTERANCES}))
    assert read_nbest(path) == UTTERANCES


def test_byte_order_mark_is_accepted(write_file):
    name, content = LAYOUT_FILES["canonical"]
    assert read_nbest(write_file(name, b"\xef\xbb\xbf" + content.encode())) == UTTERANCES


# --------------------------------------------------------------------------- valid edge cases


def test_empty_hypothesis_list_is_valid(write_file):
    path = _canonical_file(write_file, [{"id": "u1", "hypotheses": []}])
    assert read_nbest(path) == [{"id": "u1", "hypotheses": []}]


def test_empty_text_is_valid(write_file):
    path = _canonical_file(write_file, [{"id": "u1", "hypotheses": [{"text": "", "score": -1.0}]}])
    assert read_nbest(path)[0]["hypotheses"][0]["text"] == ""


def test_repeated_hypothesis_texts_are_valid(write_file):
    hyps = [{"text": "a", "score": -1.0}, {"text": "a", "score": -2.0}]
    path = _canonical_file(write_file, [{"id": "u1", "hypotheses": hyps}])
    assert read_nbest(path)[0]["hypotheses"] == hyps


def test_integer_score_is_valid(write_file):
    path = _canonical_file(write_file, [{"id": "u1", "hypotheses": [{"text": "a", "score": -3}]}])
    assert read_nbest(path)[0]["hypotheses"][0]["score"] == -3


@pytest.mark.parametrize("name", ["in.json", "in.jsonl"])
def test_a_missing_score_is_never_filled_in(tmp_path, name):
    """Whether every hypothesis has one is checked where scores are combined (pipeline.fields)."""
    utts = [
        {"id": "u1", "hypotheses": [{"text": "a"}, {"text": "b", "score": -1.0}]},
        {"id": "u2", "hypotheses": [{"text": "c"}]},
    ]
    path = tmp_path / name
    path.write_text("\n".join(json.dumps(u) for u in utts) if name.endswith("l") else json.dumps(utts))
    result = read_nbest(path)
    assert [h.get("score") for u in result for h in u["hypotheses"]] == [None, -1.0, None]


def test_jsonl_blank_lines_are_ignored(write_file):
    path = write_file("in.jsonl", "\n\n" + json.dumps(UTTERANCES[0]) + "\n   \n\n" + json.dumps(UTTERANCES[1]) + "\n\n")
    assert read_nbest(path) == UTTERANCES


def test_jsonl_with_crlf_line_ends(write_file):
    path = write_file("in.jsonl", "".join(json.dumps(u) + "\r\n" for u in UTTERANCES))
    assert read_nbest(path) == UTTERANCES


def test_jsonl_is_streamed_before_a_later_bad_line(write_file):
    path = _jsonl_file(write_file, [UTTERANCES[0], UTTERANCES[1], "{not json"])
    utterances = iter_utterances(path)
    assert next(utterances) == UTTERANCES[0]
    assert next(utterances) == UTTERANCES[1]
    with pytest.raises(NbestFormatError, match="line 3"):
        next(utterances)


# --------------------------------------------------------------------------- invalid utterances


def _one_hyp(hyp) -> list[dict]:
    return [{"id": "u3", "hypotheses": [{"text": "ok", "score": 0.0}, hyp]}]


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_score_is_rejected(write_file, token):
    path = write_file("bad.json", '{"utterances": [{"id": "u3", "hypotheses": [{"text": "a", "score": %s}]}]}' % token)
    with pytest.raises(
        NbestFormatError,
        match=rf"bad\.json: utterance 'u3', hypothesis 1: field 'score' must be a finite number, got {token}",
    ):
        read_nbest(path)


def test_non_finite_number_in_other_field_is_rejected(write_file):
    path = write_file("bad.json", '[{"id": "u3", "hypotheses": [{"text": "a", "score": 0, "am_score": NaN}]}]')
    with pytest.raises(NbestFormatError, match=r"hypothesis 1: field 'am_score' must be a finite number, got NaN"):
        read_nbest(path)


@pytest.mark.parametrize(("score", "got"), [("-1.0", "string"), (True, "bool"), (None, "null"), ([1.0], "list")])
def test_score_must_be_a_number(write_file, score, got):
    path = _canonical_file(write_file, _one_hyp({"text": "a", "score": score}))
    with pytest.raises(NbestFormatError, match=rf"hypothesis 2: field 'score' must be a number, got {got}"):
        read_nbest(path)


@pytest.mark.parametrize(("text", "got"), [(3, "int"), (None, "null"), (["a"], "list"), (1.5, "float")])
def test_text_must_be_a_string(write_file, text, got):
    path = _canonical_file(write_file, _one_hyp({"text": text, "score": -1.0}))
    with pytest.raises(
        NbestFormatError,
        match=rf"^.*bad\.json: utterance 'u3', hypothesis 2: field 'text' must be a string, got {got}$",
    ):
        read_nbest(path)


def test_text_is_required(write_file):
    path = _canonical_file(write_file, _one_hyp({"score": -1.0}))
    with pytest.raises(NbestFormatError, match=r"utterance 'u3', hypothesis 2: field 'text' is missing"):
        read_nbest(path)


def test_hypothesis_must_be_an_object(write_file):
    path = _canonical_file(write_file, _one_hyp("just text"))
    with pytest.raises(NbestFormatError, match=r"hypothesis 2: a hypothesis must be an object, got string"):
        read_nbest(path)


def test_utterance_without_hypotheses_is_rejected(write_file):
    path = _canonical_file(write_file, [{"id": "u3", "reference": "a"}])
    with pytest.raises(NbestFormatError, match=r"bad\.json: utterance 'u3': field 'hypotheses' is missing"):
        read_nbest(path)


def test_hypotheses_must_be_a_list(write_file):
    path = _canonical_file(write_file, [{"id": "u3", "hypotheses": {"text": "a"}}])
    with pytest.raises(NbestFormatError, match=r"utterance 'u3': field 'hypotheses' must be a list, got object"):
        read_nbest(path)


def test_reference_must_be_a_string(write_file):
    path = _canonical_file(write_file, [{"id": "u3", "reference": None, "hypotheses": []}])
    with pytest.raises(NbestFormatError, match=r"utterance 'u3': field 'reference' must be a string, got null"):
        read_nbest(path)


@pytest.mark.parametrize(
    ("utterance", "message"),
    [
        ({"hypotheses": []}, r"utterance #2: field 'id' is missing"),
        ({"id": 7, "hypotheses": []}, r"utterance #2: field 'id' must be a string, got int"),
        ({"id": "", "hypotheses": []}, r"utterance #2: field 'id' must be a non-empty string"),
        ("u2", r"utterance #2: an utterance must be an object, got string"),
    ],
)
def test_utterance_needs_an_id_and_an_object(write_file, utterance, message):
    path = _canonical_file(write_file, [UTTERANCES[0], utterance])
    with pytest.raises(NbestFormatError, match=rf"bad\.json: {message}"):
        read_nbest(path)


def test_duplicate_ids_in_json_name_both_positions(write_file):
    path = _canonical_file(write_file, [UTTERANCES[0], UTTERANCES[1], UTTERANCES[0]])
    with pytest.raises(NbestFormatError, match=r"utterance 'u1': duplicate id: utterance #3 repeats utterance #1"):
        read_nbest(path)


def test_duplicate_ids_in_jsonl_name_both_lines(write_file):
    path = _jsonl_file(write_file, [UTTERANCES[0], UTTERANCES[1], UTTERANCES[0]])
    message = r"bad\.jsonl: line 3, utterance 'u1': duplicate id: line 3 repeats line 1"
    with pytest.raises(NbestFormatError, match=message):
        read_nbest(path)


def test_jsonl_invalid_utterance_names_line_and_id(write_file):
    path = _jsonl_file(write_file, [UTTERANCES[0], {"id": "u9", "hypotheses": [{"text": 5}]}])
    with pytest.raises(
        NbestFormatError, match=r"bad\.jsonl: line 2, utterance 'u9', hypothesis 1: field 'text' must be a string"
    ):
        read_nbest(path)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"id": "u2", "hypotheses": [', r"line 2: invalid JSON at column 29: Expecting value"),
        ("[1, 2]", r"line 2: an utterance must be an object, got list"),
        ('{"id": "u2", "id": "u3", "hypotheses": []}', r"line 2: key 'id' appears twice"),
    ],
)
def test_jsonl_bad_line_names_the_line_number(write_file, line, message):
    path = _jsonl_file(write_file, [UTTERANCES[0], line, UTTERANCES[1]])
    with pytest.raises(NbestFormatError, match=rf"bad\.jsonl: {message}"):
        read_nbest(path)


# --------------------------------------------------------------------------- skip_bad


def test_jsonl_skip_bad_skips_bad_lines_and_reports_them(write_file):
    bad_hyp = {"id": "u8", "hypotheses": [{"text": "a", "score": "high"}]}
    path = _jsonl_file(write_file, [UTTERANCES[0], "{truncated", bad_hyp, UTTERANCES[1]])
    report = ReadReport()
    assert read_nbest(path, skip_bad=True, report=report) == UTTERANCES
    assert len(report.skipped) == 2
    assert "bad.jsonl: line 2: invalid JSON" in report.skipped[0]
    assert "bad.jsonl: line 3, utterance 'u8', hypothesis 1: field 'score'" in report.skipped[1]


def test_jsonl_skip_bad_skips_invalid_utf8_line(write_file):
    good = [json.dumps(utt).encode() for utt in UTTERANCES]
    lines = [good[0], b'{"id": "\xff", "hypotheses": []}', good[1]]
    report = ReadReport()
    path = write_file("bad.jsonl", b"\n".join(lines))
    assert read_nbest(path, skip_bad=True, report=report) == UTTERANCES
    assert report.skipped == [f"{path}: line 2: invalid UTF-8 at byte offset 8 of the line"]


def test_json_skip_bad_skips_invalid_utterance(write_file):
    path = _canonical_file(write_file, [UTTERANCES[0], {"id": "u5"}, UTTERANCES[1], UTTERANCES[0]])
    report = ReadReport()
    assert read_nbest(path, skip_bad=True, report=report) == UTTERANCES
    assert [m.split(": ", 2)[1] for m in report.skipped] == ["utterance 'u5'", "utterance 'u1'"]


def test_skip_bad_records_the_positions_of_skipped_entries(write_file):
    path = _jsonl_file(write_file, [{"id": "a", "hypotheses": [{"text": "x"}]}, {"id": "b", "hypotheses": [{}]},
                                    {"id": "c", "hypotheses": []}])
    report = ReadReport()
    assert [u["id"] for u in read_nbest(path, skip_bad=True, report=report)] == ["a", "c"]
    assert (report.skipped_positions, report.entries) == ([1], 3)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"utterances": [{"id": "u1", "hypotheses": [', r"invalid JSON at line 1, column 45: Expecting value"),
        ("42", r"top level must be an object or a list of utterances, got int"),
        ('"text"', r"top level must be an object or a list of utterances, got string"),
        ('{"utterances": {"id": "u1"}}', r"field 'utterances' must be a list, got object"),
        ("", r"file is empty"),
    ],
)
@pytest.mark.parametrize("skip_bad", [False, True])
def test_top_level_errors_always_raise(write_file, content, message, skip_bad):
    path = write_file("bad.json", content)
    with pytest.raises(NbestFormatError, match=rf"bad\.json: {message}"):
        read_nbest(path, skip_bad=skip_bad)


# --------------------------------------------------------------------------- unreadable files


def test_truncated_json_reports_line_and_column(write_file):
    name, content = LAYOUT_FILES["canonical-indented"]
    path = write_file("bad.json", content[: content.index('"in a beginning"') + 5])
    line = content[: content.index('"in a beginning"')].count("\n") + 1
    message = rf"^.*bad\.json: invalid JSON at line {line}, column \d+: Unterminated string"
    with pytest.raises(NbestFormatError, match=message):
        read_nbest(path)


def test_invalid_utf8_in_json_names_the_line(write_file):
    path = write_file("bad.json", b'{"utterances": [\n{"id": "u1",\n "hypotheses": [{"text": "\xc3\x28"}]}]}')
    with pytest.raises(NbestFormatError, match=r"bad\.json: invalid UTF-8 at line 3 \(byte offset 56\)"):
        read_nbest(path)


def test_invalid_utf8_offset_counts_the_byte_order_mark(write_file):
    path = write_file("bad.json", b'\xef\xbb\xbf["\xff"]')
    with pytest.raises(NbestFormatError, match=r"invalid UTF-8 at line 1 \(byte offset 5\)"):
        read_nbest(path)


def test_invalid_utf8_in_jsonl_names_the_line(write_file):
    path = write_file("bad.jsonl", json.dumps(UTTERANCES[0]).encode() + b'\n{"id": "\xe4\xb8"}\n')
    with pytest.raises(NbestFormatError, match=r"bad\.jsonl: line 2: invalid UTF-8"):
        read_nbest(path)


def test_missing_file_raises_nbest_format_error(tmp_path):
    with pytest.raises(NbestFormatError, match=r"nothere\.jsonl: no such file"):
        read_nbest(tmp_path / "nothere.jsonl")


def test_directory_raises_nbest_format_error(tmp_path):
    with pytest.raises(NbestFormatError, match="is a directory"):
        read_nbest(tmp_path)


def test_error_message_is_one_line(write_file):
    path = _canonical_file(write_file, _one_hyp({"text": 1}))
    with pytest.raises(NbestFormatError) as info:
        read_nbest(path)
    assert "\n" not in str(info.value)
    assert isinstance(info.value, ValueError)


# --------------------------------------------------------------------------- writing


def test_canonical_output_has_one_utterance_per_line(tmp_path):
    path = tmp_path / "out.json"
    write_nbest(path, UTTERANCES)
    lines = path.read_text(encoding="utf-8").split("\n")
    assert lines[0] == '{"utterances": ['
    assert [json.loads(line.rstrip(",")) for line in lines[1:3]] == UTTERANCES
    assert lines[3:] == ["]}", ""]
    assert "历史总是不断重演" in lines[2]  # ensure_ascii=False


def test_jsonl_output_has_one_object_per_line(tmp_path):
    path = tmp_path / "out.jsonl"
    write_nbest(path, UTTERANCES, layout="jsonl")
    assert [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] == UTTERANCES


@pytest.mark.parametrize(("name", "layout"), [("out.json", "json"), ("out.jsonl", "jsonl"), ("out.txt", "json")])
def test_write_then_read_round_trips(tmp_path, name, layout):
    path = tmp_path / name
    write_nbest(path, UTTERANCES, layout=layout)
    assert read_nbest(path) == UTTERANCES


def test_zero_utterance_json_output_is_valid_json(tmp_path):
    path = tmp_path / "out.json"
    write_nbest(path, [])
    assert json.loads(path.read_text()) == {"utterances": []}
    assert read_nbest(path) == []


def test_zero_utterance_jsonl_output_reads_back_empty(tmp_path):
    path = tmp_path / "out.jsonl"
    write_nbest(path, [], layout="jsonl")
    assert path.read_bytes() == b""
    assert read_nbest(path) == []


@pytest.mark.parametrize("layout", ["json", "jsonl"])
def test_exception_mid_write_leaves_existing_output_untouched(tmp_path, layout):
    path = tmp_path / "out.json"
    path.write_bytes(b"previous output\n")
    with pytest.raises(RuntimeError, match="boom"):
        with NbestWriter(path, layout) as writer:
            writer.write(UTTERANCES[0])
            raise RuntimeError("boom")
    assert path.read_bytes() == b"previous output\n"
    assert os.listdir(tmp_path) == ["out.json"]


def test_exception_mid_write_creates_no_file(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with NbestWriter(tmp_path / "out.json", "json") as writer:
            writer.write(UTTERANCES[0])
            raise KeyboardInterrupt
    assert os.listdir(tmp_path) == []


def test_unwritable_utterance_raises_and_leaves_no_file(tmp_path):
    bad = {"id": "u1", "hypotheses": [{"text": "a", "score": float("-inf")}]}
    with pytest.raises(NbestFormatError, match=r"out\.json: cannot write utterance 'u1': Out of range float"):
        write_nbest(tmp_path / "out.json", [UTTERANCES[0], bad])
    assert os.listdir(tmp_path) == []


def test_new_output_file_gets_umask_permissions_not_0600(tmp_path):
    path = tmp_path / "out.json"
    write_nbest(path, UTTERANCES)
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask


def test_replaced_output_keeps_its_permissions(tmp_path):
    path = tmp_path / "out.json"
    path.write_text("old")
    path.chmod(0o640)
    write_nbest(path, UTTERANCES)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_output_can_replace_its_own_streamed_input(tmp_path):
    path = tmp_path / "same.jsonl"
    write_nbest(path, UTTERANCES, layout="jsonl")
    write_nbest(path, ({**u, "best": u["hypotheses"][0]["text"]} for u in iter_utterances(path)), layout="jsonl")
    assert [u["best"] for u in read_nbest(path)] == ["in the beginning", "力使总事不断虫眼"]


@pytest.mark.parametrize("layout", ["json", "jsonl"])
def test_writer_without_path_streams_to_stdout(capsys, layout):
    write_nbest(None, UTTERANCES, layout=layout)
    out = capsys.readouterr().out
    if layout == "json":
        assert json.loads(out) == {"utterances": UTTERANCES}
    else:
        assert [json.loads(line) for line in out.splitlines()] == UTTERANCES


def test_writer_rejects_unknown_layout(tmp_path):
    with pytest.raises(ValueError, match="layout must be one of"):
        NbestWriter(tmp_path / "out.csv", "csv")


def test_write_outside_with_block_raises(tmp_path):
    with pytest.raises(RuntimeError, match="outside its 'with' block"):
        NbestWriter(tmp_path / "out.json", "json").write(UTTERANCES[0])


# --------------------------------------------------------------------------- property test

_finite_scores = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False), st.integers(min_value=-(10**12), max_value=10**12)
)
_hypotheses = st.lists(
    st.fixed_dictionaries(
        {"text": st.text(max_size=12), "score": _finite_scores}, optional={"am_score": _finite_scores}
    ),
    max_size=4,
)
_utterance_bodies = st.fixed_dictionaries({"hypotheses": _hypotheses}, optional={"reference": st.text(max_size=12)})
_nbest_lists = st.dictionaries(st.text(min_size=1, max_size=8), _utterance_bodies, max_size=4).map(
    lambda by_id: [{"id": utt_id, **body} for utt_id, body in by_id.items()]
)


@settings(max_examples=60, deadline=None)
@given(utterances=_nbest_lists, layout=st.sampled_from(["json", "jsonl"]))
def test_random_nbest_lists_round_trip_unchanged(tmp_path_factory, utterances, layout):
    path = tmp_path_factory.mktemp("roundtrip") / f"out.{layout}"
    write_nbest(path, utterances, layout=layout)
    assert read_nbest(path) == utterances
