"""`tl finetune` / `tl retrain` end to end on LeNet-5, and predict/evaluate on the run they make."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from tl_cli.cli import app
from tl_cli.data.preprocess import load_tensor
from tl_cli.finetune.model import FinetuneModel
from tl_cli.runs.store import load_run
from tl_cli.runs.workspace import Workspace

runner = CliRunner()
LENET = ["--backbone", "lenet5", "--no-pretrained", "--workers", "0", "--batch-size", "8"]


def tl(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_finetune_then_predict_and_evaluate(image_folder):
    r = tl("finetune", image_folder, "--freeze", "2", "--epochs", "3", "--lr", "1e-2", "--head-lr", "1e-2", *LENET)
    assert r.exit_code == 0, r.output
    assert "--freeze 2 of 5 layers" in r.output and "best epoch" in r.output
    run_dir = Path(Workspace.open().latest_run())
    meta = load_run(run_dir).meta
    assert meta.route == "finetune" and meta.freeze == 2 and meta.epochs == 3
    assert meta.best_epoch in (0, 1, 2, 3) and meta.val_fraction == 0.2  # 0: the linear probe (LP-FT)
    for f in ("history.csv", "curves.png", "config.json", "checkpoint.pt", "model.safetensors"):
        assert (run_dir / f).is_file(), f

    # predict uses the whole fine-tuned network: compare with the saved weights run by hand.
    files = sorted((image_folder / "red").glob("*.jpg"))[:4]
    r = tl("predict", *files, "--format", "json", "--topk", "3")
    assert r.exit_code == 0, r.output
    got = json.loads(r.stdout)
    from tl_cli.backbones import create_backbone

    net, _ = create_backbone("lenet5", pretrained=False)
    ref = FinetuneModel(net, 3, 0, 32).net
    ref.load_state_dict(load_run(run_dir).tensors())
    ref.eval()
    pre = meta.preprocess
    with torch.no_grad():
        probs = ref(torch.stack([load_tensor(f, pre) for f in files])).softmax(-1)
    for rec, p in zip(got, probs):
        assert rec["labels"][0] == meta.classes[int(p.argmax())]
        assert rec["probs"][0] == pytest.approx(float(p.max()), abs=1e-5)

    r = tl("evaluate", image_folder, "--split", "val", "--format", "json")
    assert r.exit_code == 0, r.output
    m = json.loads(r.stdout)
    assert m["n"] == meta.dataset.n_val
    assert m["accuracy"] == pytest.approx(meta.metrics["val_accuracy"])  # the same split and weights


def test_retrain_defaults_to_last_dataset_and_resume_of_finished_run(image_folder):
    assert tl("extract", image_folder, *LENET).exit_code == 0  # remembers the dataset
    r = tl("retrain", "--epochs", "2", *LENET)
    assert r.exit_code == 0, r.output
    meta = load_run(Workspace.open().latest_run()).meta
    cfg = meta.config["finetune"]
    assert meta.route == "retrain" and meta.freeze == 0 and cfg["lr"] < cfg["head_lr"]
    r = tl("retrain", "--resume")
    assert r.exit_code == 0 and "already finished" in r.output


def test_cli_errors_are_one_line(image_folder):
    r = tl("finetune", image_folder, *LENET)
    assert r.exit_code == 2 and "needs --freeze N" in r.output
    r = tl("finetune", image_folder, "--freeze", "9", *LENET)
    assert r.exit_code == 2 and "this backbone has 5 layers" in r.output and "Traceback" not in r.output
    r = tl("finetune", "--resume")
    assert r.exit_code == 2 and "no fine-tuning run to resume" in r.output
    r = tl("finetune", image_folder, "--freeze", "1", "--optimizer", "adam", *LENET)
    assert r.exit_code == 2 and "adamw or sgd" in r.output


def test_resume_with_a_changed_setting_names_it(image_folder, monkeypatch):
    from tl_cli.finetune import trainer as ft

    calls = {"n": 0}
    real = ft._end_epoch

    def end_then_die(*a, **kw):  # simulate a crash right after the first checkpoint
        real(*a, **kw)
        calls["n"] += 1
        raise KeyboardInterrupt

    monkeypatch.setattr(ft, "_end_epoch", end_then_die)
    r = tl("finetune", image_folder, "--freeze", "1", "--epochs", "3", *LENET)
    assert r.exit_code == 130 and "tl finetune --resume" in r.output
    monkeypatch.setattr(ft, "_end_epoch", real)
    r = tl("finetune", "--resume", "--freeze", "2")
    assert r.exit_code == 2 and "cannot change freeze" in r.output
    r = tl("finetune", "--resume", "--batch-size", "4", "--workers", "0")
    assert r.exit_code == 0, r.output
    assert "resuming after epoch 0" in r.output  # the first checkpoint is epoch 0, the linear probe


@pytest.mark.parametrize("cmd", ["finetune", "retrain"])
def test_help_has_examples(cmd):
    r = tl(cmd, "--help")
    assert r.exit_code == 0 and "Examples" in r.output and "--resume" in r.output
