"""The pictures: training curves from metrics.jsonl and the dev error rate along each tuned weight."""

from __future__ import annotations

import builtins
import json
import struct

import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from test_cli import assert_user_error, write_json

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("restore_logging")


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", data[16:24])


def test_plot_draws_the_training_curves(trained_model_dir, tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "curves.png"
    result = runner.invoke(app, ["plot", str(trained_model_dir), "-o", str(out)])
    assert result.exit_code == 0, result.output
    width, height = png_size(out)
    assert width > 600 and height > 400


def test_tune_plot_draws_one_panel_per_weight(trained_model_dir, tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "tune.png"
    result = runner.invoke(app, ["tune", str(write_json(tmp_path / "dev.json")), "-m", str(trained_model_dir),
                                 "-o", str(tmp_path / "w.json"), "--plot", str(out)])
    assert result.exit_code == 0, result.output
    assert png_size(out)[0] > 600
    tuned = json.loads((tmp_path / "w.json").read_text())
    assert "curves" not in tuned["dev"] and tuned["weights"]["posterior_temperature"] > 0


def test_plot_of_a_folder_without_metrics_is_one_line(tmp_path):
    result = runner.invoke(app, ["plot", str(tmp_path)])
    assert "no metrics.jsonl to draw" in assert_user_error(result)


def test_without_matplotlib_the_error_says_how_to_get_it(trained_model_dir, tmp_path, monkeypatch):
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    result = runner.invoke(app, ["plot", str(trained_model_dir), "-o", str(tmp_path / "x.png")])
    assert assert_user_error(result, code=2) == (
        "error: plots need matplotlib: pip install 'asr-rescore[plot]' (or pip install matplotlib)")
    assert not (tmp_path / "x.png").exists()
