"""The command line: the small-data route end to end, output formats, and one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tl_cli.cli import app
from tl_cli.inference.predict import Predictor

runner = CliRunner()
LENET = ["--backbone", "lenet5", "--no-pretrained", "--workers", "0"]


def tl(*args, input=None):
    return runner.invoke(app, [str(a) for a in args], input=input)


@pytest.fixture
def trained(image_folder):
    r = tl("extract", image_folder, *LENET)
    assert r.exit_code == 0, r.output
    return image_folder


def test_extract_summary(image_folder):
    r = tl("extract", image_folder, *LENET)
    assert r.exit_code == 0, r.output
    assert "36 found, 0 skipped, 36 extracted, 0 from cache" in r.output
    assert "val accuracy" in r.output
    r = tl("extract", image_folder, *LENET)
    assert "0 extracted, 36 from cache" in r.output


def test_predict_file_folder_glob_match_the_api(trained):
    api = Predictor.from_workspace()
    files = sorted((trained / "red").glob("*.jpg"))
    expected = {str(p.path): (p.labels, p.probs) for p in api.predict(files, topk=2)}
    for args in ([files[0]], [trained / "red"], [str(trained / "red" / "*.jpg")]):
        r = tl("predict", *args, "--topk", "2", "--format", "json")
        assert r.exit_code == 0, r.output
        got = json.loads(r.stdout)
        assert got, args
        for rec in got:
            labels, probs = expected[str(Path(rec["path"]))]
            assert rec["labels"] == labels
            assert rec["probs"] == pytest.approx(probs, abs=1e-6)


def test_predict_csv_and_output_file(trained, tmp_path):
    out = tmp_path / "preds.csv"
    r = tl("predict", trained / "blue", "--format", "csv", "--output", out)
    assert r.exit_code == 0, r.output
    lines = out.read_text().splitlines()
    assert lines[0].startswith("path,label1,prob1") and len(lines) == 13


def test_evaluate_json_schema(trained):
    r = tl("evaluate", trained, "--format", "json")
    assert r.exit_code == 0, r.output
    m = json.loads(r.stdout)
    assert isinstance(m["accuracy"], float) and m["n"] == 36
    assert set(m["per_class"]) == {"red", "green", "blue"}
    assert set(m["per_class"]["red"]) >= {"precision", "recall", "f1", "support"}


@pytest.mark.parametrize(
    "args, message",
    [
        (["extract", "does_not_exist"], "dataset folder not found"),
        (["extract", "{empty}"], "no class folders"),
        (["extract", "{single}"], "only one class"),
        (["extract", "{empty_class}", "--strict"], "purple/: class folder with no images"),
        (["extract", "{data}", "--backbone", "resnet5O"], "unknown backbone"),
        (["extract", "{data}", "--backbone", "resnet18"], "pretrained weights for resnet18 are not on this machine"),
        (["predict", "x.jpg"], "no trained model in workspace"),
        (["layers", "--backbone", "vgg16", "--freeze", "16"], "this backbone has 16 layers"),
    ],
)
def test_errors_are_one_clear_line(args, message, tmp_path, image_folder, monkeypatch):
    from tests.helpers.images import make_folder

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "no_hub"))
    (tmp_path / "empty").mkdir()
    make_folder(tmp_path / "single", 2, ("red",))
    make_folder(tmp_path / "empty_class", 2, ("red", "blue"))
    (tmp_path / "empty_class" / "purple").mkdir()
    fill = {"{empty}": tmp_path / "empty", "{single}": tmp_path / "single", "{data}": image_folder,
            "{empty_class}": tmp_path / "empty_class"}
    r = tl(*[fill.get(a, a) for a in args])
    assert r.exit_code != 0
    assert message in r.output, r.output
    assert "Traceback" not in r.output
    assert r.output.splitlines()[0].startswith("error:")


def test_unknown_backbone_suggests(image_folder):
    r = tl("extract", image_folder, "--backbone", "resnet5O")
    assert "did you mean resnet50" in r.output


def test_real_subprocess_and_debug_traceback(image_folder, tmp_path):
    env = {**os.environ, "TL_WORKSPACE": str(tmp_path / "ws_sub")}
    p = subprocess.run([sys.executable, "-m", "tl_cli", "extract", str(image_folder), *LENET],
                       capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr
    p = subprocess.run([sys.executable, "-m", "tl_cli", "predict", str(image_folder / "red" / "red_000.jpg"),
                        "--format", "json"], capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0 and json.loads(p.stdout)[0]["labels"]
    p = subprocess.run([sys.executable, "-m", "tl_cli", "extract", str(tmp_path / "nope")],
                       capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 2 and "Traceback" not in p.stderr and "error: dataset folder not found" in p.stderr
    p = subprocess.run([sys.executable, "-m", "tl_cli", "extract", str(tmp_path / "nope")],
                       capture_output=True, text=True, env={**env, "TL_DEBUG": "1"}, timeout=300)
    assert p.returncode != 0 and "Traceback" in p.stderr


def test_help_has_examples():
    for cmd in ("extract", "predict", "evaluate", "backbones", "layers"):
        r = tl(cmd, "--help")
        assert r.exit_code == 0 and "Example" in r.output, cmd


def test_layers_vgg16_has_16(tmp_path):
    r = tl("layers", "--backbone", "vgg16")
    assert r.exit_code == 0 and "16 layers" in r.output


def test_version():
    from tl_cli import __version__

    r = tl("--version")
    assert r.exit_code == 0 and r.stdout.strip() == f"tl {__version__}"


def test_a_file_where_the_workspace_keeps_a_folder_is_one_line(image_folder, isolated_workspace):
    isolated_workspace.mkdir()
    (isolated_workspace / "runs").write_text("not a folder")
    r = tl("extract", image_folder, *LENET)
    assert r.exit_code == 2, r.output
    assert r.output.startswith("error: Not a directory:") and "internal error" not in r.output
    (isolated_workspace / "runs").unlink()
    (isolated_workspace / "state.json").unlink(missing_ok=True)
    (isolated_workspace / "state.json").mkdir()
    r = tl("extract", image_folder, *LENET)
    assert r.exit_code == 2 and "Is a directory:" in r.output and "state.json" in r.output, r.output
