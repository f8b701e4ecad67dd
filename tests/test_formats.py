"""Toolkit layouts in (Kaldi, ESPnet2, NeMo, separate references) and transcripts out (Kaldi text, trn).

The fixtures are written by hand in each toolkit's real format, odd cases included: hyphenated ids,
``tensor(...)`` scores with a device suffix, utterances missing from higher ranks, empty texts.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from layouts import write_espnet, write_kaldi, write_kaldi_text, write_nemo
from pipeline.cli import app
from pipeline.formats.kaldi import field_name, read_kaldi
from pipeline.formats.espnet import read_espnet
from pipeline.formats.nemo import read_nemo_beams
from pipeline.formats.read import canonical_input, detect_format
from pipeline.formats.references import read_manifest, read_references
from pipeline.nbest import NbestFormatError, read_nbest
from test_cli import assert_user_error, good_utterances

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("restore_logging")


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# --------------------------------------------------------------------------- Kaldi


@pytest.fixture
def kaldi_dir(tmp_path) -> Path:
    """As nbest-to-linear + int2sym.pl leave it (rnnlmrescore.sh's archives.N), with hyphenated utterance ids."""
    d = tmp_path / "archives.1"
    write(d / "words_text", "spk-1-utt-01-1 the light was good\nspk-1-utt-01-2 the light was god\n"
                            "spk-1-utt-01-3 the lite was good\nspk-2-utt-07-1 and god said\nspk-2-utt-07-2\n")
    write(d / "words", "spk-1-utt-01-1 11 12 13 14\nspk-1-utt-01-2 11 12 13 15\nspk-1-utt-01-3 11 16 13 14\n"
                       "spk-2-utt-07-1 17\nspk-2-utt-07-2\n")  # integer ids: not a cost file
    write(d / "ali", "spk-1-utt-01-1 4 4 5 6\nspk-1-utt-01-2 4 4 5\nspk-1-utt-01-3 4 5\nspk-2-utt-07-1 9\nspk-2-utt-07-2 9\n")
    write(d / "acwt", "spk-1-utt-01-1 1200.5\nspk-1-utt-01-2 1199.25\nspk-1-utt-01-3 1210\nspk-2-utt-07-1 830.75\nspk-2-utt-07-2 845\n")
    write(d / "lmwt.nolm", "spk-1-utt-01-1 3.5\nspk-1-utt-01-2 3.25\nspk-1-utt-01-3 4\nspk-2-utt-07-1 1.5\nspk-2-utt-07-2 0.5\n")
    write(d / "lmwt.withlm", "spk-1-utt-01-1 23.5\nspk-1-utt-01-2 29.25\nspk-1-utt-01-3 30\nspk-2-utt-07-1 11.5\nspk-2-utt-07-2 4.5\n")
    return d


def test_kaldi_costs_become_negated_score_fields_and_ranks_split_at_the_last_hyphen(kaldi_dir):
    utterances = read_kaldi(kaldi_dir)
    assert [u["id"] for u in utterances] == ["spk-1-utt-01", "spk-2-utt-07"]
    first = utterances[0]["hypotheses"]
    assert [h["text"] for h in first] == ["the light was good", "the light was god", "the lite was good"]
    assert first[0] == {"text": "the light was good", "ac_score": -1200.5, "lm_nolm_score": -3.5, "lm_withlm_score": -23.5}
    assert utterances[1]["hypotheses"][1]["text"] == ""  # a key with no words: the empty hypothesis


@pytest.mark.parametrize(("name", "field"), [("acwt", "ac_score"), ("lmwt.nolm", "lm_nolm_score"),
                                             ("lmwt.withlm", "lm_withlm_score"), ("lmwt.lmonly", "lm_lmonly_score"),
                                             ("ac_cost", "ac_score"), ("lm_cost.trafo", "lm_trafo_score")])
def test_kaldi_field_names(name, field):
    assert field_name(name) == field


def test_kaldi_ranks_are_ordered_by_number_not_by_line(tmp_path):
    d = tmp_path / "nbest"
    write(d / "text", "a-b-10 ten\na-b-2 two\na-b-1 one\n")
    write(d / "acwt", "a-b-1 1\na-b-2 2\na-b-10 10\n")
    assert [h["text"] for h in read_kaldi(d)[0]["hypotheses"]] == ["one", "two", "ten"]


@pytest.mark.parametrize(("change", "message"), [
    (lambda d: write(d / "acwt", "spk-1-utt-01-1 1200.5\n"), r"acwt: no cost for 'spk-1-utt-01-2'"),
    (lambda d: write(d / "words_text", "spk-1-utt-one no rank\n"), r"words_text: key 'spk-1-utt-one' is not UTTID-N"),
    (lambda d: (d / "words_text").unlink(), r"no words file \(words_text or text\)"),
])
def test_kaldi_problems_are_named(kaldi_dir, change, message):
    change(kaldi_dir)
    with pytest.raises(NbestFormatError, match=message):
        read_kaldi(kaldi_dir)


# --------------------------------------------------------------------------- ESPnet2


@pytest.fixture
def espnet_dir(tmp_path) -> Path:
    d = tmp_path / "decode_asr" / "test"
    write(d / "1best_recog" / "text", "utt_a 历史总是不断重演\nutt_b 他的工作很有意义\n")
    write(d / "1best_recog" / "score", "utt_a tensor(-12.3456)\nutt_b tensor(-20.5, device='cuda:0')\n")
    write(d / "2best_recog" / "text", "utt_a 力使总事不断虫眼\nutt_b 他的工作很有异议\n")
    write(d / "2best_recog" / "score", "utt_a -13.0\nutt_b tensor([-21.25])\n")
    write(d / "3best_recog" / "text", "utt_a 历史总是不断重言\n")  # utt_b has only two hypotheses
    write(d / "3best_recog" / "score", "utt_a tensor(-14.5)\n")
    return d


def test_espnet_ranks_come_from_the_folders_and_tensor_scores_are_read(espnet_dir):
    utterances = read_espnet(espnet_dir)
    assert [u["id"] for u in utterances] == ["utt_a", "utt_b"]
    assert [h["score"] for h in utterances[0]["hypotheses"]] == [-12.3456, -13.0, -14.5]
    assert [h["score"] for h in utterances[1]["hypotheses"]] == [-20.5, -21.25]
    assert utterances[0]["hypotheses"][1]["text"] == "力使总事不断虫眼"
    assert detect_format(espnet_dir) == "espnet"


def test_espnet_a_missing_score_is_named(espnet_dir):
    write(espnet_dir / "2best_recog" / "score", "utt_a -13.0\n")
    with pytest.raises(NbestFormatError, match=r"2best_recog/score: no score for 'utt_b'"):
        read_espnet(espnet_dir)


# --------------------------------------------------------------------------- NeMo


def test_nemo_beams_take_ids_and_references_from_the_manifest_and_keep_empty_texts(tmp_path):
    beams = write(tmp_path / "preds.tsv", "the light was good\t-3.5\n\t-9.25\nand god said\t-2.0\nand god sad\t-2.5\n")
    manifest = write(tmp_path / "test_manifest.json",
                     '{"audio_filepath": "/data/a/utt-1.wav", "duration": 2.1, "text": "the light was good"}\n'
                     '{"audio_filepath": "/data/b/utt-2.flac", "duration": 1.0, "text": "and god said"}\n')
    ids = [utt_id for utt_id, _ in read_manifest(manifest)]
    utterances = read_nemo_beams(beams, 2, ids)
    assert [u["id"] for u in utterances] == ["utt-1", "utt-2"]
    assert utterances[0]["hypotheses"] == [{"text": "the light was good", "score": -3.5}, {"text": "", "score": -9.25}]
    with pytest.raises(NbestFormatError, match=r"4 lines, but 2 utterances in the manifest x --beam-size 3 = 6"):
        read_nemo_beams(beams, 3, ids)


def test_a_manifest_without_audio_paths_numbers_its_lines(tmp_path):
    manifest = write(tmp_path / "m.json", '{"text": "one"}\n{"text": "two"}\n')
    assert read_manifest(manifest) == [("1", "one"), ("2", "two")]


# --------------------------------------------------------------------------- references, detection, errors


def test_references_from_a_kaldi_text_file_or_a_manifest(tmp_path):
    text = write(tmp_path / "text", "spk-1-utt-01 the light was good\nspk-2-utt-07 and god said\n")
    manifest = write(tmp_path / "m.json", '{"audio_filepath": "x/spk-1-utt-01.wav", "text": "the light was good"}\n')
    assert read_references(text) == {"spk-1-utt-01": "the light was good", "spk-2-utt-07": "and god said"}
    assert read_references(manifest) == {"spk-1-utt-01": "the light was good"}


def test_a_kaldi_file_given_as_json_names_the_layouts_the_reader_knows(kaldi_dir):
    with pytest.raises(NbestFormatError, match=r"invalid JSON at line 1, column 1.*reader knows our JSON.*Kaldi"):
        read_nbest(kaldi_dir / "words_text")


def test_a_directory_of_nothing_known_says_what_is_known(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(NbestFormatError, match=r"neither a Kaldi n-best directory .* nor an ESPnet2"):
        detect_format(tmp_path / "empty")


# --------------------------------------------------------------------------- the same results as our JSON


def utterances_with_fields() -> list[dict]:
    """good_utterances() with the fields every layout can carry, and an empty hypothesis in one list."""
    utterances = good_utterances()
    for utterance in utterances:
        for hyp in utterance["hypotheses"]:
            hyp["lm_nolm_score"] = hyp["am_score"] / 10
            hyp["ac_score"] = hyp.pop("am_score") * 10
    utterances[1]["hypotheses"].append({"text": "", "score": -11.0, "ac_score": -95.0, "lm_nolm_score": -0.5})
    return utterances


def rescore_best(args: list[str]) -> dict[str, str]:
    result = runner.invoke(app, ["rescore", *args, "--output-format", "jsonl"])
    assert result.exit_code == 0, result.output
    return {u["id"]: u["best"] for u in map(json.loads, result.stdout.splitlines())}


@pytest.mark.parametrize("layout", ["kaldi", "espnet", "nemo"])
def test_each_layout_gives_the_same_best_as_our_json(trained_model_dir, tmp_path, layout):
    utterances = utterances_with_fields()
    canonical = tmp_path / "in.json"
    canonical.write_text(json.dumps({"utterances": utterances}, ensure_ascii=False), encoding="utf-8")
    refs = write_kaldi_text(tmp_path / "text", utterances)
    fields = "ac_score,lm_nolm_score" if layout == "kaldi" else "score"
    weights = ["--score-fields", fields, "--lm-weight", "0.5", "--length-bonus", "0.25", "-m", str(trained_model_dir)]
    if layout == "kaldi":
        source = [str(write_kaldi(tmp_path / "kaldi", utterances, {"acwt": "ac_score", "lmwt.nolm": "lm_nolm_score"})),
                  "--references", str(refs)]
    elif layout == "espnet":
        source = [str(write_espnet(tmp_path / "espnet", utterances)), "--references", str(refs)]
    else:
        beams, manifest = write_nemo(tmp_path / "beams.tsv", tmp_path / "manifest.json", utterances)
        source = [str(beams), "--beam-size", "3", "--references", str(manifest)]
    from_layout = rescore_best([*source, *weights])
    assert from_layout == rescore_best([str(canonical), *weights])
    assert "" in [h["text"] for h in utterances[1]["hypotheses"]]  # the empty hypothesis went through too
    evaluated = runner.invoke(app, ["evaluate", *source[0:1], *source[1:], "--json"] if layout != "nemo" else
                              ["evaluate", *source, "--json"])
    assert evaluated.exit_code == 0, evaluated.output
    assert json.loads(evaluated.stdout)["utterances"] == len(utterances)


def test_tune_reads_a_kaldi_directory_and_weighs_its_cost_fields(trained_model_dir, tmp_path):
    utterances = utterances_with_fields()
    source = write_kaldi(tmp_path / "kaldi", utterances, {"acwt": "ac_score", "lmwt.nolm": "lm_nolm_score"})
    refs = write_kaldi_text(tmp_path / "text", utterances)
    out = tmp_path / "w.json"
    result = runner.invoke(app, ["tune", str(source), "--references", str(refs), "-m", str(trained_model_dir),
                                 "-o", str(out)])
    assert result.exit_code == 0, result.output
    tuned = json.loads(out.read_text())["weights"]
    assert set(tuned["score_fields"]) == {"ac_score", "lm_nolm_score"} and tuned["score_fields"]["ac_score"] == 1.0
    applied = runner.invoke(app, ["rescore", str(source), "-m", str(trained_model_dir), "--weights", str(out)])
    assert applied.exit_code == 0, applied.output


def test_an_untuned_kaldi_list_is_ranked_with_its_acoustic_and_graph_costs(trained_model_dir, tmp_path):
    utterances = utterances_with_fields()
    source = write_kaldi(tmp_path / "kaldi", utterances, {"acwt": "ac_score", "lmwt.nolm": "lm_nolm_score"})
    result = runner.invoke(app, ["rescore", str(source), "-m", str(trained_model_dir), "--length-bonus", "0"])
    assert result.exit_code == 0, result.output
    for utterance in json.loads(result.stdout)["utterances"]:
        for hyp in utterance["hypotheses"]:
            expected = 0.1 * hyp["ac_score"] + hyp["lm_nolm_score"] + hyp["lm_logprob"]
            assert hyp["total_score"] == pytest.approx(expected, abs=1e-9)


# --------------------------------------------------------------------------- writing what they read


def test_kaldi_text_and_trn_outputs_carry_the_best_text(trained_model_dir, tmp_path):
    canonical = tmp_path / "in.json"
    canonical.write_text(json.dumps({"utterances": good_utterances()}, ensure_ascii=False), encoding="utf-8")
    for name, line in (("hyp.txt", "{id} {best}"), ("hyp.trn", "{best} ({id})"), ("text", "{id} {best}")):
        out = tmp_path / name
        result = runner.invoke(app, ["rescore", str(canonical), "-m", str(trained_model_dir), "-o", str(out)])
        assert result.exit_code == 0, result.output
        expected = [line.format(id=u["id"], best=u["reference"]) for u in good_utterances()]
        assert out.read_text(encoding="utf-8").splitlines() == expected


@pytest.mark.parametrize("name", ["hyp.txt", "hyp.trn"])
def test_an_id_with_whitespace_is_refused_in_a_transcript_instead_of_written_as_text(trained_model_dir, tmp_path, name):
    utterances = good_utterances()
    utterances[1]["id"] = "speaker 2"  # read back from "speaker 2 TEXT", the id would be "speaker"
    canonical = tmp_path / "in.json"
    canonical.write_text(json.dumps({"utterances": utterances}, ensure_ascii=False), encoding="utf-8")
    result = runner.invoke(app, ["rescore", str(canonical), "-m", str(trained_model_dir), "-o", str(tmp_path / name)])
    message = assert_user_error(result, code=1)
    assert message.startswith(f"error: {tmp_path / name}: cannot write utterance 'speaker 2': its id has whitespace")
    assert not (tmp_path / name).exists()


def test_nbest_out_keeps_the_top_k_sorted_by_rank(trained_model_dir, tmp_path):
    utterances = utterances_with_fields()
    canonical = tmp_path / "in.json"
    canonical.write_text(json.dumps({"utterances": utterances}, ensure_ascii=False), encoding="utf-8")
    full = runner.invoke(app, ["rescore", str(canonical), "-m", str(trained_model_dir)])
    top = runner.invoke(app, ["rescore", str(canonical), "-m", str(trained_model_dir), "--nbest-out", "1"])
    assert full.exit_code == top.exit_code == 0
    for whole, cut in zip(json.loads(full.stdout)["utterances"], json.loads(top.stdout)["utterances"]):
        assert [h["rank"] for h in cut["hypotheses"]] == [1]
        assert cut["hypotheses"][0]["text"] == whole["best"] == cut["best"]
        assert math.isclose(sum(h["posterior"] for h in whole["hypotheses"]), 1.0)


def test_shards_cannot_be_written_as_transcripts(trained_model_dir, tmp_path):
    canonical = tmp_path / "in.json"
    canonical.write_text(json.dumps({"utterances": good_utterances()}), encoding="utf-8")
    result = runner.invoke(app, ["rescore", str(canonical), "-m", str(trained_model_dir), "--shard", "1/2",
                                 "-o", str(tmp_path / "part1.trn")])
    assert "--shard writes JSON or JSON Lines" in assert_user_error(result, code=2)


def test_canonical_input_of_a_json_file_is_the_file_itself(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text(json.dumps(good_utterances()[0]) + "\n")
    with canonical_input(path) as source:
        assert source == path


def test_pyctcdecode_beams_become_an_utterance_from_tuples_or_output_beams():
    from dataclasses import dataclass

    from pipeline.formats.pyctcdecode import beams_to_utterance

    @dataclass
    class OutputBeam:  # pyctcdecode's newer return type, field for field
        text: str
        last_lm_state: object
        text_frames: list
        logit_score: float
        lm_score: float

    tuples = [("the light was good", None, [("the", (0, 3))], -4.5, -10.25), ("", None, [], -9.0, -12.0)]
    expected = [{"text": "the light was good", "score": -10.25, "ctc_score": -4.5, "lm_score": -5.75},
                {"text": "", "score": -12.0, "ctc_score": -9.0, "lm_score": -3.0}]
    assert beams_to_utterance(tuples, "u1", "the light was good") == {
        "id": "u1", "hypotheses": expected, "reference": "the light was good"}
    objects = [OutputBeam(*beam) for beam in tuples]
    assert beams_to_utterance(objects, "u1")["hypotheses"] == expected
    with pytest.raises(ValueError, match="5 items"):
        beams_to_utterance([("text", -1.0)], "u1")


def test_references_from_a_file_replace_or_fill_those_of_our_json(trained_model_dir, tmp_path):
    utterances = good_utterances()
    for utterance in utterances:
        del utterance["reference"]
    canonical = tmp_path / "in.json"
    canonical.write_text(json.dumps({"utterances": utterances}, ensure_ascii=False), encoding="utf-8")
    refs = write_kaldi_text(tmp_path / "text", good_utterances())
    result = runner.invoke(app, ["evaluate", str(canonical), "--references", str(refs), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["utterances"] == len(utterances)
    unrelated = write(tmp_path / "other", "x-1 a b\n")
    result = runner.invoke(app, ["evaluate", str(canonical), "--references", str(unrelated)])
    assert "none of the n-best ids has a reference here" in assert_user_error(result)
