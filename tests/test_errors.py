"""Inputs that used to give a wrong answer with exit code 0, or a traceback: each now fails in one line.

Exit codes agree across commands: 1 for a problem of the input, 2 for an option that cannot work.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from typer.testing import CliRunner

import lm.device
import lm.model

from pipeline.cli import app, rescore_app
from test_cli import assert_user_error, good_utterances, invoke, write_json, write_jsonl

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("restore_logging")


# --------------------------------------------------------------------------- options that cannot work (exit 2)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize("command", [["rescore"], ["tune", "-o", "w.json"], ["perplexity"]])
def test_cuda_on_a_machine_without_it_is_one_line(trained_model_dir, tmp_path, command):
    source = write_json(tmp_path / "in.json")
    result = runner.invoke(app, [command[0], str(source), "-m", str(trained_model_dir), *command[1:], "--device", "cuda"])
    assert assert_user_error(result, code=2) == (
        "error: --device cuda: CUDA is not available on this machine (use --device cpu or auto)")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-n", "-1"], "error: --num must be at least 1, got -1"),
        (["--temperature", "-1"], "error: --temperature must be a finite number >= 0, got -1.0"),
        (["--top-k", "-2"], "error: --top-k must be >= 0 (0 keeps every token), got -2"),
        (["--max-tokens", "0"], "error: --max-tokens must be at least 1, got 0"),
    ],
)
def test_bad_sample_options_exit_2(trained_model_dir, args, message):
    result = runner.invoke(app, ["sample", str(trained_model_dir), *args])
    assert assert_user_error(result, code=2) == message


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--batch-tokens", "-5"], "error: --batch-tokens must be at least 1, got -5"),
        (["--threads", "-1"], "error: --threads must be at least 1 (or 0 for torch's default), got -1"),
        (["--epochs", "0"], "error: --epochs must be at least 1, got 0"),
        (["--lr", "nan"], "error: --lr must be a finite number >= 0, got nan"),
        (["--weight-decay", "-0.1"], "error: --weight-decay must be a finite number >= 0, got -0.1"),
        (["--valid-fraction", "1.5"], "error: --valid-fraction must be between 0 and 1, got 1.5"),
        (["--device", "gpu"], "error: --device must be auto, cpu, cuda or cuda:N, got 'gpu'"),
        (["--precision", "fp8"], "error: --precision must be auto, fp32 or bf16, got 'fp8'"),
    ],
)
def test_bad_train_options_exit_2_and_create_nothing(corpus_file, tmp_path, args, message):
    result = runner.invoke(app, ["train", str(corpus_file), "-o", str(tmp_path / "lm"), *args])
    assert assert_user_error(result, code=2) == message
    assert not (tmp_path / "lm").exists()


def test_bf16_training_on_a_cpu_without_its_kernels_exits_2_and_creates_nothing(corpus_file, tmp_path, monkeypatch):
    monkeypatch.setattr(lm.device, "cpu_trains_in_bf16", lambda cell: False)
    result = runner.invoke(app, ["train", str(corpus_file), "-o", str(tmp_path / "lm"), "--device", "cpu",
                                 "--precision", "bf16"])
    assert assert_user_error(result, code=2) == (
        "error: --precision bf16: this CPU has no bfloat16 kernel for the LSTM cell (oneDNN needs AVX-512 for it); "
        "use --precision fp32 or auto")
    assert not (tmp_path / "lm").exists()


class KernelLessLSTM(torch.nn.LSTM):
    """An LSTM that fails under bf16 autocast the way oneDNN's does on an AVX2 CPU."""

    def forward(self, *args, **kwargs):
        if torch.is_autocast_enabled("cpu"):
            raise RuntimeError("could not create a primitive descriptor for the LSTM forward propagation primitive")
        return super().forward(*args, **kwargs)


class Float32LSTM(torch.nn.LSTM):
    """An LSTM whose kernel works under autocast (it runs in float32)."""

    def forward(self, *args, **kwargs):
        with torch.autocast("cpu", enabled=False):
            return super().forward(*args, **kwargs)


def test_the_bf16_probe_reports_a_cell_whose_kernel_fails(monkeypatch):
    monkeypatch.setitem(lm.model.CELLS, "lstm", KernelLessLSTM)
    lm.device.cpu_trains_in_bf16.cache_clear()
    try:
        assert lm.device.cpu_trains_in_bf16("lstm") is False
        monkeypatch.setitem(lm.model.CELLS, "lstm", Float32LSTM)
        lm.device.cpu_trains_in_bf16.cache_clear()
        assert lm.device.cpu_trains_in_bf16("lstm") is True
        torch.manual_seed(7)
        expected = torch.rand(3)
        torch.manual_seed(7)
        lm.device.cpu_trains_in_bf16.cache_clear()
        lm.device.cpu_trains_in_bf16("lstm")
        assert torch.equal(torch.rand(3), expected)  # the probe leaves the training's random numbers alone
    finally:
        lm.device.cpu_trains_in_bf16.cache_clear()


def test_writing_onto_the_input_is_refused_unless_asked_for(trained_model_dir, tmp_path):
    source = write_json(tmp_path / "in.json")
    before = source.read_bytes()
    result = invoke("rescore", str(source), "-m", str(trained_model_dir), "-o", str(source))
    assert assert_user_error(result, code=2) == (
        f"error: -o {source} is the input file; pass --overwrite-input to replace it with the result")
    assert source.read_bytes() == before
    result = invoke("rescore", str(source), "-m", str(trained_model_dir), "-o", str(source), "--overwrite-input")
    assert result.exit_code == 0, result.output
    assert all("best" in u for u in json.loads(source.read_text())["utterances"])


# --------------------------------------------------------------------------- input problems (exit 1)


@pytest.mark.parametrize("command", [["rescore"], ["evaluate"], ["tune", "-o", "w.json"], ["perplexity"]])
def test_a_directory_as_input_exits_1_in_every_command(trained_model_dir, tmp_path, command):
    folder = tmp_path / "folder"
    folder.mkdir()
    args = [command[0], str(folder), *command[1:]]
    if command[0] != "evaluate":
        args += ["-m", str(trained_model_dir)]
    line = assert_user_error(runner.invoke(app, args), code=1)
    assert line.startswith(f"error: {folder}: ") and "directory" in line, line


@pytest.mark.parametrize("command", [["evaluate"], ["tune", "-o", "w.json"]])
def test_no_references_is_an_input_problem(trained_model_dir, tmp_path, command):
    utterances = good_utterances()
    for utterance in utterances:
        del utterance["reference"]
    source = write_json(tmp_path / "in.json", utterances)
    args = [command[0], str(source), *command[1:]] + (["-m", str(trained_model_dir)] if command[0] == "tune" else [])
    assert "no utterance has a 'reference'" in assert_user_error(runner.invoke(app, args), code=1)


def test_a_non_numeric_rnn_weight_in_config_is_one_line(trained_model_dir, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(trained_model_dir, model)
    config = json.loads((model / "config.json").read_text())
    config["ngram"]["rnn_weight"] = "high"
    (model / "config.json").write_text(json.dumps(config))
    result = invoke("rescore", str(write_json(tmp_path / "in.json")), "-m", str(model))
    assert assert_user_error(result) == f"error: {model / 'config.json'}: 'ngram' needs a number rnn_weight in (0, 1], got 'high'"


def test_debug_works_on_the_bare_rescore(tmp_path):
    result = runner.invoke(rescore_app, [str(tmp_path / "absent.json"), "--debug"])
    assert result.exit_code == 1
    assert not isinstance(result.exception, SystemExit)  # the exception itself, with its traceback


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout.startswith("asr-rescore ")


def test_dash_reads_stdin_and_writes_stdout(trained_model_dir, tmp_path):
    source = write_jsonl(tmp_path / "in.jsonl")
    result = invoke("rescore", "-", "-m", str(trained_model_dir), "-o", "-", input=source.read_text())
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [u["best"] for u in lines] == [u["reference"] for u in good_utterances()]  # JSON Lines in, JSON Lines out


def test_an_unexpected_error_is_still_one_line(trained_model_dir, tmp_path, monkeypatch):
    from pipeline import rescore

    def broken(*args, **kwargs):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(rescore.Rescorer, "rescore_batch", broken)
    result = invoke("rescore", str(write_json(tmp_path / "in.json")), "-m", str(trained_model_dir))
    assert assert_user_error(result) == (
        "error: internal error (ZeroDivisionError: division by zero); run with --debug for the traceback")


# --------------------------------------------------------------------------- results that used to be wrong


def test_rescore_reads_back_what_it_writes_in_every_layout(trained_model_dir, tmp_path):
    """`rescore dev.json -o out.jsonl && asr-rescore evaluate out.jsonl` used to fail: the layout followed the input."""
    for source in (write_json(tmp_path / "in.json"), write_jsonl(tmp_path / "in.jsonl")):
        for name in ("out.json", "out.jsonl"):
            out = tmp_path / name
            result = invoke("rescore", str(source), "-m", str(trained_model_dir), "-o", str(out))
            assert result.exit_code == 0, result.output
            assert out.read_text().startswith('{"utterances"') == (name == "out.json")
            evaluated = runner.invoke(app, ["evaluate", str(out), "--json"])
            assert evaluated.exit_code == 0, evaluated.output
            assert json.loads(evaluated.stdout)["utterances"] == 4


def test_untuned_an_empty_hypothesis_far_below_the_first_pass_best_does_not_win(trained_model_dir, tmp_path):
    """An empty text costs the LM a few nats, a sentence tens: added as is, the empty one won everywhere."""
    utterances = good_utterances()
    for utterance in utterances:
        utterance["hypotheses"] = utterance["hypotheses"][:1] + [{"text": "", "score": -40.0, "am_score": -40.0}]
    source = write_json(tmp_path / "in.json", utterances)
    untuned = invoke("rescore", str(source), "-m", str(trained_model_dir))
    assert untuned.exit_code == 0, untuned.output
    assert all(u["best"] != "" for u in json.loads(untuned.stdout)["utterances"])
    plain = invoke("rescore", str(source), "-m", str(trained_model_dir), "--length-bonus", "0")
    assert sum(u["best"] == "" for u in json.loads(plain.stdout)["utterances"]) >= 3  # what the old default did


@pytest.fixture
def other_model_dir(trained_model_dir, tmp_path):
    """The same model with one weight changed: another model as far as tuned weights are concerned."""
    path = tmp_path / "other"
    shutil.copytree(trained_model_dir, path)
    state = torch.load(path / "model.pt", weights_only=True)
    first = next(iter(state))
    state[first] = state[first] + 0.01
    torch.save(state, path / "model.pt")
    return path


def test_weights_tuned_for_another_model_are_refused_unless_intended(trained_model_dir, other_model_dir, tmp_path):
    source = write_json(tmp_path / "dev.json")
    weights = tmp_path / "w.json"
    tuned = runner.invoke(app, ["tune", str(source), "-m", str(trained_model_dir), "-o", str(weights)])
    assert tuned.exit_code == 0, tuned.output
    same = invoke("rescore", str(source), "-m", str(trained_model_dir), "--weights", str(weights))
    assert same.exit_code == 0, same.output
    moved = tmp_path / "moved"
    shutil.copytree(trained_model_dir, moved)  # the same weights elsewhere are the same model
    assert invoke("rescore", str(source), "-m", str(moved), "--weights", str(weights)).exit_code == 0
    other = invoke("rescore", str(source), "-m", str(other_model_dir), "--weights", str(weights))
    assert assert_user_error(other) == (
        f"error: {weights}: tuned for the model {trained_model_dir}, but this run uses {other_model_dir} (other "
        "weights); tune again for this model, or pass --allow-other-model if that is intended")
    allowed = invoke("rescore", str(source), "-m", str(other_model_dir), "--weights", str(weights), "--allow-other-model")
    assert allowed.exit_code == 0, allowed.output


def test_a_model_directory_weights_file_is_the_default(trained_model_dir, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(trained_model_dir, model)
    source = write_json(tmp_path / "dev.json")
    assert runner.invoke(app, ["tune", str(source), "-m", str(model), "-o", str(model / "weights.json")]).exit_code == 0
    tuned = json.loads((model / "weights.json").read_text())["weights"]
    result = invoke("rescore", str(source), "-m", str(model))
    assert result.exit_code == 0, result.output
    for utterance in json.loads(result.stdout)["utterances"]:
        for hyp in utterance["hypotheses"]:
            units = len(hyp["text"].split()) if " " in hyp["text"] else len(hyp["text"])
            expected = (sum(w * hyp[f] for f, w in tuned["score_fields"].items()) + tuned["lm_weight"] * hyp["lm_logprob"]
                        + tuned["length_bonus"] * units)
            assert hyp["total_score"] == pytest.approx(expected, abs=1e-9)


def test_merge_refuses_a_wrong_set_of_shards_from_the_command_line(trained_model_dir, tmp_path):
    source = write_jsonl(tmp_path / "in.jsonl")
    parts = []
    for k in (1, 2, 3):
        parts.append(tmp_path / f"part{k}.jsonl")
        result = invoke("rescore", str(source), "-m", str(trained_model_dir), "--shard", f"{k}/3", "-o", str(parts[-1]))
        assert result.exit_code == 0, result.output
    missing = runner.invoke(app, ["merge", str(parts[0]), str(parts[2]), "-o", str(tmp_path / "merged.jsonl")])
    assert "missing 2/3" in assert_user_error(missing)
    assert not (tmp_path / "merged.jsonl").exists()
    merged = runner.invoke(app, ["merge", str(parts[2]), str(parts[0]), str(parts[1]), "-o", str(tmp_path / "m.jsonl")])
    assert merged.exit_code == 0, merged.output
    ids = [json.loads(line)["id"] for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert ids == [u["id"] for u in good_utterances()]


@pytest.mark.parametrize("problem", ["bad JSON", "missing score"])
def test_a_bad_line_late_in_json_lines_on_stdout_prints_nothing(trained_model_dir, tmp_path, problem):
    """Streamed to stdout, the first utterances used to be printed before the error stopped the run."""
    utterances = good_utterances()
    source = write_jsonl(tmp_path / "in.jsonl", utterances)
    lines = source.read_text().splitlines()
    if problem == "bad JSON":
        lines[3] = lines[3][:-2]
    else:
        lines[3] = json.dumps({**utterances[3], "hypotheses": [{"text": "x"}]}, ensure_ascii=False)
    source.write_text("\n".join(lines) + "\n")
    result = invoke("rescore", str(source), "-m", str(trained_model_dir))
    assert "line 4" in assert_user_error(result) or "utt-3" in result.stderr
    assert result.stdout == ""


def test_a_weights_file_without_a_fingerprint_is_checked_by_the_model_path(trained_model_dir, other_model_dir, tmp_path):
    weights = tmp_path / "w.json"
    weights.write_text(json.dumps({"weights": {"lm_weight": 0.5}, "model": str(trained_model_dir)}))
    source = write_json(tmp_path / "in.json")
    assert invoke("rescore", str(source), "-m", str(trained_model_dir), "--weights", str(weights)).exit_code == 0
    result = invoke("rescore", str(source), "-m", str(other_model_dir), "--weights", str(weights))
    assert f"tuned for the model {trained_model_dir}, but this run uses {other_model_dir}" in assert_user_error(result)


def test_perplexity_of_an_empty_text_is_an_input_error(trained_model_dir, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    result = runner.invoke(app, ["perplexity", str(trained_model_dir), str(empty)])
    assert assert_user_error(result) == f"error: {empty}: no sentences (empty lines only); nothing to measure"


def test_train_into_a_file_is_refused_before_any_work(corpus_file, tmp_path):
    target = tmp_path / "model.json"
    target.write_text("{}")
    result = runner.invoke(app, ["train", str(corpus_file), "-o", str(target)])
    assert "is a file, expected a model directory" in assert_user_error(result, code=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.json"]
