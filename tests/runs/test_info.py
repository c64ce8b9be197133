"""`tl info` and `tl runs` on a real (tiny lenet5) run and on hand-written fine-tune style metas."""

from __future__ import annotations

import json
import re

import pytest
import torch
from typer.testing import CliRunner

from tl_cli.backbones import create_backbone
from tl_cli.backbones.layers import enumerate_layers, frozen_module_names
from tl_cli.backbones.wrapper import attach_head
from tl_cli.cli import app
from tl_cli.errors import RunError
from tl_cli.features.extract import ExtractConfig
from tl_cli.head.small_data import train_small_data
from tl_cli.runs.info import resolve_run, run_info, workspace_runs
from tl_cli.runs.store import save_tensors
from tl_cli.runs.workspace import Workspace
from tl_cli.runtime.atomic import write_json

runner = CliRunner()


def tl(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture
def extract_run(image_folder):
    res = train_small_data(image_folder, ExtractConfig(backbone="lenet5", pretrained=False, workers=0))
    return res.run_dir


def fake_run(ws: Workspace, name: str, meta: dict):
    """A run folder with a meta.json as written before the schema, by hand or by another route
    (weights are not read by `tl info`)."""
    d = ws.runs / name
    d.mkdir(parents=True)
    (d / "history.csv").write_text("epoch,val_accuracy\n1,0.9\n")
    save_tensors(d / "model.safetensors", {"x": torch.zeros(1)})
    write_json(d / "meta.json", meta)
    return d


def reference_counts(backbone: str, n_classes: int, n_freeze: int) -> tuple[int, int]:
    """(trainable, frozen) parameters of the real model with layers 1..n_freeze frozen."""
    net = attach_head(create_backbone(backbone, pretrained=False)[0], n_classes)
    from tl_cli.backbones import get_spec

    layers = enumerate_layers(net, get_spec(backbone).preprocess.input_size)
    for name in frozen_module_names(layers, n_freeze):
        for p in net.get_submodule(name).parameters(recurse=False):
            p.requires_grad_(False)
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in net.parameters()) - trainable


def test_info_of_an_extract_run(extract_run):
    info = run_info()
    s = info.summary
    assert s.latest and s.route == "extract" and s.backbone == "lenet5"
    assert s.classes == ("blue", "green", "red")
    meta = json.loads((extract_run / "meta.json").read_text())
    assert s.val_accuracy == meta["metrics"]["val_accuracy"]
    assert (info.epochs, info.best_epoch, info.freeze) == (None, None, None)
    assert info.n_train + info.n_val == 36
    assert {p for p, _ in info.files} == {"meta.json", "model.safetensors"}
    rows = info.layers
    assert len(rows) == 5 and rows[-1].kind == "Linear"
    assert rows[-1].params == 84 * 3 + 3  # the new head, sized for 3 classes
    assert info.frozen_layers == 4  # the whole backbone
    trainable, frozen = reference_counts("lenet5", 3, 4)
    assert sum(r.trainable for r in rows) == trainable == 84 * 3 + 3
    assert sum(r.frozen for r in rows) == frozen


def test_finetune_meta_layer_table_matches_the_real_model():
    ws = Workspace.open()
    # the shape the finetune route writes (tl_cli/finetune.py), plus a non-scalar metric
    meta = {"route": "finetune", "kind": "full", "freeze": 36, "layers": 50, "epochs": 12, "best_epoch": 9,
            "stop_reason": "early_stopping", "backbone": "efficientnet_lite0", "classes": ["cats", "dogs"],
            "config": {"finetune": {"freeze": 36, "max_epochs": 30}},
            "metrics": {"val_accuracy": 0.975, "val_loss": 0.08, "history": [1, 2]}}
    d = fake_run(ws, "20260101-120000-finetune-catsdogs", meta)
    info = run_info(d)
    assert (info.summary.route, info.freeze, info.epochs, info.best_epoch) == ("finetune", 36, 12, 9)
    assert info.stop_reason == "early_stopping"
    out = tl("info", d).output
    assert "12 (stopped: early_stopping)" in out and "0.9750" in out and "history.csv" in out
    assert info.metrics == {"val_accuracy": 0.975, "val_loss": 0.08}  # lists are not metrics
    assert "history.csv" in {p for p, _ in info.files}
    rows = info.layers
    assert len(rows) == 50 and info.frozen_layers == 36
    assert all(r.frozen == r.params for r in rows[:36]) and all(r.trainable == r.params for r in rows[36:])
    trainable, frozen = reference_counts("efficientnet_lite0", 2, 36)
    assert sum(r.trainable for r in rows) == trainable
    assert sum(r.frozen for r in rows) == frozen  # batch-norms counted with their convolutions


def test_retrain_and_missing_keys_do_not_break():
    ws = Workspace.open()
    r = run_info(fake_run(ws, "20260101-110000-retrain-x", {"route": "retrain", "backbone": "lenet5", "classes": ["a", "b"]}))
    assert r.frozen_layers == 0 and r.freeze is None and r.epochs is None
    bare = fake_run(ws, "20260101-100000-old", {"classes": ["a", "b"], "backbone": "lenet5"})
    info = run_info(bare)
    assert info.summary.route is None and info.summary.val_accuracy is None
    assert all(row.trainable is None for row in info.layers) and info.layers_note
    res = tl("info", bare)
    assert res.exit_code == 0, res.output
    assert re.search(r"route\s+│ -\s", res.output)
    odd = fake_run(ws, "20260101-090000-odd", {"classes": ["a", "b"], "backbone": "no_such_net", "route": "finetune",
                                               "freeze": "lots"})
    info = run_info(odd)
    assert info.layers == () and "no layer table" in info.layers_note and info.freeze is None
    assert tl("info", odd).exit_code == 0


def test_runs_newest_first_with_latest_marked(extract_run):
    ws = Workspace.open()
    fake_run(ws, "20000101-000000-finetune-old", {"route": "finetune", "backbone": "lenet5", "classes": ["a", "b"],
                                                  "metrics": {"val_accuracy": 0.5}})
    rows = workspace_runs(ws)
    assert [r.name for r in rows] == [extract_run.name, "20000101-000000-finetune-old"]
    assert [r.latest for r in rows] == [True, False]
    res = tl("runs", "--format", "json")
    assert res.exit_code == 0, res.output
    got = json.loads(res.stdout)
    assert got[1]["route"] == "finetune" and got[1]["val_accuracy"] == 0.5 and got[0]["latest"]
    res = tl("runs")
    assert res.exit_code == 0 and "extract" in res.output and "0.5000" in res.output and "* latest" in res.output


def test_info_cli_by_name_prefix_and_errors(extract_run):
    ws = Workspace.open()
    assert resolve_run(extract_run.name, ws) == ws.runs / extract_run.name
    assert resolve_run(extract_run.name[:10], ws) == ws.runs / extract_run.name
    res = tl("info", extract_run.name[:12])
    assert res.exit_code == 0, res.output
    assert "lenet5" in res.output and "(new head)" in res.output and "trainable" in res.output
    d = json.loads(tl("info", "--format", "json").stdout)
    assert d["summary"]["route"] == "extract" and len(d["layers"]) == 5
    res = tl("info", "nope")
    assert res.exit_code == 2 and "no run nope" in res.output and "Traceback" not in res.output
    with pytest.raises(RunError):
        resolve_run("nope", ws)


def test_info_without_runs_says_how_to_make_one():
    res = tl("info")
    assert res.exit_code == 2 and "no trained model" in res.output
    res = tl("runs")
    assert res.exit_code == 0 and "no runs" in res.output
