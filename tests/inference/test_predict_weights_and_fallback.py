"""`tl predict` away from where the run was made: relative --weights, and a backbone ONNX can't take."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from tl_cli.cli import app
from tl_cli.runs.store import load_run
from tl_cli.runs.workspace import Workspace

runner = CliRunner()
LENET = ["--backbone", "lenet5", "--workers", "0"]


def tl(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_relative_weights_are_stored_resolved_and_predict_works_from_elsewhere(image_folder, tmp_path, monkeypatch):
    from tl_cli.backbones import create_backbone
    from tl_cli.finetune.config import FinetuneConfig

    here = tmp_path / "here"
    here.mkdir()
    torch.manual_seed(1)  # not the seeded default init: these are really other weights
    net, _ = create_backbone("lenet5", pretrained=False)
    for p in net.parameters():
        p.data.normal_(0, 0.1)
    torch.save(net.state_dict(), here / "w.pth")
    monkeypatch.chdir(here)
    r = tl("extract", image_folder, *LENET, "--weights", "w.pth", "--engine", "torch")
    assert r.exit_code == 0, r.output
    run = load_run(Workspace.open().latest_run())
    assert run.meta.weights.file == str(here / "w.pth")
    assert run.meta.config["extract"]["weights"] == str(here / "w.pth")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    img = image_folder / "red" / "red_000.jpg"
    r = tl("predict", img, "--format", "json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)[0]["labels"] == ["red"]
    assert FinetuneConfig(backbone="lenet5", weights="w.pth").weights == str(elsewhere / "w.pth")


@pytest.mark.fresh_engines  # the session's LeNet-5 engine would make the export unnecessary
def test_predict_falls_back_to_torch_when_the_onnx_export_fails(image_folder, monkeypatch):
    import tl_cli.features.engines as engines
    from tl_cli.inference.predict import Predictor

    r = tl("extract", image_folder, *LENET, "--no-pretrained", "--engine", "torch")  # no ONNX file made
    assert r.exit_code == 0, r.output

    def broken_export(*a, **k):
        raise RuntimeError("the exporter\ncannot export this operator")

    monkeypatch.setattr(engines, "export_onnx", broken_export)
    files = sorted(image_folder.rglob("*.jpg"))[::5]
    r = tl("predict", *files, "--format", "json", "--topk", "3")
    assert r.exit_code == 0, r.output
    notes = [line for line in r.stderr.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "ONNX export of lenet5 failed" in notes[0] and "used eager PyTorch" in notes[0]
    assert "--engine" not in r.output
    got = json.loads(r.stdout)
    ref = Predictor(load_run(Workspace.open().latest_run()), device="cpu", engines_dir=None).predict(files, topk=3)
    assert [g["labels"] for g in got] == [p.labels for p in ref]
    np.testing.assert_allclose([g["probs"] for g in got], [p.probs for p in ref], atol=1e-6)
    assert [Path(g["path"]).parent.name for g in got] == [g["labels"][0] for g in got]  # and it is right
