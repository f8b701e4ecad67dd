"""Tests for the rescore command line, as ``asr-rescore rescore NBEST`` and as the bare ``rescore NBEST``."""

from __future__ import annotations

import functools
import inspect
import json
import math
import shutil

import pytest
from typer.testing import CliRunner

from conftest import CHINESE, ENGLISH
import lm.launch
from lm.model import ModelConfig
from lm.session import TrainConfig, TrainState
from pipeline import batch, cli, commands
from pipeline.cli import app, rescore_app
from pipeline.nbest import NbestFormatError

runner = CliRunner()
BOTH_FORMS = pytest.mark.parametrize("form", ["asr-rescore rescore", "rescore"])


pytestmark = pytest.mark.usefixtures("restore_logging")


def invoke(form: str, *args: str, **kwargs):
    """Run ``asr-rescore rescore ARGS`` (form "asr-rescore rescore") or ``rescore ARGS`` (form "rescore")."""
    if form == "rescore":
        return runner.invoke(rescore_app, list(args), **kwargs)
    return runner.invoke(app, ["rescore", *args], **kwargs)


def assert_user_error(result, code: int = 1) -> str:
    """Exit ``code``, no traceback, exactly one ``error:`` line on stderr (warnings aside); return it."""
    assert result.exit_code == code, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit), repr(result.exception)  # not an unexpected exception
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    assert all(line in errors or line.startswith("WARNING: ") for line in lines), result.stderr
    return errors[0]


def units(text: str) -> int:
    return len(text.split()) if " " in text else len(text)


def untuned_totals(utterance: dict, backward_weight: float = 0.0) -> list[float]:
    """What the untuned default gives: score + LM terms + the list's mean LM cost per unit, per unit."""
    hyps = utterance["hypotheses"]
    lm = [h["lm_logprob"] + backward_weight * h.get("lm_logprob_backward", 0.0) for h in hyps]
    bonus = -sum(lm) / sum(units(h["text"]) for h in hyps)
    return [h.get("score", 0.0) + term + bonus * units(h["text"]) for h, term in zip(hyps, lm)]


def scrambled(sentence: str) -> str:
    return " ".join(sentence.split()[::-1]) if " " in sentence else sentence[::-1]


def good_utterances() -> list[dict]:
    """English and Chinese utterances where the first pass prefers a scrambled sentence and the LM does not."""
    return [
        {
            "id": f"utt-{i}",
            "reference": sentence,
            "hypotheses": [
                {"text": scrambled(sentence), "score": -10.0, "am_score": -7.5},
                {"text": sentence, "score": -10.5, "am_score": -8.0},
            ],
        }
        for i, sentence in enumerate([ENGLISH[3], ENGLISH[6], CHINESE[0], CHINESE[7]])
    ]


def write_json(path, utterances=None, **dump):
    path.write_text(json.dumps({"utterances": good_utterances() if utterances is None else utterances},
                               ensure_ascii=False, **dump), encoding="utf-8")
    return path


def write_jsonl(path, utterances=None):
    items = good_utterances() if utterances is None else utterances
    path.write_text("".join(json.dumps(u, ensure_ascii=False) + "\n" for u in items), encoding="utf-8")
    return path


def floats_apart(utterances: list[dict]) -> tuple[list, list]:
    """The output with lm_logprob/total_score/posterior taken out, and those values, for comparisons with a tolerance."""
    structure, values = [], []
    for utterance in utterances:
        utterance = json.loads(json.dumps(utterance))
        for hyp in utterance["hypotheses"]:
            values += [hyp.pop("lm_logprob"), hyp.pop("total_score"), hyp.pop("posterior")]
        structure.append(utterance)
    return structure, values


# --------------------------------------------------------------------------- output


@BOTH_FORMS
def test_rescore_writes_json_to_stdout(form, trained_model_dir, tmp_path):
    source = write_json(tmp_path / "in.json")
    result = invoke(form, str(source), "-m", str(trained_model_dir))
    assert result.exit_code == 0, result.output
    utterances = json.loads(result.stdout)["utterances"]
    assert [u["id"] for u in utterances] == [u["id"] for u in good_utterances()]
    for utterance, original in zip(utterances, good_utterances()):
        assert utterance["best"] == utterance["reference"]  # the LM overturns the first pass
        assert [h["text"] for h in utterance["hypotheses"]] == [h["text"] for h in original["hypotheses"]]
        assert [h["rank"] for h in utterance["hypotheses"]] == [2, 1]
        for hyp in utterance["hypotheses"]:
            assert hyp["am_score"] in (-7.5, -8.0)  # unknown fields kept
            assert hyp["lm_logprob"] < 0
        # the untuned default: lm_weight 1 and a length-neutral LM term
        totals = [h["total_score"] for h in utterance["hypotheses"]]
        assert totals == pytest.approx(untuned_totals(utterance), abs=1e-9)


def test_rescore_writes_the_same_to_a_file(trained_model_dir, tmp_path):
    source = write_json(tmp_path / "in.json")
    to_stdout = invoke("rescore", str(source), "-m", str(trained_model_dir))
    out = tmp_path / "out.json"
    to_file = invoke("rescore", str(source), "-m", str(trained_model_dir), "-o", str(out))
    assert to_file.exit_code == 0, to_file.output
    assert to_file.stdout == ""
    assert out.read_text(encoding="utf-8") == to_stdout.stdout


def test_jsonl_in_jsonl_out(trained_model_dir, tmp_path):
    source = write_jsonl(tmp_path / "in.jsonl")
    out = tmp_path / "out.jsonl"
    result = invoke("asr-rescore rescore", str(source), "-m", str(trained_model_dir), "-o", str(out))
    assert result.exit_code == 0, result.output
    lines = out.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 4
    parsed = [json.loads(line) for line in lines]
    assert [u["id"] for u in parsed] == [u["id"] for u in good_utterances()]
    assert all("best" in u and "utterances" not in u for u in parsed)


def test_mlm_dict_and_bare_list_give_canonical_output(trained_model_dir, tmp_path):
    hyps = {f"hyp_{n}": {"score": -float(n), "text": f"{ENGLISH[n % 8]}"} for n in (10, 2, 1)}
    mlm = tmp_path / "mlm.json"
    mlm.write_text(json.dumps({"utt-a": {"ref": ENGLISH[1], **hyps}}))
    result = invoke("rescore", str(mlm), "-m", str(trained_model_dir))
    assert result.exit_code == 0, result.output
    [utterance] = json.loads(result.stdout)["utterances"]
    assert utterance["id"] == "utt-a" and utterance["reference"] == ENGLISH[1]
    assert [h["score"] for h in utterance["hypotheses"]] == [-1.0, -2.0, -10.0]  # hyp_1, hyp_2, hyp_10

    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps(good_utterances()))
    result = invoke("rescore", str(bare), "-m", str(trained_model_dir))
    assert result.exit_code == 0, result.output
    assert [u["id"] for u in json.loads(result.stdout)["utterances"]] == [u["id"] for u in good_utterances()]


@BOTH_FORMS
def test_summary_on_stderr_only_with_references(form, trained_model_dir, tmp_path):
    result = invoke(form, str(write_json(tmp_path / "in.json")), "-m", str(trained_model_dir))
    assert result.exit_code == 0, result.output
    for label in ("first-pass", "rescored", "oracle"):
        assert label in result.stderr
        assert label not in result.stdout
    without = [{k: v for k, v in u.items() if k != "reference"} for u in good_utterances()]
    result = invoke(form, str(write_json(tmp_path / "noref.json", without)), "-m", str(trained_model_dir))
    assert result.exit_code == 0, result.output
    assert "oracle" not in result.stderr


def test_help_points_to_the_other_commands():
    result = runner.invoke(rescore_app, ["--help"])
    assert result.exit_code == 0
    assert "tune" in result.stdout and "evaluate" in result.stdout


# --------------------------------------------------------------------------- weights and options


def test_weights_file_and_overrides(trained_model_dir, tmp_path):
    weights = tmp_path / "w.json"
    weights.write_text(json.dumps({"weights": {"lm_weight": 0.5, "length_bonus": 0.25}}))
    source = write_json(tmp_path / "in.json")
    result = invoke("rescore", str(source), "-m", str(trained_model_dir), "--weights", str(weights))
    assert result.exit_code == 0, result.output
    for utterance in json.loads(result.stdout)["utterances"]:
        for hyp in utterance["hypotheses"]:
            length = len(hyp["text"].split()) if " " in hyp["text"] else len(hyp["text"])
            assert hyp["total_score"] == pytest.approx(hyp["score"] + 0.5 * hyp["lm_logprob"] + 0.25 * length, abs=1e-9)

    result = invoke("rescore", str(source), "-m", str(trained_model_dir), "--weights", str(weights), "--lm-weight", "0")
    assert result.exit_code == 0, result.output
    for utterance in json.loads(result.stdout)["utterances"]:
        assert utterance["best"] != utterance["reference"]  # without the LM the first pass stands
        for hyp in utterance["hypotheses"]:
            length = len(hyp["text"].split()) if " " in hyp["text"] else len(hyp["text"])
            assert hyp["total_score"] == hyp["score"] + 0.25 * length


def test_bad_weights_file(trained_model_dir, tmp_path):
    weights = tmp_path / "w.json"
    weights.write_text('{"weights": {"lm_weight": "high"}}')
    result = invoke("rescore", str(write_json(tmp_path / "in.json")), "-m", str(trained_model_dir), "--weights", str(weights))
    assert assert_user_error(result) == f"error: {weights}: every weight must be a finite number"


def test_score_fields(trained_model_dir, tmp_path):
    utterances = good_utterances()
    for utterance in utterances:
        for hyp in utterance["hypotheses"]:
            hyp["lm_score"] = -2.25
    source = write_json(tmp_path / "in.json", utterances)
    result = runner.invoke(app, ["rescore", str(source), "-m", str(trained_model_dir), "--score-fields", "am_score,lm_score",
                                 "--length-bonus", "0"])
    assert result.exit_code == 0, result.output
    output = json.loads(result.stdout)["utterances"]
    for utterance in output:
        for hyp in utterance["hypotheses"]:
            assert hyp["lm_score"] == -2.25  # the input's own LM score is kept, not overwritten
            expected = hyp["am_score"] + hyp["lm_score"] + hyp["lm_logprob"]
            assert hyp["total_score"] == pytest.approx(expected, abs=1e-9)


def test_a_score_field_missing_from_some_hypotheses_is_an_error(trained_model_dir, tmp_path):
    utterances = good_utterances()
    del utterances[2]["hypotheses"][1]["am_score"]
    source = write_json(tmp_path / "in.json", utterances)
    out = tmp_path / "out.json"
    result = runner.invoke(app, ["rescore", str(source), "-m", str(trained_model_dir), "--score-fields", "am_score",
                                 "-o", str(out)])
    assert assert_user_error(result) == (
        f"error: {source}: utterance 'utt-2', hypothesis 2: has no 'am_score' but utterance 'utt-0', hypothesis 1 "
        "has one; 'am_score' (named by --score-fields) must be on every hypothesis or on none")
    assert not out.exists()


@BOTH_FORMS
def test_a_missing_score_on_some_hypotheses_is_an_error_not_a_winner(form, trained_model_dir, tmp_path):
    """Read as 0, a missing score would outrank every real (negative) one and win."""
    utterances = good_utterances()
    del utterances[1]["hypotheses"][1]["score"]
    result = invoke(form, str(write_json(tmp_path / "in.json", utterances)), "-m", str(trained_model_dir))
    assert "utterance 'utt-1', hypothesis 2: has no 'score'" in assert_user_error(result)
    assert result.stdout == ""


def test_a_score_missing_from_every_hypothesis_ranks_by_the_lm_with_one_note(trained_model_dir, tmp_path):
    utterances = good_utterances()
    for utterance in utterances:
        for hyp in utterance["hypotheses"]:
            del hyp["score"]
    result = runner.invoke(app, ["rescore", str(write_json(tmp_path / "in.json", utterances)), "-m",
                                 str(trained_model_dir)])
    assert result.exit_code == 0, result.output
    for utterance in json.loads(result.stdout)["utterances"]:
        assert all("score" not in h for h in utterance["hypotheses"])  # nothing filled in
        assert utterance["best"] == utterance["reference"]
        totals = [h["total_score"] for h in utterance["hypotheses"]]
        assert totals == pytest.approx(untuned_totals(utterance), abs=1e-9)
    notes = [line for line in result.stderr.splitlines() if line.startswith("WARNING") and "'score'" in line]
    assert len(notes) == 1 and "ranking without that term" in notes[0], result.stderr


@pytest.fixture(scope="module")
def backward_model_dir(trained_model_dir, tmp_path_factory):
    """The tiny model relabelled right-to-left: enough to exercise the backward path."""
    path = tmp_path_factory.mktemp("backward") / "lm"
    shutil.copytree(trained_model_dir, path)
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "direction": "backward"}))
    return path


def test_backward_model(trained_model_dir, backward_model_dir, tmp_path):
    source = write_json(tmp_path / "in.json")
    result = runner.invoke(app, ["rescore", str(source), "-m", str(trained_model_dir), "--backward-model",
                                 str(backward_model_dir), "--backward-weight", "0.5", "--length-bonus", "0"])
    assert result.exit_code == 0, result.output
    assert "WARNING" not in result.stderr
    hyps = [hyp for utterance in json.loads(result.stdout)["utterances"] for hyp in utterance["hypotheses"]]
    # Reading tokens right to left changes the score of every multi-token text.
    assert sum(hyp["lm_logprob_backward"] != hyp["lm_logprob"] for hyp in hyps) >= len(hyps) - 2
    for hyp in hyps:
        assert hyp["lm_logprob_backward"] < 0
        expected = hyp["score"] + hyp["lm_logprob"] + 0.5 * hyp["lm_logprob_backward"]
        assert hyp["total_score"] == pytest.approx(expected, abs=1e-9)


@pytest.fixture(scope="module")
def bidirectional_model_dir(trained_model_dir, backward_model_dir, tmp_path_factory):
    """A forward model with a backward one in its backward/ folder, as train --direction both writes."""
    path = tmp_path_factory.mktemp("bidirectional") / "lm"
    shutil.copytree(trained_model_dir, path)
    shutil.copytree(backward_model_dir, path / "backward")
    return path


def test_backward_model_beside_the_forward_one_is_added(bidirectional_model_dir, tmp_path):
    source = write_json(tmp_path / "in.json")
    result = runner.invoke(app, ["rescore", str(source), "-m", str(bidirectional_model_dir)])
    assert result.exit_code == 0, result.output
    for utterance in json.loads(result.stdout)["utterances"]:
        # untuned, the backward model's score gets the forward model's weight, and the length term counts both
        totals = [h["total_score"] for h in utterance["hypotheses"]]
        assert totals == pytest.approx(untuned_totals(utterance, backward_weight=1.0), abs=1e-9)


def test_backward_weight_zero_leaves_the_backward_model_out(bidirectional_model_dir, tmp_path):
    source = write_json(tmp_path / "in.json")
    result = runner.invoke(app, ["rescore", str(source), "-m", str(bidirectional_model_dir), "--backward-weight", "0"])
    assert result.exit_code == 0, result.output
    for utterance in json.loads(result.stdout)["utterances"]:
        assert all("lm_logprob_backward" not in hyp for hyp in utterance["hypotheses"])
        totals = [h["total_score"] for h in utterance["hypotheses"]]
        assert totals == pytest.approx(untuned_totals(utterance), abs=1e-9)


def test_tuned_backward_weight_without_a_backward_model_is_refused(trained_model_dir, tmp_path):
    source = write_json(tmp_path / "in.json")
    weights = tmp_path / "w.json"
    weights.write_text(json.dumps({"weights": {"lm_weight": 0.5, "backward_weight": 0.5}, "backward_model": "exp/b"}))
    result = runner.invoke(app, ["rescore", str(source), "-m", str(trained_model_dir), "--weights", str(weights)])
    assert assert_user_error(result) == (
        f"error: {weights}: gives backward_weight 0.5 (tuned with the backward model exp/b), but {trained_model_dir} "
        "has no backward model and none was given (--backward-model DIR); pass --allow-other-model to leave that term out")
    result = runner.invoke(app, ["rescore", str(source), "-m", str(trained_model_dir), "--weights", str(weights),
                                 "--allow-other-model"])
    assert result.exit_code == 0, result.output
    assert "backward_weight 0.5" in result.stderr and "no backward model" in result.stderr


def test_an_explicit_backward_weight_without_a_backward_model_is_a_usage_error(trained_model_dir, tmp_path):
    result = runner.invoke(app, ["rescore", str(write_json(tmp_path / "in.json")), "-m", str(trained_model_dir),
                                 "--backward-weight", "0.5"])
    assert "has no backward model: give one with --backward-model DIR" in assert_user_error(result, code=2)


def test_tune_uses_the_backward_model_beside_the_forward_one(bidirectional_model_dir, tmp_path):
    source = write_json(tmp_path / "dev.json")
    result = runner.invoke(app, ["tune", str(source), "-m", str(bidirectional_model_dir), "-o", str(tmp_path / "w.json")])
    assert result.exit_code == 0, result.output
    tuned = json.loads((tmp_path / "w.json").read_text())
    assert tuned["backward_model"] == str(bidirectional_model_dir / "backward")


def test_forward_model_as_backward_model_warns(trained_model_dir, tmp_path):
    source = write_json(tmp_path / "in.json")
    result = runner.invoke(app, ["rescore", str(source), "-m", str(trained_model_dir), "--backward-model", str(trained_model_dir)])
    assert result.exit_code == 0, result.output
    assert "expects one trained with --direction backward" in result.stderr


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--shard", "3/2"], "error: --shard K/N needs 1 <= K <= N, got '3/2'"),
        (["--shard", "half"], "error: --shard must look like K/N (e.g. 1/4), got 'half'"),
        (["--unit", "syllable"], "error: --unit must be one of auto, word, char, got 'syllable'"),
        (["--precision", "fp8"], "error: --precision must be one of fp32, bf16, got 'fp8'"),
        (["--jobs", "0"], "error: --jobs must be at least 1, got 0"),
        (["--device", "gpu"], "error: --device must be auto, cpu, cuda or cuda:N, got 'gpu'"),
        (["--threads", "-1"], "error: --threads must be at least 1, got -1"),
        (["--batch-tokens", "-5"], "error: --batch-tokens must be at least 1, got -5"),
        (["--lm-weight", "nan"], "error: --lm-weight must be a finite number, got nan"),
        (["--length-bonus", "inf"], "error: --length-bonus must be a finite number, got inf"),
        (["--backward-weight", "-inf"], "error: --backward-weight must be a finite number, got -inf"),
        (["--score-fields", " , "], "error: --score-fields names no field, got ' , '"),
    ],
)
def test_bad_option_values_exit_2(trained_model_dir, tmp_path, option, message):
    result = invoke("rescore", str(write_json(tmp_path / "in.json")), "-m", str(trained_model_dir), *option)
    assert assert_user_error(result, code=2) == message
    assert result.stdout == ""


def test_bf16_picks_the_same_best(trained_model_dir, tmp_path):
    source = write_json(tmp_path / "in.json")
    fp32 = invoke("rescore", str(source), "-m", str(trained_model_dir))
    bf16 = invoke("rescore", str(source), "-m", str(trained_model_dir), "--precision", "bf16")
    assert bf16.exit_code == 0, bf16.output
    a, b = json.loads(fp32.stdout)["utterances"], json.loads(bf16.stdout)["utterances"]
    assert [u["best"] for u in a] == [u["best"] for u in b]
    for x, y in zip(a, b):
        assert [h["lm_logprob"] for h in y["hypotheses"]] == pytest.approx([h["lm_logprob"] for h in x["hypotheses"]], abs=0.05)


# --------------------------------------------------------------------------- sharding and processes


def test_shards_then_merge_reproduce_the_unsharded_output(trained_model_dir, tmp_path):
    source = write_json(tmp_path / "in.json", good_utterances() + [
        {"id": f"more-{i}", "reference": s, "hypotheses": [{"text": s, "score": -1.0}, {"text": s[:-1], "score": -0.5}]}
        for i, s in enumerate(ENGLISH[:5])
    ])
    model = ["-m", str(trained_model_dir)]
    assert invoke("rescore", str(source), *model, "-o", str(tmp_path / "full.json")).exit_code == 0
    for k in (1, 2):
        result = invoke("rescore", str(source), *model, "--shard", f"{k}/2", "-o", str(tmp_path / f"part{k}.json"))
        assert result.exit_code == 0, result.output
    part1 = json.loads((tmp_path / "part1.json").read_text())["utterances"]
    assert [u["id"] for u in part1] == ["utt-0", "utt-2", "more-0", "more-2", "more-4"]
    result = runner.invoke(app, ["merge", str(tmp_path / "part1.json"), str(tmp_path / "part2.json"),
                                 "-o", str(tmp_path / "merged.json")])
    assert result.exit_code == 0, result.output
    full = json.loads((tmp_path / "full.json").read_text())["utterances"]
    merged = json.loads((tmp_path / "merged.json").read_text())["utterances"]
    # Everything but the LM's float32 sums is identical; those can differ in the last bits because a
    # shard pools different sentences into each batched step (a difference of 2.4e-7 was seen).
    (full_structure, full_values), (merged_structure, merged_values) = floats_apart(full), floats_apart(merged)
    assert merged_structure == full_structure
    assert merged_values == pytest.approx(full_values, abs=1e-5)


@pytest.mark.slow
def test_two_jobs_give_the_same_output_as_one(trained_model_dir, tmp_path, monkeypatch):
    # Small chunks, so that both worker processes get work and the order must be restored.
    monkeypatch.setattr(commands, "rescore_file", functools.partial(batch.rescore_file, chunk_utterances=1))
    submitted = []

    class CountingPool(batch.ProcessPoolExecutor):
        def submit(self, fn, *args, **kwargs):
            submitted.append(len(args[0]))
            return super().submit(fn, *args, **kwargs)

    monkeypatch.setattr(batch, "ProcessPoolExecutor", CountingPool)
    source = write_jsonl(tmp_path / "in.jsonl")
    one = invoke("rescore", str(source), "-m", str(trained_model_dir), "--jobs", "1")
    two = invoke("rescore", str(source), "-m", str(trained_model_dir), "--jobs", "2")
    assert two.exit_code == 0, two.output
    a = [json.loads(line) for line in one.stdout.splitlines()]
    b = [json.loads(line) for line in two.stdout.splitlines()]
    assert len(a) == 4
    assert submitted == [1, 1, 1, 1]  # --jobs 1 never made a pool; --jobs 2 sent four chunks to it
    (sa, va), (sb, vb) = floats_apart(a), floats_apart(b)
    assert sb == sa
    assert vb == pytest.approx(va, abs=1e-5)


# --------------------------------------------------------------------------- unusual but valid input


def test_empty_lists_empty_texts_and_unseen_characters(trained_model_dir, tmp_path):
    utterances = [
        {"id": "empty-list", "reference": "a", "hypotheses": []},
        {"id": "empty-text", "hypotheses": [{"text": "", "score": 0.0}, {"text": "and god", "score": -1.0}]},
        {"id": "emoji", "hypotheses": [{"text": "😀🎉 and god 🙏", "score": 0.0}]},
        {"id": "rare-cjk", "hypotheses": [{"text": "龘靐齉𪚥", "score": 0.0}]},
        {"id": "controls", "hypotheses": [{"text": "a\tb\u200bc\u0007", "score": 0.0}]},
    ]
    result = invoke("rescore", str(write_json(tmp_path / "in.json", utterances)), "-m", str(trained_model_dir))
    assert result.exit_code == 0, result.output
    output = {u["id"]: u for u in json.loads(result.stdout)["utterances"]}
    assert output["empty-list"]["hypotheses"] == [] and output["empty-list"]["best"] == ""
    assert [h["text"] for h in output["empty-text"]["hypotheses"]] == ["", "and god"]
    for utterance in output.values():
        for hyp in utterance["hypotheses"]:
            assert math.isfinite(hyp["lm_logprob"]) and hyp["lm_logprob"] < 0
            assert math.isfinite(hyp["total_score"])
    assert output["emoji"]["hypotheses"][0]["text"] == "😀🎉 and god 🙏"


def test_a_hypothesis_of_100000_characters(trained_model_dir, tmp_path):
    long_text = ("历史总是不断重演" * 12500)[:100_000]
    utterances = [{"id": "long", "hypotheses": [{"text": long_text, "score": 0.0}, {"text": "历史", "score": 0.0}]}]
    result = invoke("rescore", str(write_json(tmp_path / "in.json", utterances)), "-m", str(trained_model_dir),
                    "--length-bonus", "0")
    assert result.exit_code == 0, result.output
    [utterance] = json.loads(result.stdout)["utterances"]
    long_hyp = utterance["hypotheses"][0]
    assert len(long_hyp["text"]) == 100_000
    assert math.isfinite(long_hyp["lm_logprob"]) and long_hyp["lm_logprob"] < -1000
    assert utterance["best"] == "历史"


# --------------------------------------------------------------------------- user errors


BAD_INPUTS = {
    "missing file": None,
    "truncated JSON": json.dumps({"utterances": good_utterances()}, indent=1)[:300],
    "invalid UTF-8": b'{"utterances": [\n{"id": "u1",\n "hypotheses": [{"text": "\xff", "score": 1}]}]}',
    "no hypotheses": json.dumps({"utterances": [{"id": "u1", "reference": "a"}]}),
    "text not a string": json.dumps({"utterances": [{"id": "u1", "hypotheses": [{"text": "a", "score": 0}, {"text": 5, "score": 0}]}]}),
    "NaN score": '{"utterances": [{"id": "u1", "hypotheses": [{"text": "a", "score": NaN}]}]}',
    "duplicate ids": json.dumps({"utterances": [{"id": "u1", "hypotheses": []}, {"id": "u1", "hypotheses": []}]}),
    "one bad JSONL line": "\n".join(json.dumps(u) for u in good_utterances()[:1])
    + '\n{"id": "u2", "hypotheses": [}\n' + json.dumps(good_utterances()[1]) + "\n",
}


def expected_message(name: str, path) -> str:
    if name == "truncated JSON":
        try:
            json.loads(BAD_INPUTS[name])
        except json.JSONDecodeError as e:
            return f"error: {path}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}"
    return {
        "missing file": f"error: {path}: no such file",
        "invalid UTF-8": f"error: {path}: invalid UTF-8 at line 3 (byte offset 56)",
        "no hypotheses": f"error: {path}: utterance 'u1': field 'hypotheses' is missing, expected a list",
        "text not a string": f"error: {path}: utterance 'u1', hypothesis 2: field 'text' must be a string, got int",
        "NaN score": f"error: {path}: utterance 'u1', hypothesis 1: field 'score' must be a finite number, got NaN",
        "duplicate ids": f"error: {path}: utterance 'u1': duplicate id: utterance #2 repeats utterance #1",
        "one bad JSONL line": f"error: {path}: line 2: invalid JSON at column 29: Expecting value",
    }[name]


def write_bad_input(tmp_path, name):
    path = tmp_path / ("in.jsonl" if "JSONL" in name else "in.json")
    content = BAD_INPUTS[name]
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content, encoding="utf-8")
    return path


@BOTH_FORMS
@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_bad_input_is_one_line_naming_file_and_place(form, name, trained_model_dir, tmp_path):
    path = write_bad_input(tmp_path, name)
    result = invoke(form, str(path), "-m", str(trained_model_dir), "-o", str(tmp_path / "out.json"))
    assert assert_user_error(result) == expected_message(name, path)
    assert not (tmp_path / "out.json").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_skip_bad_skips_the_bad_line(trained_model_dir, tmp_path):
    path = write_bad_input(tmp_path, "one bad JSONL line")
    result = runner.invoke(app, ["rescore", str(path), "-m", str(trained_model_dir), "--skip-bad"])
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["id"] for line in result.stdout.splitlines()] == ["utt-0", "utt-1"]
    assert f"{path}: line 2: invalid JSON" in result.stderr
    assert "1 bad utterances skipped" in result.stderr


def test_missing_model_dir(tmp_path):
    missing = tmp_path / "no-model"
    result = invoke("rescore", str(write_json(tmp_path / "in.json")), "-m", str(missing))
    assert assert_user_error(result) == f"error: {missing}: not a model directory (no such directory)"


def test_bad_model_dir(trained_model_dir, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(trained_model_dir, model)
    (model / "config.json").write_text("")
    result = invoke("asr-rescore rescore", str(write_json(tmp_path / "in.json")), "-m", str(model))
    message = assert_user_error(result)
    assert message.startswith(f"error: {model / 'config.json'}: not valid JSON")


@pytest.mark.parametrize("bad", ["input", "model"])
def test_failed_run_never_clobbers_the_output(bad, trained_model_dir, tmp_path):
    utterances = good_utterances()
    if bad == "input":
        utterances[3]["hypotheses"][1]["score"] = "high"  # the last utterance: the others were written
    source = write_json(tmp_path / "in.json", utterances)
    model = trained_model_dir
    if bad == "model":
        model = tmp_path / "model"
        shutil.copytree(trained_model_dir, model)
        (model / "model.pt").write_bytes(b"not a checkpoint")
    out = tmp_path / "out.json"
    out.write_bytes(b'{"precious": true}\n')
    before = sorted(p.name for p in tmp_path.iterdir())
    result = invoke("rescore", str(source), "-m", str(model), "-o", str(out))
    message = assert_user_error(result)
    assert str(source if bad == "input" else model / "model.pt") in message
    assert out.read_bytes() == b'{"precious": true}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_output_in_a_missing_folder(trained_model_dir, tmp_path):
    out = tmp_path / "no-such-folder" / "out.json"
    result = invoke("rescore", str(write_json(tmp_path / "in.json")), "-m", str(trained_model_dir), "-o", str(out))
    message = assert_user_error(result)
    assert message == f"error: {out.parent}: the output's directory does not exist"


def test_output_onto_a_directory(trained_model_dir, tmp_path):
    folder = tmp_path / "folder"
    folder.mkdir()
    result = invoke("rescore", str(write_json(tmp_path / "in.json")), "-m", str(trained_model_dir), "-o", str(folder))
    assert assert_user_error(result, code=2) == f"error: -o {folder}: is a directory, expected a file name"
    assert list(folder.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["folder", "in.json"]


def test_debug_flag_shows_the_exception(trained_model_dir, tmp_path):
    path = write_bad_input(tmp_path, "no hypotheses")
    with pytest.raises(NbestFormatError, match="field 'hypotheses' is missing"):
        runner.invoke(app, ["--debug", "rescore", str(path), "-m", str(trained_model_dir)], catch_exceptions=False)


def test_debug_environment_variable_shows_the_exception(trained_model_dir, tmp_path):
    path = write_bad_input(tmp_path, "no hypotheses")
    result = invoke("rescore", str(path), "-m", str(trained_model_dir), env={"ASR_RESCORE_DEBUG": "1"})
    assert result.exit_code == 1
    assert isinstance(result.exception, NbestFormatError)


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--ngram-order", "1"], "error: n-gram order must be at least 2, got 1"),
        (["--ngram-min-count", "0"], "error: --ngram-min-count must be at least 1, got 0"),
        (["--weight-dropout", "1.0"], "error: weight_dropout must be in [0, 1), got 1.0"),
        (["--layer-dropout", "-0.1"], "error: layer_dropout must be in [0, 1), got -0.1"),
        (["--direction", "sideways"], "error: --direction must be auto, both, forward or backward, got 'sideways'"),
    ],
)
def test_bad_train_options_exit_2_before_any_work(tmp_path, option, message):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("a sentence\n", encoding="utf-8")
    result = runner.invoke(app, ["train", str(corpus), "-o", str(tmp_path / "lm"), *option])
    assert assert_user_error(result, code=2) == message
    assert not (tmp_path / "lm").exists()


@pytest.mark.parametrize("name", ["embedding_dim", "hidden_dim", "num_layers", "cell"])
def test_train_architecture_defaults_are_model_configs(name):
    """The train command spells out its size defaults (the CLI starts without importing torch); they are ModelConfig's."""
    assert inspect.signature(cli.train).parameters[name].default == getattr(ModelConfig, name)


@pytest.mark.parametrize("name", ["batch_tokens", "lr", "warmup_steps", "weight_decay", "clip", "patience",
                                  "average_power", "seed"])
def test_train_optimisation_defaults_are_train_configs(name):
    """The train command's optimisation defaults are TrainConfig's, so the CLI and the Python API train alike."""
    assert inspect.signature(cli.train).parameters[name].default == getattr(TrainConfig, name)


def test_train_passes_weight_decay_to_the_training_config(tmp_path, monkeypatch):
    seen = {}

    def fake_run(corpus, output, model_settings, tokenizer_config, config, *args, **kwargs):
        seen["config"] = config
        return TrainState()

    monkeypatch.setattr(lm.launch, "run", fake_run)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("a sentence\n", encoding="utf-8")
    result = runner.invoke(app, ["train", str(corpus), "-o", str(tmp_path / "lm"), "--weight-decay", "0.25",
                                 "--direction", "forward"])
    assert result.exit_code == 0, result.output
    assert seen["config"].weight_decay == 0.25
