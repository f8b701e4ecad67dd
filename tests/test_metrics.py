"""Tests for pipeline.metrics: edit counts, units, error rates and oracle counts."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.metrics import EditCounts, detect_unit, edit_counts, error_counts, oracle_counts, split_units


@pytest.mark.parametrize(
    ("ref", "hyp", "expected"),
    [
        ("a b c d", "a x c d e", (1, 1, 0)),
        ("a b c d", "a b c d", (0, 0, 0)),
        ("a b c", "a c", (0, 0, 1)),
        ("a b c", "x a b c", (0, 1, 0)),
        ("a b c", "c b a", (2, 0, 0)),
        ("a b", "b c", (2, 0, 0)),  # tie: prefer substitutions over a deletion plus an insertion
        ("a b", "", (0, 0, 2)),
        ("", "a b", (0, 2, 0)),
        ("", "", (0, 0, 0)),
        ("the cat sat on the mat", "the cat sat on mat", (0, 0, 1)),
        ("in the beginning god created", "and the beginning got created the", (2, 1, 0)),
    ],
)
def test_edit_counts_of_known_pairs(ref, hyp, expected):
    counts = edit_counts(ref.split(), hyp.split())
    assert (counts.substitutions, counts.insertions, counts.deletions) == expected
    assert counts.ref_len == len(ref.split())


def test_edit_counts_takes_any_sequence_of_hashables():
    assert edit_counts((1, 2, 3), (1, 3)) == EditCounts(deletions=1, ref_len=3)
    assert edit_counts("kitten", "sitting") == EditCounts(substitutions=2, insertions=1, ref_len=6)


def test_errors_is_the_sum_of_edits():
    assert EditCounts(substitutions=1, insertions=2, deletions=3, ref_len=10).errors == 6


@pytest.mark.parametrize(
    ("counts", "rate"),
    [
        (EditCounts(substitutions=1, insertions=1, ref_len=4), 0.5),
        (EditCounts(ref_len=4), 0.0),
        (EditCounts(insertions=3, ref_len=2), 1.5),
        (EditCounts(), 0.0),
        (EditCounts(insertions=1), math.inf),
    ],
)
def test_rate(counts, rate):
    assert counts.rate == rate


def test_counts_add_up():
    total = EditCounts(1, 0, 2, 5) + EditCounts(0, 3, 1, 4)
    assert total == EditCounts(substitutions=1, insertions=3, deletions=3, ref_len=9)


def test_builtin_sum_adds_counts():
    assert sum([EditCounts(1, 0, 0, 2), EditCounts(0, 1, 0, 3)]) == EditCounts(1, 1, 0, 5)


def test_corpus_rate_is_total_errors_over_total_reference_length():
    counts = error_counts("a b c d", "a b c x", "word") + error_counts("a", "", "word")
    assert counts.rate == pytest.approx(2 / 5)


@pytest.mark.parametrize(
    ("text", "unit", "units"),
    [
        ("in the  beginning\t god ", "word", ["in", "the", "beginning", "god"]),
        ("历史总是不断重演", "char", list("历史总是不断重演")),
        ("历史 总是\n不断", "char", list("历史总是不断")),
        ("", "word", []),
        ("", "char", []),
    ],
)
def test_split_units(text, unit, units):
    assert split_units(text, unit) == units


def test_split_units_rejects_unknown_unit():
    with pytest.raises(ValueError, match="unit must be one of"):
        split_units("a b", "phone")


def test_chinese_cer_counts_characters():
    counts = error_counts("历史总是不断重演", "力使总事不断虫眼", "char")
    assert counts == EditCounts(substitutions=5, ref_len=8)
    assert counts.rate == pytest.approx(5 / 8)


def test_chinese_cer_ignores_spaces_and_counts_length_changes():
    assert error_counts("他的 工作", "他工作很", "char") == EditCounts(insertions=1, deletions=1, ref_len=4)


@pytest.mark.parametrize(
    ("texts", "unit"),
    [
        (["in the beginning", "god created"], "word"),
        (["历史总是不断重演", "他的工作很有意义"], "char"),
        (["他在研究 AI 的起源"], "char"),  # 7 of 9 non-space characters are ideographs
        (["我 ok", "hello world"], "word"),
        (["ひらがなとカタカナ"], "char"),
        ([], "word"),
        (["", "  "], "word"),
    ],
)
def test_detect_unit(texts, unit):
    assert detect_unit(texts) == unit


def test_detect_unit_accepts_a_generator():
    assert detect_unit(text for text in ["反对派部队", "改编"]) == "char"


def test_oracle_picks_the_hypothesis_with_fewest_errors():
    counts = oracle_counts("a b c", ["a x c", "a b c d", "a b c", "x"], "word")
    assert counts == EditCounts(ref_len=3)


def test_oracle_prefers_the_first_of_equally_good_hypotheses():
    counts = oracle_counts("a b c", ["a b", "a b c d"], "word")
    assert counts == EditCounts(deletions=1, ref_len=3)


def test_oracle_of_empty_list_deletes_every_reference_unit():
    assert oracle_counts("历史总是", [], "char") == EditCounts(deletions=4, ref_len=4)


def _levenshtein(a, b) -> int:
    """Plain textbook edit distance, to check edit_counts against."""
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        previous, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (x != y))
    return row[-1]


_unit_lists = st.lists(st.sampled_from("abc"), max_size=8)


@settings(max_examples=200, deadline=None)
@given(ref=_unit_lists, hyp=_unit_lists)
def test_edit_counts_are_a_minimum_alignment(ref, hyp):
    counts = edit_counts(ref, hyp)
    assert counts.errors == _levenshtein(ref, hyp)
    assert counts.ref_len - counts.deletions + counts.insertions == len(hyp)
    assert min(counts.substitutions, counts.insertions, counts.deletions) >= 0


_mixed_texts = st.text(alphabet="ab 历史", max_size=10)


@settings(max_examples=100, deadline=None)
@given(ref=_mixed_texts, hyps=st.lists(_mixed_texts, max_size=4))
def test_oracle_is_no_worse_than_any_hypothesis(ref, hyps):
    best = oracle_counts(ref, hyps, "char")
    assert all(best.errors <= error_counts(ref, hyp, "char").errors for hyp in hyps)


EDGES = st.sampled_from(["中", "か", "ア", "𠀀", "豈", "\u4dbf", "\u9fff", "\u3000", "ー", "〇", "a", "é", " ", "\t"])


@settings(max_examples=300)
@given(st.lists(st.text(alphabet=EDGES | st.characters(codec="utf-8"))))
def test_cjk_fraction_counts_each_character_by_its_code_point_range(lines):
    """The regular expressions (fast enough for every list) agree with the ranges checked one character at a time."""
    from lm.tokenizer import CHARACTER_SCRIPT_RANGES, cjk_fraction

    characters = [c for line in lines for c in line if not c.isspace()]
    cjk = sum(any(low <= ord(c) <= high for low, high in CHARACTER_SCRIPT_RANGES) for c in characters)
    assert cjk_fraction(lines) == (cjk / len(characters) if characters else 0.0)
