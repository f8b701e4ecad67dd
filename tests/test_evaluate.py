"""Tests for pipeline.evaluate and the evaluate command: first pass, rescored and oracle error counts."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.evaluate import ErrorTally, evaluate_utterances, first_pass_index, rescored_text
from pipeline.metrics import EditCounts


pytestmark = pytest.mark.usefixtures("restore_logging")


# u1: first pass "a x c d" (1 substitution), rescored "a b c d" (0), oracle 0.
# u2: first pass is the higher score, listed second: "e f g h" (1 insertion); rescored "e g" (1 deletion);
#     oracle: both have 1 error, the first listed ("e g") wins the tie.
ENGLISH_FILE = [
    {
        "id": "u1",
        "reference": "a b c d",
        "best": "a b c d",
        "hypotheses": [{"text": "a x c d", "score": -1.0}, {"text": "a b c d", "score": -2.0}],
    },
    {
        "id": "u2",
        "reference": "e f g",
        "best": "e g",
        "hypotheses": [{"text": "e g", "score": -1.0}, {"text": "e f g h", "score": 0.0}],
    },
]


def counts(report_part: EditCounts) -> tuple[int, int, int, int]:
    return report_part.substitutions, report_part.insertions, report_part.deletions, report_part.ref_len


def test_first_pass_rescored_and_oracle_by_hand():
    report = evaluate_utterances(ENGLISH_FILE)
    assert report.unit == "word" and report.label == "WER"
    assert counts(report.first_pass) == (1, 1, 0, 7)
    assert counts(report.rescored) == (0, 0, 1, 7)
    assert counts(report.oracle) == (0, 0, 1, 7)
    assert report.first_pass.rate == 2 / 7
    assert (report.utterances, report.hypotheses, report.without_reference) == (2, 4, 0)


def test_first_pass_is_the_highest_score_earliest_on_ties():
    assert first_pass_index([{"text": "a", "score": -2.0}, {"text": "b", "score": -1.0}]) == 1
    assert first_pass_index([{"text": "a", "score": -1.0}, {"text": "b", "score": -1.0}]) == 0
    assert first_pass_index([]) == -1


def test_rescored_choice_from_best_or_rank():
    assert rescored_text({"best": "x", "hypotheses": [{"text": "y", "rank": 1}]}) == "x"
    assert rescored_text({"hypotheses": [{"text": "y", "rank": 2}, {"text": "z", "rank": 1}]}) == "z"
    assert rescored_text({"hypotheses": [{"text": "y"}]}) is None


def test_not_rescored_file_has_no_rescored_figure():
    plain = [{k: v for k, v in u.items() if k != "best"} for u in ENGLISH_FILE]
    report = evaluate_utterances(plain)
    assert report.rescored is None
    assert report.as_dict()["rescored"] is None
    assert counts(report.first_pass) == (1, 1, 0, 7)


def test_empty_list_deletes_the_whole_reference():
    report = evaluate_utterances([{"id": "e", "reference": "a b c", "best": "", "hypotheses": []}])
    assert counts(report.first_pass) == counts(report.oracle) == counts(report.rescored) == (0, 0, 3, 3)


def test_utterances_without_reference_are_counted_apart():
    tally = ErrorTally("word")
    tally.add({"id": "n", "hypotheses": [{"text": "a", "score": 0.0}]})
    tally.add(ENGLISH_FILE[0])
    report = tally.result()
    assert (report.utterances, report.without_reference, report.hypotheses) == (1, 1, 3)


def test_unit_auto_chooses_characters_for_chinese():
    utterances = [
        {
            "id": "c1",
            "reference": "历史总是不断重演",
            "best": "历史总是不断重演",
            "hypotheses": [{"text": "力使总是不断重演", "score": 0.0}, {"text": "历史总是不断重演", "score": -1.0}],
        }
    ]
    report = evaluate_utterances(utterances)
    assert (report.unit, report.label) == ("char", "CER")
    assert counts(report.first_pass) == (2, 0, 0, 8)
    assert report.rescored.errors == 0
    forced = evaluate_utterances(utterances, "word")
    assert counts(forced.first_pass) == (1, 0, 0, 1)


def write(tmp_path, utterances, name="in.json"):
    path = tmp_path / name
    path.write_text(json.dumps({"utterances": utterances}, ensure_ascii=False), encoding="utf-8")
    return path


def test_evaluate_command_json(tmp_path):
    result = CliRunner().invoke(app, ["evaluate", str(write(tmp_path, ENGLISH_FILE)), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert set(data) == {"unit", "metric", "utterances", "hypotheses", "without_reference", "first_pass", "rescored", "oracle"}
    assert (data["unit"], data["metric"], data["utterances"], data["hypotheses"]) == ("word", "WER", 2, 4)
    assert data["first_pass"] == {
        "rate": 2 / 7, "errors": 2, "substitutions": 1, "insertions": 1, "deletions": 0, "reference_units": 7,
    }
    assert data["rescored"]["deletions"] == 1 and data["rescored"]["errors"] == 1
    assert data["oracle"]["errors"] == 1


def test_evaluate_command_table(tmp_path):
    result = CliRunner().invoke(app, ["evaluate", str(write(tmp_path, ENGLISH_FILE))])
    assert result.exit_code == 0, result.output
    for label in ("WER", "first pass", "rescored", "oracle", "28.57%", "14.29%"):
        assert label in result.stdout
    assert "2 utterances, 4 hypotheses" in result.stdout


def test_evaluate_command_chinese_is_cer(tmp_path):
    utterances = [{"id": "c", "reference": "历史告诉我们", "hypotheses": [{"text": "历史告诉你们", "score": 0.0}]}]
    result = CliRunner().invoke(app, ["evaluate", str(write(tmp_path, utterances)), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert (data["unit"], data["metric"]) == ("char", "CER")
    assert data["first_pass"]["rate"] == 1 / 6


def test_evaluate_command_without_references(tmp_path):
    path = write(tmp_path, [{"id": "a", "hypotheses": [{"text": "a", "score": 0.0}]}])
    result = CliRunner().invoke(app, ["evaluate", str(path)])
    assert result.exit_code == 1  # a problem of the input, not of the options
    assert isinstance(result.exception, SystemExit)
    assert result.stderr.strip() == f"error: {path}: no utterance has a 'reference'; nothing to evaluate"
    assert "Traceback" not in result.output


def test_evaluate_command_bad_file(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{"utterances": [{"id": "a", "hypotheses": [')
    result = CliRunner().invoke(app, ["evaluate", str(path)])
    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: {path}: invalid JSON at line 1, column")
    assert "Traceback" not in result.output


def test_alignment_has_the_fewest_edits_and_marks_each_column():
    from pipeline.alignment import align, errors_of, render
    from pipeline.metrics import edit_counts

    ref, hyp = "the light was good".split(), "the lite was very good".split()
    columns = align(ref, hyp)
    assert columns == [("the", "the", "C"), ("light", "lite", "S"), ("was", "was", "C"), (None, "very", "I"),
                       ("good", "good", "C")]
    assert errors_of(columns) == edit_counts(ref, hyp).errors
    assert render(columns) == ["REF: the LIGHT was ***  good", "HYP: the LITE  was very good", "OP:      S         I"]
    assert align(["a", "b"], []) == [("a", None, "D"), ("b", None, "D")]


def _full_table_alignment(ref, hyp):
    """The alignment by the whole table, traced back from the end."""
    from pipeline.alignment import trace_back

    cost = [[i + j if not i or not j else 0 for j in range(len(hyp) + 1)] for i in range(len(ref) + 1)]
    for i in range(1, len(ref) + 1):
        for j in range(1, len(hyp) + 1):
            cost[i][j] = min(cost[i - 1][j - 1] + (ref[i - 1] != hyp[j - 1]), cost[i - 1][j] + 1, cost[i][j - 1] + 1)
    return trace_back(cost, ref, hyp)


@settings(max_examples=300, deadline=None)
@given(ref=st.lists(st.sampled_from("abc"), max_size=9), hyp=st.lists(st.sampled_from("abc"), max_size=9))
def test_alignment_with_the_common_suffix_cut_equals_the_whole_table(ref, hyp):
    """Cutting the common suffix before filling the table (for speed) changes no column, ties included."""
    from pipeline.alignment import align

    assert align(ref, hyp) == _full_table_alignment(ref, hyp)


def test_evaluate_details_say_what_rescoring_fixed_and_broke(tmp_path):
    utterances = [
        {"id": "fixed", "reference": "a b c", "best": "a b c",
         "hypotheses": [{"text": "a x c", "score": -1.0}, {"text": "a b c", "score": -2.0}]},
        {"id": "broken", "reference": "a b c", "best": "a y z",
         "hypotheses": [{"text": "a b c", "score": -1.0}, {"text": "a y z", "score": -2.0}]},
        {"id": "same", "reference": "a b c", "best": "a b c", "hypotheses": [{"text": "a b c", "score": -1.0}]},
    ]
    path = write(tmp_path, utterances)
    result = CliRunner().invoke(app, ["evaluate", str(path), "--details", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["summary"] == {"utterances": 3, "changed": 2, "fixed": 1, "broken": 1, "changed_same_errors": 0,
                                 "errors_removed": -1}
    assert [d["status"] for d in report["details"]] == ["fixed", "broken", "unchanged"]
    text = CliRunner().invoke(app, ["evaluate", str(path), "--details"]).stdout
    assert "fixed: 1 -> 0 errors" in text and "broken: 0 -> 2 errors" in text and "same" not in text.split("┏")[0]
    assert "rescoring changed 2 of 3 utterances: 1 fixed (fewer errors), 1 broken (more errors)" in text
